//! The peer server: HTTP/2 on one port, every request authenticated before its handler runs,
//! every connection and request bounded in time.
//!
//! * Cleartext HTTP/2 with prior knowledge by default; TLS (ALPN `h2`) when a certificate and
//!   key are configured.
//! * A request is dispatched in this order: route lookup, authentication
//!   ([`Authenticator::verify`]), then the route's handler under the request's deadline. An
//!   unauthenticated request never reaches a handler and never makes the server read its body.
//! * Bounds, so that no peer (or port scanner) can pin the server: at most
//!   [`ServerLimits::max_connections`] connections (further ones wait in the listen backlog); a
//!   TLS handshake and the first request of a connection must arrive within
//!   [`ServerLimits::first_request_timeout`] (a slow-loris connection trickling bytes is closed
//!   then); a connection with no request in flight for [`ServerLimits::idle_timeout`] is closed;
//!   HTTP/2 keep-alive pings close connections to peers that vanished; every request/reply has
//!   a deadline (the caller's, capped at [`ServerLimits::max_request_time`]); bodies are
//!   limited to [`ServerLimits::max_body_bytes`].
//! * Graceful shutdown: stop accepting, send every connection GOAWAY, let in-flight requests
//!   finish for [`ServerLimits::shutdown_grace`], then close what is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

use super::PeerError;
use super::auth::{AuthError, Authenticator};
use super::body::ResponseBody;
use super::tls::TlsServer;
use super::wire::{self, ErrorBody, ErrorKind, Rpc};

/// The time and size bounds of the server. The defaults suit a group of pods in one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request body (and stream message) accepted, in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// At most this many connections at once. Default 1024.
    pub max_connections: usize,
    /// At most this many requests in flight on one connection. Default 1024.
    pub max_concurrent_streams: u32,
    /// A new connection must complete its TLS handshake and its first request's headers within
    /// this time. Default 10 s.
    pub first_request_timeout: Duration,
    /// A connection without a request in flight for this long is closed. Default 120 s.
    pub idle_timeout: Duration,
    /// The longest a request/reply may take, whatever deadline the caller asks for; also the
    /// deadline of a request that names none. Default 60 s.
    pub max_request_time: Duration,
    /// How often the server pings an idle connection, and how long it waits for the answer
    /// before closing it. Default 10 s.
    pub keep_alive: Duration,
    /// How long in-flight requests may run on after shutdown begins. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_connections: 1024,
            max_concurrent_streams: 1024,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_request_time: Duration::from_secs(60),
            keep_alive: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What a handler knows about the request it serves.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The authenticated sender's member id.
    pub sender: String,
    /// The route.
    pub route: &'static str,
    /// When the caller stops waiting (`None` for streams, which last until either side ends
    /// them).
    pub deadline: Option<Instant>,
    /// Cancelled when the caller goes away (it reset the stream or the connection closed) or
    /// the server gives up on the request.
    pub cancelled: CancellationToken,
    /// The limit on body and message sizes.
    pub max_body_bytes: usize,
}

impl RequestContext {
    /// Reads the whole request body, within the size limit and the deadline.
    pub async fn read_body(&self, body: Incoming) -> Result<Bytes, ErrorBody> {
        let limited = Limited::new(body, self.max_body_bytes);
        let collect = async {
            limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ErrorBody::new(
                        ErrorKind::PayloadTooLarge,
                        format!(
                            "the body is over the limit of {} bytes",
                            self.max_body_bytes
                        ),
                    )
                } else {
                    ErrorBody::new(ErrorKind::BadRequest, format!("cannot read the body: {e}"))
                }
            })
        };
        match self.deadline {
            Some(deadline) => timeout_at(deadline, collect).await.unwrap_or_else(|_| {
                Err(ErrorBody::new(
                    ErrorKind::DeadlineExceeded,
                    "the body did not arrive before the deadline",
                ))
            }),
            None => collect.await,
        }
    }
}

/// A route's handler: gets the authenticated context and the body, answers with a response.
pub trait RouteHandler: Send + Sync + 'static {
    /// Serves one request.
    fn handle(
        &self,
        ctx: RequestContext,
        body: Incoming,
    ) -> BoxFuture<'static, Response<ResponseBody>>;
}

impl<F, Fut> RouteHandler for F
where
    F: Fn(RequestContext, Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    fn handle(
        &self,
        ctx: RequestContext,
        body: Incoming,
    ) -> BoxFuture<'static, Response<ResponseBody>> {
        Box::pin(self(ctx, body))
    }
}

