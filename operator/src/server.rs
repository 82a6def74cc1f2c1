//! The HTTP endpoints (hyper 1): `/metrics` (Prometheus text), `/healthz` (the process answers)
//! and `/readyz` (the controller has started, after the CRD check, and its watches are not
//! failing for longer than a threshold).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the watches work: failing once a watch error has persisted (no event received since)
/// for longer than the threshold.
#[derive(Debug)]
pub struct WatchHealth {
    threshold: Duration,
    failing_since: Mutex<Option<Instant>>,
}

impl Default for WatchHealth {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl WatchHealth {
    /// Healthy, and failing after errors that persist for `threshold`.
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            failing_since: Mutex::new(None),
        }
    }

    /// A watch received something: the watches work.
    pub fn ok(&self) {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// A watch failed; the streak starts now unless it already runs.
    pub fn error(&self) {
        self.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
    }

    /// Whether no error streak has lasted longer than the threshold.
    pub fn is_healthy(&self) -> bool {
        self.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|since| since.elapsed() <= self.threshold)
    }
}

/// What the endpoints report, shared with the controller.
#[derive(Clone, Default)]
pub struct State {
    ready: Arc<AtomicBool>,
    registry: Arc<Registry>,
    watches: Arc<WatchHealth>,
}

impl State {
    /// A state serving `registry`, not ready yet.
    pub fn new(registry: Registry) -> Self {
        Self {
            ready: Arc::default(),
            registry: Arc::new(registry),
            watches: Arc::default(),
        }
    }

    /// This state with `watches` deciding readiness too.
    #[must_use]
    pub fn with_watch_health(mut self, watches: Arc<WatchHealth>) -> Self {
        self.watches = watches;
        self
    }

    /// Marks the operator ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200: started, and the watches not failing for long.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.watches.is_healthy()
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Answers one request.
pub fn route<B>(state: &State, request: &Request<B>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics_text(),
        ),
        "/healthz" => respond(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if state.is_ready() => respond(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "watches failing\n")
        }
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n"),
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// Binds `addr`; the error says which address failed. The IPv6 wildcard `[::]` (the default,
/// for IPv6-only clusters; it also accepts IPv4 where the kernel maps it) falls back to
/// `0.0.0.0` on a host without IPv6.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            debug!("cannot listen on {addr} ({e}); trying {v4}");
            TcpListener::bind(v4)
                .await
                .map_err(|source| ServerError::Bind { addr: v4, source })
        }
        Err(source) => Err(ServerError::Bind { addr, source }),
    }
}

/// Serves until `shutdown` is cancelled; connections in flight finish on their own (every
/// request is answered at once).
pub async fn serve(listener: TcpListener, state: State, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                debug!("accept failed: {e}");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn health_is_always_ok_and_readiness_waits_for_the_controller() {
        let state = State::default();
        assert_eq!(route(&state, &get("/healthz")).status(), StatusCode::OK);
        assert_eq!(
            route(&state, &get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(route(&state, &get("/readyz")).status(), StatusCode::OK);
        assert_eq!(route(&state, &get("/nope")).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(
            route(&state, &post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let metrics = route(&state, &get("/metrics"));
        assert_eq!(metrics.status(), StatusCode::OK);
        assert!(
            metrics.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
    }

    #[test]
    fn readiness_fails_once_watch_errors_persist_and_recovers_on_an_event() {
        let health = Arc::new(WatchHealth::new(Duration::ZERO));
        let state = State::default().with_watch_health(health.clone());
        state.set_ready(true);
        assert_eq!(route(&state, &get("/readyz")).status(), StatusCode::OK);
        health.error();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            route(&state, &get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ok();
        assert_eq!(route(&state, &get("/readyz")).status(), StatusCode::OK);

        let patient = WatchHealth::new(Duration::from_secs(3600));
        patient.error();
        assert!(patient.is_healthy(), "a short error streak is tolerated");
    }

    #[tokio::test]
    async fn the_ipv6_wildcard_binds_or_falls_back_to_ipv4() {
        let listener = bind("[::]:0".parse().unwrap()).await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_unspecified());
    }

    #[tokio::test]
    async fn the_server_answers_over_tcp_and_stops_on_shutdown() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::default().register(&mut registry);
        metrics.failure("SpannerUnavailable");
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, State::new(registry), shutdown.clone()));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains(
                "hedge_operator_reconcile_failures_total{reason=\"SpannerUnavailable\"} 1"
            )
        );

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot listen on {addr}")),
            "{err}"
        );
    }
}
