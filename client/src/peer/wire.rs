//! The wire format of the peer transport: versioned routes, the headers every request carries,
//! the typed error body, and the framing of messages inside a stream.
//!
//! Everything is HTTP/2. A route is a path under [`API_PREFIX`]; a breaking change of a route's
//! body gets a new path (`/hedge/v2/...`), so members of two versions can tell each other apart
//! during a rolling update instead of misreading each other.
//!
//! * Request/reply routes carry the application's bytes as the body, unchanged
//!   (`application/octet-stream`), or a JSON document for the library's own typed routes
//!   ([`Rpc`]).
//! * A failure is a non-2xx status with an [`ErrorBody`] in JSON: the caller learns *what* went
//!   wrong ([`ErrorKind`]) and, above all, whether a handler can have run
//!   ([`ErrorKind::handler_may_have_run`]), which decides whether a retry is safe.
//! * Streams carry a sequence of messages, each a 4-byte big-endian length and that many bytes
//!   ([`encode_frame`], [`FrameDecoder`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Every route of this protocol version starts with this.
pub const API_PREFIX: &str = "/hedge/v1/";

/// Send one message to the leader's send handler.
pub const ROUTE_SEND: &str = "/hedge/v1/send";
/// Deliver one broadcast message to this member's broadcast handler.
pub const ROUTE_BROADCAST: &str = "/hedge/v1/broadcast";
/// A bidirectional stream to the leader's stream handler.
pub const ROUTE_LEADER_STREAM: &str = "/hedge/v1/stream/leader";
/// A bidirectional stream to this member's broadcast stream handler.
pub const ROUTE_BROADCAST_STREAM: &str = "/hedge/v1/stream/broadcast";
/// Membership and leadership announcements (joins, leaves, elections, releases).
pub const ROUTE_ANNOUNCE: &str = "/hedge/v1/announce";
/// A follower's put, for the leader to write under its term (see [`crate::kv`]).
pub const ROUTE_KV_PUT: &str = "/hedge/v1/kv/put";
/// "A permit of this semaphore was released": wakes the receiver's waiting acquires.
pub const ROUTE_PERMIT_RELEASED: &str = "/hedge/v1/semaphore/released";

/// The sender's group.
pub const HEADER_GROUP: &str = "hedge-group";
/// The sender's member id.
pub const HEADER_SENDER: &str = "hedge-sender";
/// The sender's wall clock when it signed the request, in milliseconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "hedge-timestamp";
/// The request's HMAC-SHA256 signature, in lowercase hex (see [`crate::peer::auth`]).
pub const HEADER_SIGNATURE: &str = "hedge-signature";
/// How long the caller will wait for the reply, in milliseconds, counted from when the request
/// arrives. Relative, like gRPC's `grpc-timeout`, so that clock offsets between members do not
/// shorten or lengthen it.
pub const HEADER_TIMEOUT_MS: &str = "hedge-timeout-ms";
/// In a reply from a leader: the fencing token of the term the handler ran under.
pub const HEADER_TOKEN: &str = "hedge-token";

/// The media type of application bytes.
pub const CONTENT_BYTES: &str = "application/octet-stream";
/// The media type of the library's JSON bodies.
pub const CONTENT_JSON: &str = "application/json";
/// The media type of a stream of length-prefixed messages.
pub const CONTENT_FRAMES: &str = "application/vnd.hedge.frames";

/// What went wrong, as the serving member reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request did not prove the group secret (missing or bad signature, stale timestamp).
    Unauthenticated,
    /// The request is for another group.
    WrongGroup,
    /// This member does not lead (or its term ended); see [`ErrorBody::leader`].
    NotLeader,
    /// No handler is registered for this route on this member.
    NoHandler,
    /// The body is larger than the member accepts.
    PayloadTooLarge,
    /// The request is malformed (bad header, truncated body, bad JSON, bad framing).
    BadRequest,
    /// No such route (for example a newer protocol version).
    NotFound,
    /// The handler ran and returned an error.
    Handler,
    /// The handler was cancelled because the leader's term ended while it ran.
    TermEnded,
    /// The deadline passed while the handler ran.
    DeadlineExceeded,
    /// The member is shutting down and took no new request.
    ShuttingDown,
    /// The member failed in a way it could not describe better.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::WrongGroup => StatusCode::FORBIDDEN,
            ErrorKind::NotLeader => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::NoHandler | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Handler => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::TermEnded => StatusCode::CONFLICT,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind a status stands for when the body could not be read.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated,
            StatusCode::FORBIDDEN => ErrorKind::WrongGroup,
            StatusCode::MISDIRECTED_REQUEST => ErrorKind::NotLeader,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            StatusCode::BAD_REQUEST => ErrorKind::BadRequest,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::Handler,
            StatusCode::CONFLICT => ErrorKind::TermEnded,
            StatusCode::GATEWAY_TIMEOUT => ErrorKind::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE => ErrorKind::ShuttingDown,
            _ => ErrorKind::Internal,
        }
    }

    /// Whether a handler may have run for the request that got this error. `false` means the
    /// serving member refused the request before any handler started, so sending it again
    /// elsewhere cannot run it twice.
    pub fn handler_may_have_run(self) -> bool {
        match self {
            ErrorKind::Unauthenticated
            | ErrorKind::WrongGroup
            | ErrorKind::NotLeader
            | ErrorKind::NoHandler
            | ErrorKind::PayloadTooLarge
            | ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::ShuttingDown => false,
            ErrorKind::Handler
            | ErrorKind::TermEnded
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Internal => true,
        }
    }

    /// A short stable name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::WrongGroup => "wrong_group",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::NoHandler => "no_handler",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Handler => "handler",
            ErrorKind::TermEnded => "term_ended",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The leader as the answering member knows it, sent with [`ErrorKind::NotLeader`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The leader's member id.
    pub id: String,
    /// The fencing token of its term.
    pub token: u64,
    /// The leader's peer address, when the answering member knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A human-readable explanation (for a handler error: the handler's message).
    pub message: String,
    /// With [`ErrorKind::NotLeader`]: the leader the answering member knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
}

