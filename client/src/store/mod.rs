//! The coordination state behind one trait, and its backends.
//!
//! Every operation of [`Store`] is **one atomic step** on the backend: one Spanner read-write
//! transaction, or one critical section in memory. Everything above the store (timers, events,
//! retries) is written once and runs unchanged on every backend.
//!
//! The decisions themselves (is the lease expired? which token comes next? which sequence number
//! does a put get? is there room for another permit?) are pure functions in [`lease`],
//! [`log_rules`] and [`permits`], shared by every backend, so that the backends differ only in
//! how they read and write.

pub mod lease;
pub mod log_rules;
pub mod memory;
pub mod permits;
pub mod schema;
#[cfg(feature = "spanner")]
pub mod spanner;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use crate::names::TableNames;
pub use lease::{AcquireOutcome, LockHolder, ReleaseOutcome, RenewOutcome};
pub use log_rules::{
    LogEntry, LogInputError, LogOrder, LogQuery, PutMode, PutOutcome, PutRequest, Retention,
};
pub use memory::{ClockSkew, Latency, MemoryStore};
pub use permits::{
    DefineOutcome, PermitHolder, PermitInputError, PermitOutcome, PermitRenewal, PermitRequest,
    SemaphoreKey, SemaphoreState,
};
#[cfg(feature = "spanner")]
pub use spanner::SpannerStore;

/// Identifies one lock: the group it belongs to and its name within the group.
///
/// Rows are keyed by the pair, never by a prefix or a concatenation, so that locks named `a` and
/// `a_b` (or groups named `x` and `x_y`) can never touch each other's rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    /// The hedge group (one per `HedgeGroup` resource).
    pub group: String,
    /// The lock's name within the group; the group's leader election uses [`LockKey::LEADER`].
    pub name: String,
}

impl LockKey {
    /// The name of the lock that elects a group's leader.
    pub const LEADER: &'static str = "leader";

    /// A key for lock `name` of `group`.
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.name)
    }
}

/// Who asks for a lock: a member id, and the incarnation of the process asking (a value fresh
/// for every start of a member, so that a restarted process with the same member id is told
/// apart from its predecessor, and a grant whose reply was lost can be recognised as ours).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The member id.
    pub id: String,
    /// The incarnation.
    pub incarnation: String,
}

impl Candidate {
    /// A candidate `id` with a fresh incarnation.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            incarnation: new_incarnation(),
        }
    }
}

impl From<&str> for Candidate {
    /// A candidate with a fresh incarnation.
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for Candidate {
    /// A candidate with a fresh incarnation.
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

/// A fresh incarnation: 32 random hex digits.
pub fn new_incarnation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A lock as a strong read sees it, for status reports and `leader()` queries from outside the
/// election loop (the operator uses it for the `HedgeGroup` status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    /// The current holder, `None` when the lock is free (released, or its lease expired).
    pub holder: Option<LockHolder>,
    /// The last fencing token granted for this lock (also when the lock is free now).
    pub last_token: u64,
}

/// A member of a group as recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's stable id.
    pub id: String,
    /// The incarnation of the process behind the member (`None` for rows written by a hedge
    /// older than schema version 3).
    pub incarnation: Option<String>,
    /// The member's peer address (`ip:port`), when it has one.
    pub address: Option<String>,
    /// When the member first joined, on the store's clock.
    pub joined_at: SystemTime,
}

/// One member heartbeat: who, where, and for how long the row stays alive without the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHeartbeat {
    /// The member's stable id.
    pub id: String,
    /// The incarnation of this process (see [`Candidate`]). A heartbeat with a new incarnation
    /// starts a new membership: `joined_at` is reset.
    pub incarnation: String,
    /// The member's peer address (`ip:port`), when it has one.
    pub address: Option<String>,
    /// How long the row counts as alive after this heartbeat commits.
    pub ttl: Duration,
}

