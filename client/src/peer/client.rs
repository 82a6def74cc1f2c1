//! The peer client: one pooled, multiplexed HTTP/2 connection per peer address, opened on first
//! use and again after it fails; every call signed and bounded by a deadline.
//!
//! The one question a caller must be able to answer after a failure is *can the request have
//! reached a handler?* The client keeps the two cases apart:
//!
//! * [`PeerError::Connect`] and [`PeerError::NotSent`]: the request never left (no connection,
//!   or the connection closed before the request was written, or the server refused the stream
//!   unprocessed); retrying elsewhere is safe.
//! * [`PeerError::Remote`] with [`ErrorKind::handler_may_have_run`] `false` (not leader,
//!   unauthenticated, shutting down, ...): the server refused it before any handler.
//! * Everything else after the request left ([`PeerError::Timeout`] with `sent`,
//!   [`PeerError::Failed`]): the outcome is unknown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, debug_span};

use super::PeerError;
use super::auth::Authenticator;
use super::body::ResponseBody;
use super::tls::{MaybeTls, TlsClient};
use super::wire::{self, ErrorBody, ErrorKind, Rpc};

/// How long connecting to a peer may take at most (bounded further by the call's deadline).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP/2 connection-level flow-control window, both ways.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// The HTTP/2 per-stream flow-control window, both ways.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The pooled client of one member.
#[derive(Clone, Debug)]
pub struct PeerClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    auth: Authenticator,
    tls: Option<TlsClient>,
    max_body_bytes: usize,
    keep_alive: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// The connection to one address.
