//! The peer transport on real loopback sockets: authentication, limits, deadlines, bad input,
//! slow-loris and garbage connections, graceful shutdown, TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hedge::peer::body::ResponseBody;
use hedge::peer::server::{bytes_response, error_response};
use hedge::peer::{
    Authenticator, ErrorKind, GroupSecret, PeerClient, PeerError, PeerServer, RequestContext,
    RouteKind, Router, ServerLimits, TlsConfig,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

const ECHO: &str = "/hedge/v1/test/echo";
const SLOW: &str = "/hedge/v1/test/slow";
const DEADLINE: &str = "/hedge/v1/test/deadline";

fn secret() -> GroupSecret {
    GroupSecret::new("a test secret of the group, 32 bytes").expect("secret")
}

fn limits() -> ServerLimits {
    ServerLimits {
        max_body_bytes: 64 * 1024,
        first_request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        ..ServerLimits::default()
    }
}

fn router() -> Router {
    Router::new()
        .route(
            ECHO,
            RouteKind::Unary,
            |ctx: RequestContext, body: Incoming| async move {
                match ctx.read_body(body).await {
                    Ok(b) => bytes_response(b),
                    Err(e) => error_response(&e),
                }
            },
        )
        .route(
            SLOW,
            RouteKind::Unary,
            |_ctx: RequestContext, _body: Incoming| async move {
                sleep(Duration::from_millis(300)).await;
                bytes_response(Bytes::from_static(b"done"))
            },
        )
        .route(
            DEADLINE,
            RouteKind::Unary,
            |ctx: RequestContext, _body: Incoming| async move {
                let left = ctx
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_millis());
                bytes_response(Bytes::from(format!("{}", left.unwrap_or(0))))
            },
        )
}

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn server(tls: Option<&TlsConfig>) -> Server {
    let (tls_server, _) = match tls {
        Some(t) => {
            let (s, c) = t.load().expect("TLS material loads");
            (Some(s), Some(c))
        }
        None => (None, None),
    };
    let server = PeerServer::bind("127.0.0.1:0".parse().unwrap(), tls_server, limits())
        .await
        .expect("bind");
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let auth = Authenticator::new("g", "server", &secret());
    let task = tokio::spawn(server.serve(router(), auth, stop.clone()));
    Server { addr, stop, task }
}

