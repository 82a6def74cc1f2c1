//! Messaging between the members of a group: send-to-leader, broadcast, streams, and the
//! announcements that keep membership and leadership views fresh.
//!
//! # Send
//!
//! [`Hedge::send`](crate::Hedge::send) delivers a message to the handler the **leader**
//! registered ([`HedgeBuilder::on_send`](crate::HedgeBuilder::on_send)) and returns its reply.
//! The handler gets the term's fencing token and a cancellation token that fires when the term
//! ends (or the caller goes away, or the deadline passes); it is dropped at once when the term
//! ends. A member that does not lead answers "not leader" with its view of the leader and runs
//! nothing.
//!
//! The caller re-routes, with backoff, until its deadline **only** when no handler can have run:
//! the connection could not be made, the request was not sent, or the member answered "not
//! leader" or "shutting down". Any failure after the request may have reached a handler is
//! returned as [`MessagingError::OutcomeUnknown`]: the library never runs a send twice.
//!
//! # Broadcast
//!
//! [`Hedge::broadcast`](crate::Hedge::broadcast) delivers a message to every member of the
//! view (this one included, unless skipped; or only to listed members), concurrently, each
//! with its own deadline, and returns every reply or error by member id;
//! [`Hedge::broadcast_stream`](crate::Hedge::broadcast_stream) yields them as they arrive.
//! Nothing is shared between deliveries but the pooled connections, so concurrent broadcasts
//! from many members cannot deadlock.
//!
//! # Streams
//!
//! [`Hedge::stream_to_leader`](crate::Hedge::stream_to_leader) opens a bidirectional stream of
//! messages to the leader's stream handler; [`Hedge::stream_broadcast`](crate::Hedge::stream_broadcast)
//! opens one to every member. Each stream is its own HTTP/2 stream with its own bounded
//! channels: streams never see each other's messages, and a slow reader slows only its own
//! writer (backpressure through the channel bound and HTTP/2 flow control).

pub mod announce;
mod node;
mod routes;
pub mod stream;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use node::Node;
pub use stream::{PeerStream, StreamReceiver, StreamSender, StreamSession};

use crate::peer::{ErrorKind, PeerError};

/// The default time a send may take, re-routing included: long enough to ride out a leader's
/// crash with the default timings (lease 5 s + one poll).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time each broadcast delivery may take.
pub const DEFAULT_BROADCAST_TIMEOUT: Duration = Duration::from_secs(5);

/// A message delivered to a handler.
#[derive(Clone, Debug)]
pub struct Message {
    /// The sending member's id.
    pub sender: String,
    /// The message.
    pub payload: Bytes,
    /// For a send: the fencing token of the leader's term the handler runs under (fence your
    /// writes with it). `None` for a broadcast.
    pub token: Option<u64>,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Fires when the handler should stop: the term ended (sends), the caller went away, or the
    /// deadline passed. The handler future is also dropped then.
    pub cancelled: CancellationToken,
}

/// An error a handler returns; its message goes back to the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// The message for the caller.
    pub message: String,
}

impl HandlerError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<Bytes, HandlerError>;

/// A handler of sends or broadcasts. Implemented for every `Fn(Message) -> impl Future<Output =
/// HandlerResult>`.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, message: Message) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> MessageHandler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, message: Message) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(message))
    }
}

/// A handler of incoming streams. Implemented for every `Fn(StreamSession) -> impl Future<Output
/// = ()>`. The stream ends when the handler returns (or is cancelled).
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream.
    fn handle(&self, session: StreamSession) -> BoxFuture<'static, ()>;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(StreamSession) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, session: StreamSession) -> BoxFuture<'static, ()> {
        Box::pin(self(session))
    }
}

/// The handlers a member registers on its builder.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    pub send: Option<std::sync::Arc<dyn MessageHandler>>,
    pub broadcast: Option<std::sync::Arc<dyn MessageHandler>>,
    pub leader_stream: Option<std::sync::Arc<dyn StreamHandler>>,
    pub broadcast_stream: Option<std::sync::Arc<dyn StreamHandler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("send", &self.send.is_some())
            .field("broadcast", &self.broadcast.is_some())
            .field("leader_stream", &self.leader_stream.is_some())
            .field("broadcast_stream", &self.broadcast_stream.is_some())
            .finish()
    }
}

/// Options of one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// How long the send may take, re-routing during a failover included.
    pub timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_SEND_TIMEOUT,
        }
    }
}

/// The leader's reply to a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The leader that handled it.
    pub leader: String,
    /// The fencing token of the term the handler ran under.
    pub token: u64,
    /// The handler's reply.
    pub payload: Bytes,
}

/// Options of one broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastOptions {
    /// Do not deliver to this member.
    pub skip_self: bool,
    /// Deliver only to these members (ids not in the view get [`MessagingError::NotAMember`]).
    pub only: Option<Vec<String>>,
    /// How long each delivery may take.
    pub timeout: Duration,
}