#[derive(Debug, Default)]
struct Slot {
    sender: Mutex<Option<http2::SendRequest<ResponseBody>>>,
    /// Serialises connecting, so that concurrent first calls share one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn ready(&self) -> Option<http2::SendRequest<ResponseBody>> {
        let guard = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

impl PeerClient {
    /// A client that signs as `auth`'s member, over TLS when `tls` is given.
    pub fn new(
        auth: Authenticator,
        tls: Option<TlsClient>,
        max_body_bytes: usize,
        keep_alive: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                auth,
                tls,
                max_body_bytes,
                keep_alive,
                slots: Mutex::default(),
            }),
        }
    }

    /// The member this client signs as.
    pub fn member_id(&self) -> &str {
        self.inner.auth.member_id()
    }

    /// Closes the pooled connection to `addr`, if any (a member left).
    pub fn forget(&self, addr: &str) {
        self.slots().remove(addr);
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn sender(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> Result<http2::SendRequest<ResponseBody>, PeerError> {
        let slot = self.slots().entry(addr.to_owned()).or_default().clone();
        if let Some(sender) = slot.ready() {
            return Ok(sender);
        }
        let connect = async {
            let _one_at_a_time = slot.connecting.lock().await;
            if let Some(sender) = slot.ready() {
                return Ok(sender);
            }
            let sender = self.connect(addr).await?;
            *slot
                .sender
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sender.clone());
            Ok(sender)
        };
        let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        match timeout_at(limit, connect).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                peer: addr.to_owned(),
                sent: false,
            }),
        }
    }

    async fn connect(&self, addr: &str) -> Result<http2::SendRequest<ResponseBody>, PeerError> {
        let connect_error = |message: String| PeerError::Connect {
            peer: addr.to_owned(),
            message,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = match &self.inner.tls {
            None => MaybeTls::Plain(stream),
            Some(tls) => MaybeTls::Client(Box::new(
                tls.connect(stream)
                    .await
                    .map_err(|e| connect_error(format!("TLS handshake: {e}")))?,
            )),
        };
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.inner.keep_alive)
            .keep_alive_timeout(self.inner.keep_alive)
            .keep_alive_while_idle(false)
            // Fixed windows, not adaptive ones: h2 sizes its budget of buffered small DATA
            // frames from the connection window, and an adaptive window starts small enough
            // for a burst of small stream messages to exhaust it (GOAWAY ENHANCE_YOUR_CALM).
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_header_list_size(16 * 1024)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_error(format!("HTTP/2 handshake: {e}")))?;
        let peer = addr.to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "peer connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends a request to `route` on `addr` and returns the reply's head and body when the
    /// status is 2xx. A non-2xx reply becomes [`PeerError::Remote`] with the typed body.
    ///
    /// `deadline` bounds connecting and waiting for the reply's head, and is sent along so that
    /// the handler runs under it too; `None` (streams) bounds only connecting.
    pub async fn request(
        &self,
        addr: &str,
        route: &'static str,
        body: ResponseBody,
        deadline: Option<Instant>,
    ) -> Result<Response<Incoming>, PeerError> {
        let span = debug_span!("peer_call", peer = %addr, route);
        self.request_inner(addr, route, body, deadline, true)
            .instrument(span)
            .await
    }

    /// Opens a long-lived stream on `route` to `addr` over a connection of its own (not the
    /// pooled one), so that a stream whose reader falls behind can only ever break its own
    /// connection: HTTP/2 closes a connection on which too many small frames wait unread.
    pub async fn open_stream(
        &self,
        addr: &str,
        route: &'static str,
        body: ResponseBody,
    ) -> Result<Response<Incoming>, PeerError> {
        let span = debug_span!("peer_stream", peer = %addr, route);
        self.request_inner(addr, route, body, None, false)
            .instrument(span)
            .await
    }

    async fn request_inner(
        &self,
        addr: &str,
        route: &'static str,
        body: ResponseBody,
        deadline: Option<Instant>,
        pooled: bool,
    ) -> Result<Response<Incoming>, PeerError> {
        let connect_deadline = deadline.unwrap_or_else(|| Instant::now() + CONNECT_TIMEOUT);
        let mut sender = if pooled {
            self.sender(addr, connect_deadline).await?
        } else {
            timeout_at(connect_deadline, self.connect(addr))
                .await
                .map_err(|_| PeerError::Timeout {
                    peer: addr.to_owned(),
                    sent: false,
                })??
        };
        let request = self.build(addr, route, body, deadline)?;
        let send = sender.try_send_request(request);
        let result = match deadline {
            Some(deadline) => match timeout_at(deadline, send).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(PeerError::Timeout {
                        peer: addr.to_owned(),
                        sent: true,
                    });
                }
            },
            None => send.await,
        };
        let response = match result {
            Ok(response) => response,
            Err(mut e) => {
                let not_sent = e.take_message().is_some() || refused_unprocessed(e.error());
                let message = e.into_error().to_string();
                // The connection is likely broken; the next call reconnects.
                if let Some(slot) = self.slots().get(addr)
                    && slot.ready().is_none()
                {
                    debug!(peer = %addr, "peer connection closed; will reconnect");
                }
                return Err(if not_sent {
                    PeerError::NotSent {
                        peer: addr.to_owned(),
                        message,
                    }
                } else {
                    PeerError::Failed {
                        peer: addr.to_owned(),
                        message,
                    }
                });
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + CONNECT_TIMEOUT);
        let body = timeout_at(
            deadline,
            Limited::new(response.into_body(), 64 * 1024).collect(),
        )
        .await;
        let error = match body {
            Ok(Ok(bytes)) => {
                serde_json::from_slice::<ErrorBody>(&bytes.to_bytes()).unwrap_or_else(|_| {
                    ErrorBody::new(
                        ErrorKind::from_status(status),
                        format!("status {status} without an error body"),
                    )
                })
            }
            _ => ErrorBody::new(ErrorKind::from_status(status), format!("status {status}")),
        };
        Err(PeerError::Remote {
            peer: addr.to_owned(),
            error,
        })
    }

    fn build(
        &self,
        addr: &str,
        route: &'static str,
        body: ResponseBody,
        deadline: Option<Instant>,
    ) -> Result<Request<ResponseBody>, PeerError> {
        let auth = &self.inner.auth;
        let credentials = auth.sign(Method::POST.as_str(), route);
        let bad = |what: &str| PeerError::Connect {
            peer: addr.to_owned(),
            message: format!("cannot build the request: invalid {what}"),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{route}"))
            .body(body)
            .map_err(|_| bad("address"))?;
        let headers = request.headers_mut();
        let value = |s: &str, what: &str| HeaderValue::from_str(s).map_err(|_| bad(what));
        headers.insert(wire::HEADER_GROUP, value(auth.group(), "group")?);
        headers.insert(wire::HEADER_SENDER, value(auth.member_id(), "member id")?);
        headers.insert(
            wire::HEADER_TIMESTAMP,
            value(&credentials.timestamp, "timestamp")?,
        );
        headers.insert(
            wire::HEADER_SIGNATURE,
            value(&credentials.signature, "signature")?,
        );
        if let Some(deadline) = deadline {
            let ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
            headers.insert(
                wire::HEADER_TIMEOUT_MS,
                HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
            );
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(wire::CONTENT_BYTES),
        );
        Ok(request)
    }

    /// Sends bytes to a unary route and returns the reply's bytes (within the body limit).
    pub async fn call_bytes(
        &self,
        addr: &str,
        route: &'static str,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(http::HeaderMap, Bytes), PeerError> {
        let response = self
            .request(addr, route, ResponseBody::full(payload), Some(deadline))
            .await?;
        let (parts, body) = response.into_parts();
        let limited = Limited::new(body, self.inner.max_body_bytes);
        match timeout_at(deadline, limited.collect()).await {
            Ok(Ok(bytes)) => Ok((parts.headers, bytes.to_bytes())),
            Ok(Err(e)) => Err(PeerError::Failed {
                peer: addr.to_owned(),
                message: format!("the reply could not be read: {e}"),
            }),
            Err(_) => Err(PeerError::Timeout {
                peer: addr.to_owned(),
                sent: true,
            }),
        }
    }

    /// Calls the typed route `R` on `addr`.
    pub async fn call<R: Rpc>(
        &self,
        addr: &str,
        request: &R::Request,
        deadline: Instant,
    ) -> Result<R::Response, PeerError> {
        let body = serde_json::to_vec(request).map_err(|e| PeerError::Connect {
            peer: addr.to_owned(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let (_, reply) = self
            .call_bytes(addr, R::PATH, Bytes::from(body), deadline)
            .await?;
        serde_json::from_slice(&reply).map_err(|e| PeerError::Failed {
            peer: addr.to_owned(),
            message: format!("malformed reply from {}: {e}", R::PATH),
        })
    }
}

/// Whether hyper's error says the server refused the stream before processing it (RFC 9113
/// §8.7): a `REFUSED_STREAM` reset, or a GOAWAY whose last stream id is below this stream's.
///
/// h2 reports a remote GOAWAY on a *stream* only for the streams above the GOAWAY's last stream
/// id (`recv_go_away`); streams the server had taken and that fail later (the connection closed
/// before their reply) end with an I/O error instead, which stays "outcome unknown".
fn refused_unprocessed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (refused || h2.is_go_away());
        }
        source = e.source();
    }
    false
}
