//! The group's append-only key/value log: [`Log`], from [`Hedge::log`](crate::Hedge::log).
//!
//! Every put is **one** store transaction (see [`crate::store::log_rules`] for the rules and the
//! limits) and every read is one strong read:
//!
//! * [`Log::put`] appends a version recording the value (bytes; `&str` and `String` convert),
//!   the writer (member id and incarnation), the fencing token this member holds if it leads,
//!   a unique id, the commit timestamp, and a per-key **sequence number** assigned in the put's
//!   own transaction. "Latest" is the greatest sequence number: two versions that share a
//!   commit timestamp never tie.
//! * [`Log::get`] returns the latest version; [`Log::newest`], [`Log::oldest`] and
//!   [`Log::all`] the N newest, the oldest, or every version newest first.
//! * [`PutOptions`]: overwrite in place ([`PutMode::Overwrite`], hedge's `NoAppend`), an
//!   idempotency key, fencing on a token, routing.
//! * [`Log::list_keys`] lists keys by prefix; [`Log::trim`] keeps the N newest versions of a
//!   key or drops those older than an age.
//!
//! # Retries append once
//!
//! Every put carries a request id: the caller's idempotency key, or a fresh UUID. The store
//! writes nothing for a request id that already names a version of the key, and returns that
//! version instead. A put that fails with a transient store error (a lost reply, a timeout, an
//! unavailable store) is therefore retried with the same request id until
//! [`StorageOptions::put_timeout`](crate::storage::StorageOptions::put_timeout), and a caller
//! that retries with its own idempotency key after a crash gets the original version back: a
//! put is written once. (The request id is remembered with the version it wrote: after that
//! version is trimmed or overwritten, the same id writes again.)
//!
//! # Fencing
//!
//! [`Log::put_fenced`] commits only if the given token is still the current token of the
//! group's leader lock, with a running lease, checked against the lock row **in the put's own
//! transaction**: a leader that was deposed (paused, partitioned) cannot write after its
//! successor was granted the lock.
//!
//! # Routing
//!
//! hedge (Go) sends a follower's put to the leader by default. That buys no consistency
//! (Spanner serialises the puts of a key anyway) and costs a hop, so hedge writes directly by
//! default ([`PutRouting::Direct`]). [`PutRouting::ViaLeader`] sends followers' puts to the
//! leader through a [`PutForwarder`]: with the peer transport on, the one [`forward`] installs,
//! under which the leader writes the put **fenced on its own term** (the version records the
//! follower as its writer and the leader's token). With no forwarder (no peer transport), no
//! leader known or reachable, or when forwarding fails, the put is written directly, with the
//! same request id, so it is still written once. A forward may take half the
//! [`put_timeout`](crate::storage::StorageOptions::put_timeout); the direct write the rest.

pub mod forward;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::debug;

use crate::election::Election;
use crate::store::log_rules::{self, LogEntry, LogInputError, LogQuery, PutMode, PutRequest};
use crate::store::{Candidate, PutOutcome, Retention, Store, StoreError};

pub use crate::store::log_rules::{MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_VALUE_BYTES};

/// The first pause between two attempts of a put that failed transiently.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);
/// How many keys one page of [`Log::list_keys`] reads.
const LIST_PAGE: u32 = 1000;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key, value or an option is invalid; nothing was written.
    #[error(transparent)]
    Input(#[from] LogInputError),
    /// A fenced put whose token is no longer the lock's current one; nothing was written.
    #[error(
        "put to {key:?} fenced on token {token} was refused: the lock's current token is {current:?}"
    )]
    Fenced {
        /// The key.
        key: String,
        /// The token the put was fenced on.
        token: u64,
        /// The lock's current token (`None`: nobody holds it).
        current: Option<u64>,
    },
    /// A value that is not UTF-8 was read as a string.
    #[error("version {seq} of {key:?} is not UTF-8 text: {source}")]
    NotUtf8 {
        /// The key.
        key: String,
        /// The version.
        seq: u64,
        /// Where the text broke.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A forwarded put reached a member that does not lead (or whose term ended before the
    /// put committed); nothing was written under its term.
    #[error("member {member} does not lead: it cannot write a forwarded put")]
    NotLeader {
        /// This member.
        member: String,
    },
    /// The store failed (after retries, for a put).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a put reaches the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PutRouting {
    /// Every member writes its own puts (one transaction each). The default.
    #[default]
    Direct,
    /// Followers send their puts to the leader, which writes them fenced on its term (hedge's
    /// default), through the [`PutForwarder`] the peer transport installs; without one, or
    /// when no leader can be reached, puts are written directly.
    ViaLeader,
}