/// Whether a route streams (no default deadline) or answers once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// One request body, one reply; bounded by a deadline.
    Unary,
    /// A stream each way; lasts until either side ends it.
    Stream,
}

/// The routes a server serves.
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<&'static str, (RouteKind, Arc<dyn RouteHandler>)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `path` with `handler`. The path must start with [`wire::API_PREFIX`].
    pub fn route(
        mut self,
        path: &'static str,
        kind: RouteKind,
        handler: impl RouteHandler,
    ) -> Self {
        debug_assert!(
            path.starts_with(wire::API_PREFIX),
            "route {path} is not versioned"
        );
        self.routes.insert(path, (kind, Arc::new(handler)));
        self
    }

    /// Serves the typed route `R` with `handler`: the body is read within the limits and parsed
    /// as JSON, and the handler's answer (or its [`ErrorBody`]) is written back.
    pub fn rpc<R, F, Fut>(self, handler: F) -> Self
    where
        R: Rpc,
        F: Fn(RequestContext, R::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, ErrorBody>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.route(
            R::PATH,
            RouteKind::Unary,
            move |ctx: RequestContext, body: Incoming| {
                let handler = handler.clone();
                async move {
                    let bytes = match ctx.read_body(body).await {
                        Ok(b) => b,
                        Err(e) => return error_response(&e),
                    };
                    let request: R::Request = match serde_json::from_slice(&bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            return error_response(&ErrorBody::new(
                                ErrorKind::BadRequest,
                                format!("malformed {} body: {e}", R::PATH),
                            ));
                        }
                    };
                    match handler(ctx, request).await {
                        Ok(reply) => json_response(&reply),
                        Err(e) => error_response(&e),
                    }
                }
            },
        )
    }
}

/// An error reply with its typed body.
pub fn error_response(error: &ErrorBody) -> Response<ResponseBody> {
    let body = serde_json::to_vec(error).unwrap_or_default();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = error.kind.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(wire::CONTENT_JSON),
    );
    response
}

/// A 200 reply with a JSON body.
pub fn json_response<T: serde::Serialize>(value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(wire::CONTENT_JSON),
            );
            response
        }
        Err(e) => error_response(&ErrorBody::new(
            ErrorKind::Internal,
            format!("cannot encode the reply: {e}"),
        )),
    }
}

/// A 200 reply carrying application bytes.
pub fn bytes_response(bytes: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(wire::CONTENT_BYTES),
    );
    response
}

/// A bound peer server, not yet serving.
#[derive(Debug)]
pub struct PeerServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsServer>,
    limits: ServerLimits,
}