fn client(group: &str, secret: &GroupSecret) -> PeerClient {
    PeerClient::new(
        Authenticator::new(group, "client", secret),
        None,
        64 * 1024,
        Duration::from_secs(10),
    )
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_calls_are_served_under_the_callers_deadline() {
    let s = server(None).await;
    let c = client("g", &secret());
    let (_, reply) = c
        .call_bytes(&s.addr.to_string(), ECHO, Bytes::from_static(b"hi"), soon())
        .await
        .expect("echo");
    assert_eq!(reply, "hi");
    let (_, left) = c
        .call_bytes(
            &s.addr.to_string(),
            DEADLINE,
            Bytes::new(),
            Instant::now() + Duration::from_millis(800),
        )
        .await
        .expect("deadline");
    let left: u64 = std::str::from_utf8(&left).unwrap().parse().unwrap();
    assert!(
        left > 0 && left <= 800,
        "the handler saw {left} ms left of 800"
    );
    s.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_not_sent_to_and_a_late_reply_is_an_unknown_outcome() {
    // A port nobody listens on: refused, nothing sent.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = client("g", &secret());
    let e = c
        .call_bytes(&dead.to_string(), ECHO, Bytes::new(), soon())
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::Connect { .. }), "{e}");
    assert!(!e.handler_may_have_run());
    // A handler slower than the deadline: the request left, so the outcome is unknown.
    let s = server(None).await;
    let e = c
        .call_bytes(
            &s.addr.to_string(),
            SLOW,
            Bytes::new(),
            Instant::now() + Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    // Either the caller's timer or the server's (the same deadline) fires first; both say the
    // handler may have run.
    assert!(
        matches!(e, PeerError::Timeout { sent: true, .. })
            || e.remote_kind() == Some(ErrorKind::DeadlineExceeded),
        "{e}"
    );
    assert!(e.handler_may_have_run());
    s.stop.cancel();
}

/// A raw HTTP/2 connection without hedge's client, to send what a member never would.
async fn raw_h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ResponseBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn raw_status(
    addr: SocketAddr,
    request: http::Request<ResponseBody>,
) -> Result<(http::StatusCode, Bytes), String> {
    let mut sender = raw_h2(addr).await;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Whether the server closes `stream` within `limit` (reads until EOF or an error).
async fn closed_within(mut stream: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_while_a_good_client_keeps_being_served() {
    let s = server(None).await;
    let addr = s.addr;
    // A well-behaved member keeps calling throughout.
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop_good = CancellationToken::new();
    let good = {
        let (served, failed, stop) = (served.clone(), failed.clone(), stop_good.clone());
        tokio::spawn(async move {
            let c = client("g", &secret());
            while !stop.is_cancelled() {
                match c
                    .call_bytes(&addr.to_string(), ECHO, Bytes::from_static(b"ok"), soon())
                    .await
                {
                    Ok((_, r)) if r == "ok" => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let post = |path: &str| {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
    };

    // Unauthenticated: no hedge headers at all.
    let (status, body) = raw_status(
        addr,
        post(ECHO)
            .body(ResponseBody::full(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await
    .expect("a reply");
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);
    let error: hedge::peer::ErrorBody = serde_json::from_slice(&body).expect("a typed error");
    assert_eq!(error.kind, ErrorKind::Unauthenticated);
    // An unknown route is refused the same way before authentication says anything.
    let (status, _) = raw_status(
        addr,
        post("/hedge/v9/nope")
            .body(ResponseBody::full(Bytes::new()))
            .unwrap(),
    )
    .await
    .expect("a reply");
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);

    // Wrong group; wrong secret.
    let e = client("other", &secret())
        .call_bytes(&addr.to_string(), ECHO, Bytes::new(), soon())
        .await
        .unwrap_err();
    assert_eq!(e.remote_kind(), Some(ErrorKind::WrongGroup), "{e}");
    let wrong = GroupSecret::new("not the secret of this group at all").unwrap();
    let e = client("g", &wrong)
        .call_bytes(&addr.to_string(), ECHO, Bytes::new(), soon())
        .await
        .unwrap_err();
    assert_eq!(e.remote_kind(), Some(ErrorKind::Unauthenticated), "{e}");

    // Oversized, with and without a content length.
    let c = client("g", &secret());
    let big = Bytes::from(vec![7u8; 64 * 1024 + 1]);
    let e = c
        .call_bytes(&addr.to_string(), ECHO, big.clone(), soon())
        .await
        .unwrap_err();
    assert_eq!(e.remote_kind(), Some(ErrorKind::PayloadTooLarge), "{e}");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let streamed = tokio::spawn(async move {
        for chunk in big.chunks(8 * 1024) {
            if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
    });
    let e = c
        .request(
            &addr.to_string(),
            ECHO,
            ResponseBody::channel(rx, None),
            Some(soon()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.remote_kind(), Some(ErrorKind::PayloadTooLarge), "{e}");
    streamed.abort();

    // Truncated: a content length the body never reaches. The server answers 400 or resets
    // the stream; either way no handler sees a short body as complete.
    let auth = Authenticator::new("g", "raw", &secret());
    let creds = auth.sign("POST", ECHO);
    let truncated = post(ECHO)
        .header("hedge-group", "g")
        .header("hedge-sender", "raw")
        .header("hedge-timestamp", &creds.timestamp)
        .header("hedge-signature", &creds.signature)
        .header("content-length", "100")
        .body(ResponseBody::full(Bytes::from_static(b"only ten b")))
        .unwrap();
    match raw_status(addr, truncated).await {
        Ok((status, _)) => assert_eq!(status, http::StatusCode::BAD_REQUEST),
        Err(e) => assert!(!e.is_empty()),
    }

    // Garbage on a fresh connection: closed.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0xde; 2048]).await.unwrap();
    assert!(
        closed_within(garbage, Duration::from_secs(3)).await,
        "garbage closes the connection"
    );

    // Slow-loris: the HTTP/2 preface one byte at a time; the server gives up within the first
    // request timeout (1 s here) instead of waiting forever.
    let started = Instant::now();
    let loris = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = loris.into_split();
    let trickle = tokio::spawn(async move {
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().cycle() {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(100)).await;
        }
    });
    let mut read = read;
    let closed = timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    trickle.abort();
    assert!(closed, "a slow-loris connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed by the first-request timeout, not at once"
    );

    // A connection that says nothing at all is closed too.
    let idle = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(idle, Duration::from_secs(4)).await,
        "an idle connection is closed"
    );

    stop_good.cancel();
    good.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the well-behaved client never failed"
    );
    assert!(
        served.load(Ordering::Relaxed) > 50,
        "the well-behaved client kept being served"
    );
    s.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_then_refuses() {
    let s = server(None).await;
    let c = client("g", &secret());
    let addr = s.addr.to_string();
    // Warm the connection so the slow request is in flight when shutdown begins.
    c.call_bytes(&addr, ECHO, Bytes::new(), soon())
        .await
        .expect("echo");
    let slow = {
        let (c, addr) = (c.clone(), addr.clone());
        tokio::spawn(async move { c.call_bytes(&addr, SLOW, Bytes::new(), soon()).await })
    };
    sleep(Duration::from_millis(50)).await;
    s.stop.cancel();
    let (_, reply) = slow.await.unwrap().expect("the in-flight request finished");
    assert_eq!(reply, "done");
    timeout(Duration::from_secs(3), s.task)
        .await
        .expect("the server stopped within its grace")
        .unwrap();
    let e = client("g", &secret())
        .call_bytes(&addr, ECHO, Bytes::new(), soon())
        .await
        .unwrap_err();
    assert!(!e.handler_may_have_run(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carries_authenticated_calls() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tls = TlsConfig::new(dir.join("peer-cert.pem"), dir.join("peer-key.pem"));
    let s = server(Some(&tls)).await;
    let (_, tls_client) = tls.load().unwrap();
    let c = PeerClient::new(
        Authenticator::new("g", "client", &secret()),
        Some(tls_client),
        1024,
        Duration::from_secs(10),
    );
    let (_, reply) = c
        .call_bytes(
            &s.addr.to_string(),
            ECHO,
            Bytes::from_static(b"sealed"),
            soon(),
        )
        .await
        .expect("echo over TLS");
    assert_eq!(reply, "sealed");
    // A cleartext client cannot talk to a TLS member (the server never reads a request from
    // it; the client cannot tell that apart from a connection lost after sending).
    let cleartext = client("g", &secret())
        .call_bytes(&s.addr.to_string(), ECHO, Bytes::new(), soon())
        .await;
    assert!(cleartext.is_err());
    // With an explicit CA file too.
    let mut with_ca = tls.clone();
    with_ca.ca = Some(dir.join("ca.pem"));
    let (_, tls_client) = with_ca.load().unwrap();
    let c = PeerClient::new(
        Authenticator::new("g", "client", &secret()),
        Some(tls_client),
        1024,
        Duration::from_secs(10),
    );
    c.call_bytes(&s.addr.to_string(), ECHO, Bytes::new(), soon())
        .await
        .expect("echo with a CA file");
    // A missing file is a clear error.
    let missing = TlsConfig::new(dir.join("nope.pem"), dir.join("peer-key.pem"));
    assert!(missing.load().unwrap_err().to_string().contains("nope.pem"));
    s.stop.cancel();
}