/// Options of one put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Append (default) or overwrite in place.
    pub mode: PutMode,
    /// The idempotency key: every put with the same key (of the same log key) writes one
    /// version. `None`: a fresh id per call (retries inside the call are still safe).
    pub idempotency_key: Option<String>,
    /// Fence the put on this token of the group's leader lock.
    pub fence: Option<u64>,
    /// Routing; `None`: the member's default ([`StorageOptions::put_routing`](crate::storage::StorageOptions::put_routing)).
    pub routing: Option<PutRouting>,
}

impl PutOptions {
    /// Overwrite every earlier version (hedge's `NoAppend`).
    pub fn overwrite() -> Self {
        Self {
            mode: PutMode::Overwrite,
            ..Self::default()
        }
    }

    /// With this idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Fenced on `token` (a [`Term`](crate::Term)'s token).
    #[must_use]
    pub fn fenced(mut self, token: u64) -> Self {
        self.fence = Some(token);
        self
    }

    /// Routed this way.
    #[must_use]
    pub fn routing(mut self, routing: PutRouting) -> Self {
        self.routing = Some(routing);
        self
    }
}

/// An error of a [`PutForwarder`]: the put may or may not have been written by the leader
/// (the log retries it directly with the same request id, which makes that safe).
#[derive(Debug, thiserror::Error)]
#[error("forwarding the put to the leader failed: {0}")]
pub struct ForwardError(pub String);

/// Sends a follower's put to the leader: the hook the peer transport implements for
/// [`PutRouting::ViaLeader`] (see [`forward`]). The leader runs what it receives with
/// [`Log::write_forwarded`].
#[async_trait]
pub trait PutForwarder: Send + Sync + std::fmt::Debug + 'static {
    /// Delivers `request` (which carries its request id) for `group` to the group's leader
    /// before `deadline` and returns the leader's outcome.
    async fn forward(
        &self,
        group: &str,
        request: &PutRequest,
        deadline: Instant,
    ) -> Result<PutOutcome, ForwardError>;
}

/// The group's log, as one member writes and reads it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Log {
    store: Arc<dyn Store>,
    group: String,
    writer: Candidate,
    election: Election,
    routing: PutRouting,
    put_timeout: Duration,
    forwarder: Option<Arc<dyn PutForwarder>>,
}