impl PeerServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<TlsServer>,
        limits: ServerLimits,
    ) -> Result<Self, PeerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| PeerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| PeerError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            tls,
            limits,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` until `shutdown` is cancelled, then shuts down gracefully (in-flight
    /// requests get [`ServerLimits::shutdown_grace`] to finish).
    pub async fn serve(self, router: Router, auth: Authenticator, shutdown: CancellationToken) {
        let limits = self.limits;
        let shared = Arc::new(ServerShared {
            router,
            auth,
            limits,
            stopping: CancellationToken::new(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            // Reap finished connection tasks so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %e, "peer server accept failed");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            let tls = self.tls.clone();
            let stop = stop_rx.clone();
            connections.spawn(async move {
                serve_connection(stream, remote, tls, shared, stop).await;
                drop(permit);
            });
        }
        drop(self.listener);
        shared.stopping.cancel();
        let _ = stop_tx.send(true);
        let drained = timeout(limits.shutdown_grace + Duration::from_millis(100), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("peer server: requests still running after the shutdown grace; closing them");
            connections.abort_all();
        }
    }
}

struct ServerShared {
    router: Router,
    auth: Authenticator,
    limits: ServerLimits,
    stopping: CancellationToken,
}

/// What a connection's watchdog needs to know: requests in flight and the last activity.
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    last_nanos: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        ActivityGuard(self.clone())
    }

    /// Whether the connection has been quiet for too long.
    fn expired(&self, limits: &ServerLimits) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let allowed = if self.requests.load(Ordering::Relaxed) == 0 {
            limits.first_request_timeout
        } else {
            limits.idle_timeout
        };
        let last = Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last) >= allowed
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsServer>,
    shared: Arc<ServerShared>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = shared.limits;
    // Small messages matter more than throughput here: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = match tls {
        None => super::tls::MaybeTls::Plain(stream),
        Some(tls) => match timeout(limits.first_request_timeout, tls.accept(stream)).await {
            Ok(Ok(s)) => super::tls::MaybeTls::Server(Box::new(s)),
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "peer TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%remote, "peer TLS handshake timed out");
                return;
            }
        },
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(16 * 1024)
        .initial_connection_window_size(super::client::CONNECTION_WINDOW)
        .initial_stream_window_size(super::client::STREAM_WINDOW)
        .keep_alive_interval(limits.keep_alive)
        .keep_alive_timeout(limits.keep_alive)
        // A burst of resets is an attack (CVE-2023-44487), not a workload.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(1024);
    let service = {
        let activity = activity.clone();
        service_fn(move |request: Request<Incoming>| {
            let shared = shared.clone();
            let guard = activity.begin();
            async move {
                let response = dispatch(&shared, request).await;
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let check = (limits.first_request_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(check);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(%remote, error = %e, "peer connection ended with an error");
                }
                return;
            }
            _ = stop.changed() => break,
            _ = ticker.tick() => {
                if activity.expired(&limits) {
                    debug!(%remote, "closing a quiet peer connection");
                    break;
                }
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    if timeout(limits.shutdown_grace, connection).await.is_err() {
        debug!(%remote, "peer connection did not close within the grace; dropping it");
    }
}

async fn dispatch(shared: &ServerShared, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some((route, (kind, handler))) = shared.router.routes.get_key_value(path) else {
        // Authenticate before answering "no such route": an outsider learns nothing.
        if let Err(e) = shared
            .auth
            .verify(&parts.headers, parts.method.as_str(), path)
        {
            return auth_error(&e);
        }
        return error_response(&ErrorBody::new(
            ErrorKind::NotFound,
            format!("no route {path} on this member (a different hedge version?)"),
        ));
    };
    let sender = match shared
        .auth
        .verify(&parts.headers, parts.method.as_str(), path)
    {
        Ok(sender) => sender,
        Err(e) => return auth_error(&e),
    };
    if parts.method != Method::POST {
        return error_response(&ErrorBody::new(
            ErrorKind::BadRequest,
            "peer routes take POST",
        ));
    }
    if shared.stopping.is_cancelled() {
        return error_response(&ErrorBody::new(
            ErrorKind::ShuttingDown,
            "this member is shutting down",
        ));
    }
    let limits = &shared.limits;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes as u64
    {
        return error_response(&ErrorBody::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "a body of {len} bytes is over the limit of {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    let requested = match parts.headers.get(wire::HEADER_TIMEOUT_MS) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => {
                return error_response(&ErrorBody::new(
                    ErrorKind::BadRequest,
                    format!("malformed {} header", wire::HEADER_TIMEOUT_MS),
                ));
            }
        },
    };
    let now = Instant::now();
    let deadline = match (kind, requested) {
        (RouteKind::Unary, r) => Some(
            now + r
                .unwrap_or(limits.max_request_time)
                .min(limits.max_request_time),
        ),
        (RouteKind::Stream, r) => r.map(|r| now + r),
    };
    let cancelled = CancellationToken::new();
    // The caller going away drops this future: the guard then cancels the handler's token.
    let _cancel_on_drop = cancelled.clone().drop_guard();
    let ctx = RequestContext {
        sender,
        route,
        deadline,
        cancelled: cancelled.clone(),
        max_body_bytes: limits.max_body_bytes,
    };
    let span = debug_span!("peer_request", peer = %ctx.sender, route = *route);
    let serve = handler.handle(ctx, body).instrument(span);
    match deadline {
        None => serve.await,
        Some(deadline) => match timeout_at(deadline, serve).await {
            Ok(response) => response,
            Err(_) => {
                cancelled.cancel();
                error_response(&ErrorBody::new(
                    ErrorKind::DeadlineExceeded,
                    "the request's deadline passed while it was served",
                ))
            }
        },
    }
}

fn auth_error(e: &AuthError) -> Response<ResponseBody> {
    let kind = match e {
        AuthError::WrongGroup { .. } => ErrorKind::WrongGroup,
        _ => ErrorKind::Unauthenticated,
    };
    error_response(&ErrorBody::new(kind, e.to_string()))
}
