//! Everything the operator asks of Spanner, behind one small trait: the real implementation
//! ([`SpannerProvisioner`](crate::spanner::SpannerProvisioner)) calls the client crate's schema
//! module and store; the mocked reconcile tests use a fake that counts calls.

use std::collections::BTreeSet;
use std::time::SystemTime;

use async_trait::async_trait;
use hedge::DatabasePath;
use hedge::store::TableNames;

/// A Spanner call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A Spanner call failed; `reason` says why in a word (the client's error class).
    #[error("Spanner failed while {step}: {message}")]
    Spanner {
        /// What was being done.
        step: &'static str,
        /// The condition and metric reason: `SpannerUnavailable`, `SpannerTimeout`,
        /// `PermissionDenied`, `DatabaseNotFound`, `MissingTable`, `SchemaMismatch`,
        /// `SpannerRejected`, ...
        reason: &'static str,
        /// What failed, in full (logs and events; never a condition message).
        message: String,
    },
    /// The tables are at a schema version newer than this operator knows.
    #[error(
        "the tables are at schema version {found}, newer than the {supported} this operator knows: upgrade the operator"
    )]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest version this operator provisions.
        supported: i64,
    },
}

impl ProvisionError {
    /// The condition and metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvisionError::Spanner { reason, .. } => reason,
            ProvisionError::TooNew { .. } => "SchemaTooNew",
        }
    }

    /// A stable one-line summary for condition messages: the step and the reason, without the
    /// error's varying text (a status that changes on every failure would defeat the backoff).
    pub fn summary(&self) -> String {
        match self {
            ProvisionError::Spanner { step, reason, .. } => {
                format!("Spanner failed while {step} ({reason}); the operator's log has the error")
            }
            other => other.to_string(),
        }
    }

    /// Whether the database (or its instance) does not exist: then there is nothing to clean up.
    pub fn is_database_missing(&self) -> bool {
        self.reason() == "DatabaseNotFound"
    }

    /// Whether a table of the set does not exist.
    pub fn is_missing_table(&self) -> bool {
        self.reason() == "MissingTable"
    }

    /// Whether the tables are missing or do not match this version: then the schema must be
    /// provisioned (which upgrades an older schema, or reports a table that is not hedge's).
    pub fn needs_schema(&self) -> bool {
        matches!(self.reason(), "MissingTable" | "SchemaMismatch")
    }
}

/// Where a group's tables are: the database, the table names and, for a group that names one,
/// the Cloud Spanner emulator to reach them through (`spec.spanner.emulatorHost`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The database.
    pub database: DatabasePath,
    /// The tables.
    pub tables: TableNames,
    /// The emulator (`host:port`), `None` for Spanner itself (or the operator's own
    /// `SPANNER_EMULATOR_HOST`).
    pub emulator_host: Option<String>,
}

/// What [`Provisioner::ensure_schema`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaOutcome {
    /// The version before, `None` for a fresh database.
    pub version_before: Option<i64>,
    /// The version after.
    pub version_after: i64,
    /// The DDL statements applied (empty when the schema was up to date).
    pub applied: Vec<String>,
}

/// The current leader of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's member id.
    pub id: String,
    /// The fencing token of its term.
    pub token: u64,
    /// When its term began, on Spanner's clock.
    pub since: SystemTime,
}

/// A group's state as its tables show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The live leader, `None` when the leader lock is free or was never granted.
    pub leader: Option<Leader>,
    /// The number of live members.
    pub members: usize,
    /// The schema version recorded for the table set, `None` when there is no record.
    pub schema_version: Option<i64>,
}

/// The operator's Spanner calls. Every method is idempotent.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Creates the missing tables and upgrades an older schema; changes nothing when the schema
    /// is current (it compares the database's tables with the client crate's migrations first).
    /// The controller calls it for a new generation, a schema version other than its own, or a
    /// missing table, not on every resync.
    async fn ensure_schema(&self, target: &Target) -> Result<SchemaOutcome, ProvisionError>;

    /// The leader, the member count of `group` and the schema version of the table set, in one
    /// read: an unchanged group costs this one Spanner call per reconcile. A missing table fails
    /// with reason `MissingTable`. Read-only.
    async fn group_state(&self, target: &Target, group: &str)
    -> Result<GroupState, ProvisionError>;

    /// Deletes every row of `group`; succeeds when the tables do not exist.
    async fn delete_group_rows(&self, target: &Target, group: &str) -> Result<(), ProvisionError>;

    /// The groups that have rows in `tables` (empty when the tables do not exist), or `None`
    /// when this provisioner cannot list them (then no table is ever dropped). Read-only.
    async fn groups_in_tables(
        &self,
        target: &Target,
    ) -> Result<Option<BTreeSet<String>>, ProvisionError>;

    /// Drops `tables`; succeeds when they do not exist.
    async fn drop_schema(&self, target: &Target) -> Result<(), ProvisionError>;

    /// Forgets any connection kept for `db` and `tables` (after a group's clean-up).
    async fn evict(&self, target: &Target);
}
