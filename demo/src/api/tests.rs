//! The routes in-process, on two members sharing the memory store and talking over the real
//! peer transport on loopback: the same answers as the multi-process test on Spanner
//! (demo/tests/member_api.rs), without needing the emulator.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use hedge::{GroupSecret, Hedge, HedgeGuard, MemoryStore, PeerOptions};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use prometheus_client::registry::Registry;

use super::{ApiState, routes};
use crate::handlers::with_demo_handlers;

async fn member(store: &MemoryStore, id: &str, secret: &GroupSecret) -> (ApiState, HedgeGuard) {
    let mut registry = Registry::default();
    let peer = PeerOptions::new(secret.clone()).listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let builder = Hedge::builder("api-unit")
        .member_id(id)
        .store(store.clone())
        .peer(peer)
        .metrics(&mut registry);
    let hedge = with_demo_handlers(builder).build().await.expect("build");
    let guard = hedge.spawn();
    // A small body limit, so that the oversized case is cheap.
    (ApiState::new(hedge, registry, 1024), guard)
}

async fn call(state: &ApiState, method: Method, uri: &str, body: &[u8]) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = routes::handle(state, request).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_on_the_memory_store() {
    let store = MemoryStore::new();
    let secret = GroupSecret::random();
    let (a, _guard_a) = member(&store, "a", &secret).await;
    let (b, _guard_b) = member(&store, "b", &secret).await;
    let leader = a.hedge().wait_for_any_leader().await.expect("a leader");
    tokio::time::timeout(Duration::from_secs(10), async {
        while a.hedge().members().len() < 2 || b.hedge().members().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both members see each other");
    let (follower, other) = if leader.id == "a" { (&b, &a) } else { (&a, &b) };
    let me = follower.hedge().member_id().to_owned();

    let put = call(follower, Method::POST, "/put", b"samplekey samplevalue").await;
    assert_eq!(
        put,
        (
            StatusCode::OK,
            format!("put: sender={me}, key=samplekey, value=samplevalue")
        )
    );
    let got = call(other, Method::POST, "/get", b"samplekey").await;
    assert_eq!(got.0, StatusCode::OK);
    assert!(
        got.1.ends_with("key=samplekey, value=samplevalue"),
        "{got:?}"
    );
    let sent = call(follower, Method::POST, "/send", b"hello-world").await;
    assert_eq!(
        sent,
        (
            StatusCode::OK,
            format!("sender={me}, reply=hello hello-world")
        )
    );
    let all = call(follower, Method::POST, "/broadcast", b"hello-all").await;
    assert_eq!(all.0, StatusCode::OK);
    assert_eq!(
        all.1
            .lines()
            .filter(|l| l.ends_with("reply=broadcast hello-all"))
            .count(),
        2,
        "{all:?}"
    );
    let (status, text) = call(other, Method::GET, "/leader", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.starts_with(&format!("leader={}, token={}", leader.id, leader.token)),
        "{text}"
    );

    // A semaphore of one permit.
    let first = call(
        follower,
        Method::POST,
        "/semaphore/one/acquire?limit=1",
        b"",
    )
    .await;
    assert_eq!(first.0, StatusCode::OK, "{first:?}");
    let full = call(other, Method::POST, "/semaphore/one/acquire?wait_ms=0", b"").await;
    assert_eq!(full.0, StatusCode::CONFLICT, "{full:?}");
    let none = call(other, Method::POST, "/semaphore/one/release", b"").await;
    assert_eq!(none.0, StatusCode::CONFLICT, "{none:?}");
    let released = call(follower, Method::POST, "/semaphore/one/release", b"").await;
    assert_eq!(released.0, StatusCode::OK, "{released:?}");
    let second = call(
        other,
        Method::POST,
        "/semaphore/one/acquire?wait_ms=2000",
        b"",
    )
    .await;
    assert_eq!(second.0, StatusCode::OK, "{second:?}");
    assert_eq!(other.permits().get("one").map(Vec::len), Some(1));

    // Bad requests: a 4xx with a message each.
    for (method, uri, body, status) in [
        (Method::POST, "/put", &b""[..], StatusCode::BAD_REQUEST),
        (Method::POST, "/get", b"", StatusCode::BAD_REQUEST),
        (Method::POST, "/get", b"missing", StatusCode::NOT_FOUND),
        (Method::GET, "/put", b"", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/nope", b"", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/semaphore/nope/acquire",
            b"",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/put",
            &[b'x'; 2048],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/send",
            &[0xff, 0xfe],
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, text) = call(follower, method.clone(), uri, body).await;
        assert_eq!(got, status, "{method} {uri}: {text}");
        assert!(text.starts_with("error: "), "{method} {uri}: {text}");
    }
    assert_eq!(
        call(follower, Method::GET, "/healthz", b"").await,
        (StatusCode::OK, "ok".to_owned())
    );
}