/// The errors of a store backend, classified by what retrying can fix.
///
/// | kind | retried? | typical cause |
/// |---|---|---|
/// | [`Unavailable`](StoreError::Unavailable), [`Timeout`](StoreError::Timeout), [`Backend`](StoreError::Backend) | yes, with backoff | network, an overloaded or restarting Spanner, aborted transactions |
/// | [`PermissionDenied`](StoreError::PermissionDenied) | yes, logged at error level | an IAM role not granted yet (Workload Identity bindings take minutes to apply) |
/// | [`DatabaseNotFound`](StoreError::DatabaseNotFound), [`InvalidDatabase`](StoreError::InvalidDatabase) | no | a wrong database path |
/// | [`MissingTable`](StoreError::MissingTable), [`SchemaMismatch`](StoreError::SchemaMismatch) | no | the schema was not provisioned, or is older than this hedge |
/// | [`InvalidRequest`](StoreError::InvalidRequest) | no | a value Spanner refuses, a statement it cannot parse |
/// | [`Corrupt`](StoreError::Corrupt) | per row | a row hedge cannot read; the next grant overwrites it |
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached, or answered "try again" (network, DNS, a closed
    /// emulator, Unavailable, DeadlineExceeded, Aborted, ResourceExhausted, Internal).
    #[error("the coordination store is unreachable: {message}")]
    Unavailable {
        /// What failed, with the remedy where one is known.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// An operation did not complete within its deadline (it may still have committed).
    #[error("the coordination store did not answer within {0:?}")]
    Timeout(Duration),
    /// The credentials were refused, or lack a permission the operation needs.
    #[error("access to the coordination store was denied: {message}")]
    PermissionDenied {
        /// What was denied, and the IAM role that grants it.
        message: String,
    },
    /// The database (or its instance) does not exist.
    #[error("database {database} does not exist: {message}")]
    DatabaseNotFound {
        /// The database path.
        database: String,
        /// Spanner's message and what to fix.
        message: String,
    },
    /// The database path is malformed.
    #[error("invalid database: {0}")]
    InvalidDatabase(String),
    /// A table the operation needs does not exist.
    #[error(
        "table `{table}` does not exist in the database: create the schema first \
         (apply a HedgeGroup with the operator, run `hedge-operator schema apply`, or call \
         hedge::store::schema::ensure_schema)"
    )]
    MissingTable {
        /// The missing table.
        table: String,
    },
    /// The tables exist but lack a column (or another object) this version of hedge needs.
    #[error("the tables do not match this version of hedge: {message}")]
    SchemaMismatch {
        /// What is missing, and what to run.
        message: String,
    },
    /// The store refused the request itself (an invalid argument, a statement it cannot parse,
    /// an unsupported operation): retrying the same request cannot succeed.
    #[error("the coordination store refused the request: {message}")]
    InvalidRequest {
        /// Spanner's message, and what to fix.
        message: String,
    },
    /// A row holds data this version of hedge cannot read (a corrupted or foreign row).
    #[error("unexpected data in table `{table}` at key {key}: {message}")]
    Corrupt {
        /// The table that holds the row.
        table: String,
        /// The row's key.
        key: String,
        /// What was wrong with it.
        message: String,
    },
    /// Any other backend error; retried.
    #[error("coordination store error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (see the table on [`StoreError`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. }
                | StoreError::Timeout(_)
                | StoreError::Backend { .. }
                | StoreError::PermissionDenied { .. }
        )
    }

    /// A short, stable name of the kind of error (the variant's name), for condition reasons,
    /// metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Unavailable { .. } => "Unavailable",
            StoreError::Timeout(_) => "Timeout",
            StoreError::PermissionDenied { .. } => "PermissionDenied",
            StoreError::DatabaseNotFound { .. } => "DatabaseNotFound",
            StoreError::InvalidDatabase(_) => "InvalidDatabase",
            StoreError::MissingTable { .. } => "MissingTable",
            StoreError::SchemaMismatch { .. } => "SchemaMismatch",
            StoreError::InvalidRequest { .. } => "InvalidRequest",
            StoreError::Corrupt { .. } => "Corrupt",
            StoreError::Backend { .. } => "Backend",
        }
    }
}

/// Shorthand for results of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Every atomic operation hedge needs from its shared state.
///
/// Each method is one atomic step. Expiry is judged on the **store's clock** only (Spanner's
/// commit timestamps and the transaction's own time; the memory store's monotonic clock): a
/// client's clock never enters the judgement.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Grants `key` to `candidate` for `lease` if the lock is free (never held, released, or its
    /// holder's lease expired), with a fresh fencing token greater than every token granted for
    /// this key before. Otherwise reports the current holder.
    ///
    /// A row that cannot be read ([`StoreError::Corrupt`]) counts as expired once it is older
    /// than `lease`, and is overwritten by the grant.
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome>;

    /// Extends the lease of `holder`'s term `token` by `lease` from now, only if that exact term
    /// still holds the lock and has not expired. A deposed holder can never extend another's lease.
    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome>;

    /// Frees the lock at once if `holder`'s term `token` still holds it; the token stays recorded
    /// so that the next grant gets a greater one.
    async fn release(&self, key: &LockKey, holder: &str, token: u64)
    -> StoreResult<ReleaseOutcome>;

    /// A strong read of the lock, `None` when it has never been granted (or its row was deleted).
    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>>;

    /// Records (inserts or refreshes) a member of `group`.
    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()>;

    /// Removes a member of `group` (a graceful leave). Removing an absent member is not an error.
    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()>;

    /// The members of `group` whose last heartbeat has not expired, ordered by id.
    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>>;

    /// Writes a version of a log key (see [`log_rules`]): one read-write transaction that reads
    /// the key's row, the version carrying the request id and, for a fenced put, the lock row;
    /// decides with [`log_rules::decide_put`]; and writes the version and the key's new
    /// `last_seq` (for an overwrite, after deleting every earlier version).
    ///
    /// Invalid input ([`PutRequest::validate`]) fails with [`StoreError::InvalidRequest`] and
    /// writes nothing.
    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome>;

    /// Reads versions of a log key (one strong read), ordered by sequence number as `query`
    /// says; empty when the key has none.
    async fn read_log(&self, group: &str, key: &str, query: LogQuery)
    -> StoreResult<Vec<LogEntry>>;

    /// The keys of `group` that start with `prefix` and have at least one version, in byte
    /// order, after `start_after` when given, at most `limit` (one strong read).
    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>>;

    /// Drops the versions of a log key that `retention` does not keep, in one read-write
    /// transaction; returns how many were dropped. The key's `last_seq` stays, so sequence
    /// numbers are never reused.
    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64>;

    /// Creates the semaphore `key` with `limit` if it does not exist (one read-write
    /// transaction); an existing semaphore keeps its limit whatever is asked.
    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome>;

    /// A strong read of a semaphore and its live permits, `None` when it does not exist.
    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>>;

    /// Grants a permit of `key` if fewer than its limit are live (one read-write transaction
    /// that counts the unexpired permits and reclaims the expired ones; see [`permits`]).
    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome>;

    /// Extends permit `permit_id` (token `token`) by `lease` from now, only while it is live.
    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal>;

    /// Deletes permit `permit_id` (live or expired): its slot is free at once.
    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome>;
}

impl From<LogInputError> for StoreError {
    fn from(e: LogInputError) -> Self {
        StoreError::InvalidRequest {
            message: e.to_string(),
        }
    }
}

impl From<PermitInputError> for StoreError {
    fn from(e: PermitInputError) -> Self {
        StoreError::InvalidRequest {
            message: e.to_string(),
        }
    }
}