impl Log {
    /// The log of `election`'s group, written as `writer` (a member's id and incarnation);
    /// tokens come from `election` and fences check its lock.
    pub fn new(
        store: Arc<dyn Store>,
        election: Election,
        writer: Candidate,
        options: &crate::storage::StorageOptions,
    ) -> Self {
        Self {
            store,
            group: election.key().group.clone(),
            writer,
            election,
            routing: options.put_routing,
            put_timeout: options.put_timeout,
            forwarder: options.forwarder.clone(),
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Appends `value` to `key` and returns the version written.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<LogEntry, KvError> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Appends `value` to `key` only if `token` is still the current token of the group's
    /// leader lock (see the module docs); otherwise [`KvError::Fenced`].
    pub async fn put_fenced(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        token: u64,
    ) -> Result<LogEntry, KvError> {
        self.put_with(key, value, PutOptions::default().fenced(token))
            .await
    }

    /// Writes `value` to `key` as `options` say, and returns the version written, or the
    /// original version when the idempotency key had been written before.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<LogEntry, KvError> {
        let request = PutRequest {
            key: key.to_owned(),
            value: value.into(),
            writer: self.writer.clone(),
            token: options.fence.or_else(|| self.election.token()),
            mode: options.mode,
            request_id: Some(
                options
                    .idempotency_key
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            ),
            fence: options.fence.map(|_| self.election.key().name.clone()),
        };
        request.validate()?;
        let routing = options.routing.unwrap_or(self.routing);
        match self.write(&request, routing).await? {
            PutOutcome::Written(entry) | PutOutcome::Replayed(entry) => Ok(entry),
            PutOutcome::Fenced { current } => Err(KvError::Fenced {
                key: request.key,
                token: request.token.unwrap_or_default(),
                current,
            }),
        }
    }

    /// Writes a put a follower forwarded to this member (the leader side of
    /// [`PutRouting::ViaLeader`]): under this member's term, fenced on its token unless the
    /// follower fenced the put itself. [`KvError::NotLeader`] when this member does not lead,
    /// or its term ended before the put committed (then nothing was written under it).
    pub async fn write_forwarded(&self, request: &PutRequest) -> Result<PutOutcome, KvError> {
        let not_leader = || KvError::NotLeader {
            member: self.writer.id.clone(),
        };
        let term = self.election.term().ok_or_else(not_leader)?;
        let mut request = request.clone();
        let own_fence = request.fence.is_none();
        if own_fence {
            request.token = Some(term.token);
            request.fence = Some(self.election.key().name.clone());
        }
        request.validate()?;
        match self.write(&request, PutRouting::Direct).await? {
            PutOutcome::Fenced { .. } if own_fence => Err(not_leader()),
            outcome => Ok(outcome),
        }
    }

    /// Forwards or writes `request`, retrying transient failures with the same request id
    /// until the put timeout.
    async fn write(
        &self,
        request: &PutRequest,
        routing: PutRouting,
    ) -> Result<PutOutcome, KvError> {
        let started = Instant::now();
        if routing == PutRouting::ViaLeader
            && !self.election.is_leader()
            && let Some(forwarder) = &self.forwarder
        {
            match forwarder
                .forward(&self.group, request, started + self.put_timeout / 2)
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    debug!(group = self.group, key = request.key, error = %e, "writing the put directly")
                }
            }
        }
        let deadline = started + self.put_timeout;
        let mut pause = FIRST_RETRY;
        loop {
            match self.store.put(&self.group, request).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    debug!(group = self.group, key = request.key, error = %e, "put failed; retrying with the same request id");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The latest version of `key`, `None` when it has none.
    pub async fn get(&self, key: &str) -> Result<Option<LogEntry>, KvError> {
        Ok(self
            .versions(key, LogQuery::latest())
            .await?
            .into_iter()
            .next())
    }

    /// The latest value of `key` as text.
    pub async fn get_str(&self, key: &str) -> Result<Option<String>, KvError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(None);
        };
        match String::from_utf8(entry.value) {
            Ok(text) => Ok(Some(text)),
            Err(e) => Err(KvError::NotUtf8 {
                key: entry.key,
                seq: entry.seq,
                source: e.utf8_error(),
            }),
        }
    }

    /// The `n` newest versions of `key`, newest first.
    pub async fn newest(&self, key: &str, n: u32) -> Result<Vec<LogEntry>, KvError> {
        self.versions(key, LogQuery::newest(n)).await
    }

    /// The oldest version of `key` still kept.
    pub async fn oldest(&self, key: &str) -> Result<Option<LogEntry>, KvError> {
        Ok(self
            .versions(key, LogQuery::oldest())
            .await?
            .into_iter()
            .next())
    }

    /// Every version of `key`, newest first.
    pub async fn all(&self, key: &str) -> Result<Vec<LogEntry>, KvError> {
        self.versions(key, LogQuery::all()).await
    }

    /// The versions of `key` that `query` selects (one strong read).
    pub async fn versions(&self, key: &str, query: LogQuery) -> Result<Vec<LogEntry>, KvError> {
        log_rules::validate_key(key)?;
        query.validate()?;
        Ok(self.store.read_log(&self.group, key, query).await?)
    }

    /// Every key that starts with `prefix` and has a version, in byte order (one strong read
    /// per thousand keys).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut keys: Vec<String> = Vec::new();
        loop {
            let page = self
                .list_keys_page(prefix, keys.last().map(String::as_str), LIST_PAGE)
                .await?;
            let done = page.len() < usize::try_from(LIST_PAGE).unwrap_or(usize::MAX);
            keys.extend(page);
            if done {
                return Ok(keys);
            }
        }
    }

    /// At most `limit` keys that start with `prefix`, after `start_after` when given.
    pub async fn list_keys_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        log_rules::validate_prefix(prefix)?;
        log_rules::validate_list_limit(limit)?;
        Ok(self
            .store
            .list_log_keys(&self.group, prefix, start_after, limit)
            .await?)
    }

    /// Drops the versions of `key` that `retention` does not keep; returns how many.
    pub async fn trim(&self, key: &str, retention: Retention) -> Result<u64, KvError> {
        log_rules::validate_key(key)?;
        retention.validate()?;
        Ok(self.store.trim_log(&self.group, key, retention).await?)
    }
}
