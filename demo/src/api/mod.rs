//! The member's HTTP API: the routes of hedge's Go demo (`/put`, `/get`, `/send`,
//! `/broadcast`) and `/members`, `/leader`, `/semaphore/<name>/acquire|release`, `/metrics`,
//! `/healthz`. docs/demo.md documents every route; [`routes`] resolves and dispatches them,
//! [`log`] and [`permits`] answer the log's and the semaphores' routes.
//!
//! HTTP/1.1 (hyper 1), plain text by default and JSON with `Accept: application/json`
//! ([`answer`]). Nothing a client sends can stop the server: an unknown route, a wrong method, a
//! missing, oversized, slow or non-UTF-8 body each get a 4xx with a message, and a connection's
//! failure ends that connection only.

pub mod answer;
pub mod log;
pub mod permits;
pub mod routes;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hedge::{Hedge, Permit};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The default address of the HTTP API: every interface, port 8081.
pub const DEFAULT_ADDR: &str = "[::]:8081";

/// The largest request body accepted by default (64 KiB): a key and value, or a message.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a client may take to send a request's head, or its body.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections in flight get to finish when the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address could not be bound.
    #[error("cannot serve the HTTP API on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the API serves: one member, its metrics, and the permits it holds.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    hedge: Hedge,
    registry: Registry,
    max_body_bytes: usize,
    /// The permits acquired through `/semaphore/<name>/acquire` and not yet released, by
    /// semaphore name, oldest first. Dropping a permit releases it: when the member stops, so
    /// do its permits.
    permits: Mutex<BTreeMap<String, Vec<Permit>>>,
}

impl ApiState {
    /// The API of `hedge`, serving `registry` on `/metrics`.
    pub fn new(hedge: Hedge, registry: Registry, max_body_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                hedge,
                registry,
                max_body_bytes,
                permits: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The permits held through the API, by semaphore name.
    pub fn permits(&self) -> MutexGuard<'_, BTreeMap<String, Vec<Permit>>> {
        // A panic while the map was locked leaves it consistent (pushes and removes only).
        self.inner
            .permits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The member.
    pub fn hedge(&self) -> &Hedge {
        &self.inner.hedge
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// The largest body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }
}

/// Binds `addr`. The IPv6 wildcard `[::]` (the default; it also accepts IPv4 where the kernel
/// maps it) falls back to `0.0.0.0` on a host without IPv6.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            debug!("cannot listen on {addr} ({e}); trying {v4}");
            TcpListener::bind(v4)
                .await
                .map_err(|source| ApiError::Bind { addr: v4, source })
        }
        Err(source) => Err(ApiError::Bind { addr, source }),
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled; then stops accepting, lets the
/// requests in flight finish (at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(routes::handle(&state, request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        debug!("HTTP connections still open after {SHUTDOWN_GRACE:?}: dropped");
    }
}

#[cfg(test)]
mod tests;
