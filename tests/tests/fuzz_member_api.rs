//! Property tests of the member HTTP API (`hedge-demo member`, `demo/src/api/`) from the
//! outside: one member on the Spanner emulator gets arbitrary HTTP/1.1 requests (methods, paths
//! near and far from its routes, headers, bodies). Every request gets a well-formed answer
//! within a bound and none is a 500 (an internal error is a bug: every problem a client can
//! cause has its own 4xx); the member is still running and healthy at the end. Skipped (one
//! `skipped:` line) without an emulator.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hedge_tests::chaos::member_program;
use hedge_tests::chaos::process::{MemberProcess, Spec, State};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const LIMIT: Duration = Duration::from_secs(15);

/// One request, written raw, and the status of its answer.
///
/// The write side stays open, as a real client leaves it: a client that half-closes may see
/// the server close without answering (hyper ends the connection on EOF by default).
fn exchange(addr: &str, request: &[u8]) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer within {LIMIT:?}: {e}"))?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
}

/// A whole request: a method, a path near or far from the routes, an `Accept`, a body.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("HEAD".to_owned()),
        Just("OPTIONS".to_owned()),
        "[A-Z]{1,10}".prop_map(|s| s),
    ];
    let path = prop_oneof![
        proptest::sample::select(vec![
            "/",
            "/send",
            "/broadcast",
            "/members",
            "/leader",
            "/metrics",
            "/healthz",
            "/send/",
            "//send",
            "/%73end",
            "/send?x=1",
            "/leader#f",
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z0-9/%?=&._~-]{0,40}",
    ];
    let accept = prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ];
    let body = proptest::collection::vec(any::<u8>(), 0..2048);
    (method, path, accept, body).prop_map(|(method, path, accept, body)| {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: member\r\nConnection: close\r\n");
        if let Some(a) = accept {
            r.push_str(&format!("Accept: {a}\r\n"));
        }
        r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = r.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_http_request_gets_an_answer_and_never_an_internal_error() {
    let emulator = hedge_tests::require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .unwrap();
    let program = member_program().await.expect("the member program");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("HEDGE_GROUP", "fuzz".to_owned()),
        ("HEDGE_SPANNER_DATABASE", db.to_string()),
        ("HEDGE_MEMBER_ID", "fuzzed".to_owned()),
        ("SPANNER_EMULATOR_HOST", emulator.grpc_host().to_owned()),
        (
            "HEDGE_SPANNER_EMULATOR_HOST",
            emulator.grpc_host().to_owned(),
        ),
        ("POD_IP", "127.0.0.1".to_owned()),
        ("HEDGE_PEER_PORT", "0".to_owned()),
        (
            "HEDGE_GROUP_SECRET",
            "the group's secret, long enough to be accepted".to_owned(),
        ),
        ("HEDGE_DEMO_HTTP_ADDR", addr.clone()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut member = MemberProcess::spawn(Spec {
        id: "fuzzed".into(),
        program,
        args: vec!["member".into()],
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    })
    .unwrap();
    // Up when /healthz answers (bounded).
    let up = tokio::time::Instant::now();
    loop {
        let probe = addr.clone();
        let ok = tokio::task::spawn_blocking(move || {
            exchange(
                &probe,
                b"GET /healthz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
            )
        })
        .await
        .unwrap();
        if ok == Ok(200) {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the member did not come up: {ok:?}\n{}",
            member.text_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let target = addr.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 200,
            ..Config::default()
        });
        runner.run(&request(), |bytes| {
            let status = exchange(&target, &bytes);
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
            prop_assert!(status.is_ok(), "{shown:?}: {status:?}");
            let status = status.unwrap();
            prop_assert!(
                (200..600).contains(&status) && status != 500,
                "{shown:?}: status {status}"
            );
            Ok(())
        })
    })
    .await
    .unwrap();
    if let Err(e) = outcome {
        panic!("{e}\n{}", member.text_tail(30));
    }
    assert_eq!(member.poll_exit(), State::Running, "the member died");
    let probe = addr.clone();
    let health = tokio::task::spawn_blocking(move || {
        exchange(
            &probe,
            b"GET /healthz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(health, Ok(200));
    member.terminate(Duration::from_secs(10)).await.unwrap();
}
