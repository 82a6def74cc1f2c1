//! Property tests of the peer transport over the network: a member (memory store, peer
//! transport on loopback) gets arbitrary bodies on every route, signed with the group's secret
//! and with another one, and arbitrary bytes on its port. Every request gets an answer within a
//! bound (never a hang, never a crashed server), a request signed with the wrong secret is
//! refused, and the member still answers a real send at the end.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use hedge::peer::wire::{
    ROUTE_ANNOUNCE, ROUTE_BROADCAST, ROUTE_BROADCAST_STREAM, ROUTE_LEADER_STREAM, ROUTE_SEND,
};
use hedge::peer::{Authenticator, PeerClient, ResponseBody};
use hedge::{GroupSecret, HandlerResult, Hedge, MemoryStore, Message, PeerOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::time::{Instant, timeout};

const ROUTES: &[&str] = &[
    ROUTE_SEND,
    ROUTE_BROADCAST,
    ROUTE_LEADER_STREAM,
    ROUTE_BROADCAST_STREAM,
    ROUTE_ANNOUNCE,
    "/hedge/v1/nope",
];

/// No request may take longer than this to be answered.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

async fn echo(message: Message) -> HandlerResult {
    Ok(message.payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_peer_request_is_answered_and_the_member_keeps_serving() {
    let secret = GroupSecret::new("the group's secret, long enough to be accepted").unwrap();
    let hedge = Hedge::builder("fuzz")
        .member_id("target")
        .store(MemoryStore::new())
        .peer(PeerOptions::new(secret.clone()).listen("127.0.0.1:0".parse().unwrap()))
        .on_send(echo)
        .on_broadcast(echo)
        .build()
        .await
        .unwrap();
    let guard = hedge.spawn();
    timeout(ANSWER_LIMIT, hedge.wait_for_term())
        .await
        .expect("elected in time")
        .expect("elected");
    let addr = hedge.peer_address().expect("a peer address").to_owned();
    let member = PeerClient::new(
        Authenticator::new("fuzz", "fuzzer", &secret),
        None,
        1 << 20,
        Duration::from_secs(10),
    );
    let stranger_secret = GroupSecret::new("another group's secret, just as long").unwrap();
    let stranger = PeerClient::new(
        Authenticator::new("fuzz", "fuzzer", &stranger_secret),
        None,
        1 << 20,
        Duration::from_secs(10),
    );

    let handle = tokio::runtime::Handle::current();
    let target = addr.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 160,
            ..Config::default()
        });
        let strategy = (
            proptest::sample::select(ROUTES),
            proptest::collection::vec(any::<u8>(), 0..4096),
            any::<bool>(),
        );
        runner.run(&strategy, |(route, body, signed)| {
            handle.block_on(async {
                let client = if signed { &member } else { &stranger };
                let deadline = Instant::now() + Duration::from_secs(5);
                let answer = timeout(
                    ANSWER_LIMIT,
                    client.request(
                        &target,
                        route,
                        ResponseBody::full(Bytes::from(body)),
                        Some(deadline),
                    ),
                )
                .await;
                prop_assert!(answer.is_ok(), "{route}: no answer within {ANSWER_LIMIT:?}");
                if !signed {
                    prop_assert!(
                        answer.unwrap().is_err(),
                        "{route}: a request signed with another secret was served"
                    );
                }
                Ok(())
            })
        })
    })
    .await
    .unwrap();
    if let Err(e) = outcome {
        panic!("{e}");
    }

    // Arbitrary bytes on the port (not HTTP/2 at all, or a preface then garbage): the server
    // closes the connection in time.
    let raw = addr.clone();
    let garbage = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        let strategy = (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..2048));
        runner.run(&strategy, |(preface, bytes)| {
            let mut stream = std::net::TcpStream::connect(&raw).unwrap();
            stream.set_read_timeout(Some(ANSWER_LIMIT)).unwrap();
            if preface {
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            }
            let _ = stream.write_all(&bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let read = stream.read_to_end(&mut sink);
            prop_assert!(
                !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
                "the server kept a garbage connection open: {read:?}"
            );
            Ok(())
        })
    })
    .await
    .unwrap();
    if let Err(e) = garbage {
        panic!("{e}");
    }

    // Still serving.
    let reply = timeout(ANSWER_LIMIT, hedge.send("still there"))
        .await
        .expect("answered in time")
        .expect("a send after the fuzzing");
    assert_eq!(reply, Bytes::from("still there"));
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
}