impl Default for BroadcastOptions {
    fn default() -> Self {
        Self {
            skip_self: false,
            only: None,
            timeout: DEFAULT_BROADCAST_TIMEOUT,
        }
    }
}

impl BroadcastOptions {
    /// Every member but this one.
    pub fn skip_self(mut self) -> Self {
        self.skip_self = true;
        self
    }

    /// Only these members.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.only = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Each delivery may take this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One member's result of a broadcast.
#[derive(Debug)]
pub struct BroadcastReply {
    /// The member.
    pub member: String,
    /// Its handler's reply, or what went wrong.
    pub result: Result<Bytes, MessagingError>,
}

/// Errors of sends, broadcasts and streams.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// This member has no peer transport (see [`HedgeBuilder::peer`](crate::HedgeBuilder::peer)).
    #[error(
        "messaging is off for this member: configure the peer transport (HedgeBuilder::peer, or \
         HEDGE_GROUP_SECRET with Hedge::from_env)"
    )]
    Disabled,
    /// No leader could be reached before the deadline; no handler ran.
    #[error("no leader answered within {waited:?} (nothing was delivered){}", last.as_ref().map(|l| format!("; last attempt: {l}")).unwrap_or_default())]
    NoLeader {
        /// How long the send tried.
        waited: Duration,
        /// The last attempt's failure.
        last: Option<String>,
    },
    /// The id is not in this member's view.
    #[error("{id} is not a member of the group as this member knows it")]
    NotAMember {
        /// The id.
        id: String,
    },
    /// The message is over the size limit.
    #[error("a message of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The member could not be reached; nothing was delivered.
    #[error("member {member} could not be reached (nothing was delivered): {reason}")]
    Unreachable {
        /// The member.
        member: String,
        /// What failed.
        reason: String,
    },
    /// The handler ran and returned an error.
    #[error("the handler on {member} failed: {message}")]
    Handler {
        /// The member.
        member: String,
        /// The handler's message.
        message: String,
    },
    /// The member has no handler for this kind of message.
    #[error("member {member} has no handler for this message")]
    NoHandler {
        /// The member.
        member: String,
    },
    /// The member refused the request (authentication, size, format); nothing ran.
    #[error("member {member} refused the request ({kind}): {message}")]
    Refused {
        /// The member.
        member: String,
        /// Why.
        kind: ErrorKind,
        /// Its explanation.
        message: String,
    },
    /// The request may or may not have been handled (a timeout or a failure after it was
    /// sent, or the leader's term ended while the handler ran). It was not retried.
    #[error("the outcome on {member} is unknown (the handler may or may not have run): {reason}")]
    OutcomeUnknown {
        /// The member.
        member: String,
        /// What happened.
        reason: String,
    },
    /// The stream was closed.
    #[error("the stream with {member} is closed: {reason}")]
    StreamClosed {
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
}

impl MessagingError {
    /// A short stable name of the kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            MessagingError::Disabled => "disabled",
            MessagingError::NoLeader { .. } => "no_leader",
            MessagingError::NotAMember { .. } => "not_a_member",
            MessagingError::TooLarge { .. } => "too_large",
            MessagingError::Unreachable { .. } => "unreachable",
            MessagingError::Handler { .. } => "handler",
            MessagingError::NoHandler { .. } => "no_handler",
            MessagingError::Refused { .. } => "refused",
            MessagingError::OutcomeUnknown { .. } => "outcome_unknown",
            MessagingError::StreamClosed { .. } => "stream_closed",
        }
    }

    /// Whether a handler may have run.
    pub fn handler_may_have_run(&self) -> bool {
        matches!(
            self,
            MessagingError::Handler { .. }
                | MessagingError::OutcomeUnknown { .. }
                | MessagingError::StreamClosed { .. }
        )
    }

    /// The error a call to `member` ended with.
    pub(crate) fn from_peer(member: &str, error: PeerError) -> Self {
        let member = member.to_owned();
        match error {
            PeerError::Remote { error, .. } => match error.kind {
                ErrorKind::Handler => MessagingError::Handler {
                    member,
                    message: error.message,
                },
                ErrorKind::NoHandler => MessagingError::NoHandler { member },
                ErrorKind::TermEnded | ErrorKind::DeadlineExceeded | ErrorKind::Internal => {
                    MessagingError::OutcomeUnknown {
                        member,
                        reason: error.message,
                    }
                }
                ErrorKind::ShuttingDown | ErrorKind::NotLeader => MessagingError::Unreachable {
                    member,
                    reason: error.message,
                },
                kind => MessagingError::Refused {
                    member,
                    kind,
                    message: error.message,
                },
            },
            e if e.handler_may_have_run() => MessagingError::OutcomeUnknown {
                member,
                reason: e.to_string(),
            },
            e => MessagingError::Unreachable {
                member,
                reason: e.to_string(),
            },
        }
    }
}