impl ErrorBody {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            leader: None,
        }
    }
}

/// A typed request/response route of the library itself, with JSON bodies.
///
/// Adding a route is implementing this trait for a marker type, registering a handler with
/// [`crate::peer::Router::rpc`], and calling it with [`crate::peer::PeerClient::call`]. The path
/// must start with [`API_PREFIX`]; change the path when the body changes incompatibly.
pub trait Rpc: Send + Sync + 'static {
    /// The route, for example `/hedge/v1/kv/put`.
    const PATH: &'static str;
    /// The request body.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The reply body.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// The bit of a frame's length word that marks an error frame: a JSON [`ErrorBody`] that ends
/// the stream.
const ERROR_FRAME: u32 = 1 << 31;

/// The longest stream message the framing can carry.
pub const MAX_FRAME_LEN: usize = (ERROR_FRAME - 1) as usize;

/// Encodes one stream message: a 4-byte big-endian length, then the bytes.
pub fn encode_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + message.len());
    // Callers check the length against the body limit (far below 2 GiB) first.
    out.put_u32(u32::try_from(message.len().min(MAX_FRAME_LEN)).unwrap_or(ERROR_FRAME - 1));
    out.put_slice(message);
    out.freeze()
}

/// Encodes an error that ends a stream.
pub fn encode_error_frame(error: &ErrorBody) -> Bytes {
    let body = serde_json::to_vec(error).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(ERROR_FRAME | u32::try_from(body.len().min(MAX_FRAME_LEN)).unwrap_or(0));
    out.put_slice(&body);
    out.freeze()
}

/// A stream message that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message longer than the limit.
    #[error("a stream message of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream ended inside a message.
    #[error("the stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
    /// The other side ended the stream with an error.
    #[error("the stream was ended by the other side: {}: {}", .0.kind, .0.message)]
    Remote(ErrorBody),
}

/// Reassembles stream messages from body chunks of any size.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder that refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Adds a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let word = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]);
        let is_error = word & ERROR_FRAME != 0;
        let len = (word & !ERROR_FRAME) as usize;
        if len > self.limit.max(if is_error { 64 * 1024 } else { 0 }) {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        self.buffer.advance(4);
        let message = self.buffer.split_to(len).freeze();
        if is_error {
            let error = serde_json::from_slice(&message).unwrap_or_else(|_| {
                ErrorBody::new(
                    ErrorKind::Internal,
                    "the stream ended with an unreadable error",
                )
            });
            return Err(FrameError::Remote(error));
        }
        Ok(Some(message))
    }

    /// Checks that the body ended between messages.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buffer.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_any_chunking() {
        let messages: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), vec![7; 1000]];
        let mut wire = Vec::new();
        for m in &messages {
            wire.extend_from_slice(&encode_frame(m));
        }
        for chunk in [1, 3, 4, 5, 999, wire.len()] {
            let mut decoder = FrameDecoder::new(4096);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(m) = decoder.next_message().unwrap() {
                    out.push(m.to_vec());
                }
            }
            decoder.finish().unwrap();
            assert_eq!(out, messages, "chunk size {chunk}");
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut decoder = FrameDecoder::new(10);
        decoder.push(&encode_frame(&[0; 11]));
        assert_eq!(
            decoder.next_message(),
            Err(FrameError::TooLarge { len: 11, limit: 10 })
        );
        let mut decoder = FrameDecoder::new(10);
        decoder.push(&encode_frame(b"hello")[..6]);
        assert_eq!(decoder.next_message(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated(6)));
        let mut decoder = FrameDecoder::new(10);
        let error = ErrorBody::new(ErrorKind::TermEnded, "the term ended");
        decoder.push(&encode_frame(b"ok"));
        decoder.push(&encode_error_frame(&error));
        assert_eq!(decoder.next_message(), Ok(Some(Bytes::from_static(b"ok"))));
        assert_eq!(decoder.next_message(), Err(FrameError::Remote(error)));
    }

    #[test]
    fn every_kind_survives_its_status() {
        use ErrorKind::*;
        for kind in [
            Unauthenticated,
            WrongGroup,
            NotLeader,
            PayloadTooLarge,
            BadRequest,
            NotFound,
            Handler,
            TermEnded,
            DeadlineExceeded,
            ShuttingDown,
            Internal,
        ] {
            assert_eq!(ErrorKind::from_status(kind.status()), kind);
        }
        // Not-leader and shutting-down replies are the ones a caller may re-route.
        assert!(!NotLeader.handler_may_have_run());
        assert!(!ShuttingDown.handler_may_have_run());
        assert!(Handler.handler_may_have_run());
    }
}
