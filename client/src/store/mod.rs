//! The coordination state behind one trait, and its backends.
//!
//! Every operation of [`Store`] is **one atomic step** on the backend: one Spanner read-write
//! transaction, or one critical section in memory. Everything above the store (timers, events,
//! retries) is written once and runs unchanged on every backend.
//!
//! The decisions themselves (is the lease expired? which token comes next?) are pure functions in
//! [`lease`], shared by every backend, so that the backends differ only in how they read and write.

pub mod lease;
pub mod memory;
pub mod schema;
#[cfg(feature = "spanner")]
pub mod spanner;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use lease::{AcquireOutcome, LockHolder, ReleaseOutcome, RenewOutcome};
pub use memory::MemoryStore;
pub use schema::TableNames;
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
    /// The member's peer address (`ip:port`), when it has one.
    pub address: Option<String>,
    /// How long the row counts as alive after this heartbeat commits.
    pub ttl: Duration,
}

/// The errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached (network, DNS, a closed emulator).
    #[error("the coordination store is unreachable: {message}")]
    Unavailable {
        /// What failed, with the remedy where one is known.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A table the operation needs does not exist.
    #[error(
        "table `{table}` does not exist in the database: create the schema first \
         (apply a HedgeGroup with the operator, or call hedge::store::schema::ensure_schema)"
    )]
    MissingTable {
        /// The missing table.
        table: String,
    },
    /// The database does not exist or the path is malformed.
    #[error("invalid database: {0}")]
    InvalidDatabase(String),
    /// An operation did not complete within its deadline.
    #[error("the coordination store did not answer within {0:?}")]
    Timeout(Duration),
    /// A row holds data this version of hedge cannot read (a corrupted or foreign row).
    #[error("unexpected data in table `{table}`: {message}")]
    Corrupt {
        /// The table that holds the row.
        table: String,
        /// What was wrong with it.
        message: String,
    },
    /// Any other backend error.
    #[error("coordination store error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout(_) | StoreError::Backend { .. }
        )
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
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &str,
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
}
