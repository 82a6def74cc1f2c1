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
    /// Spanner could not be reached or timed out; retrying later may succeed.
    #[error("Spanner is unavailable while {step}: {message}")]
    Unavailable {
        /// What was being done.
        step: &'static str,
        /// What failed.
        message: String,
    },
    /// The database does not exist, or the request is wrong in a way retrying will not fix.
    #[error("Spanner rejected {step}: {message}")]
    Rejected {
        /// What was being done.
        step: &'static str,
        /// What failed.
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
            ProvisionError::Unavailable { .. } => "SpannerUnavailable",
            ProvisionError::Rejected { .. } => "SpannerRejected",
            ProvisionError::TooNew { .. } => "SchemaTooNew",
        }
    }
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

/// A group's state as its lock and member tables show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The live leader, `None` when the leader lock is free or was never granted.
    pub leader: Option<Leader>,
    /// The number of live members.
    pub members: usize,
}

/// The operator's Spanner calls. Every method is idempotent.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Creates the missing tables and upgrades an older schema; reads and changes nothing else
    /// when the schema is current (it compares the database's tables with the client crate's
    /// migrations first), so it runs on every reconcile and also repairs dropped tables.
    async fn ensure_schema(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
    ) -> Result<SchemaOutcome, ProvisionError>;

    /// The leader and the member count of `group`. Read-only.
    async fn group_state(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
        group: &str,
    ) -> Result<GroupState, ProvisionError>;

    /// Deletes every row of `group`; succeeds when the tables do not exist.
    async fn delete_group_rows(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
        group: &str,
    ) -> Result<(), ProvisionError>;

    /// The groups that have rows in `tables` (empty when the tables do not exist), or `None`
    /// when this provisioner cannot list them (then no table is ever dropped). Read-only.
    async fn groups_in_tables(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
    ) -> Result<Option<BTreeSet<String>>, ProvisionError>;

    /// Drops `tables`; succeeds when they do not exist.
    async fn drop_schema(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
    ) -> Result<(), ProvisionError>;
}
