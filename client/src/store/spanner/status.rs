//! The operator's one-call read of a group: its leader, the live member count and the schema
//! version recorded for the table set, in **one** strong query (scalar subqueries over the three
//! tables, one read timestamp, one clock for every expiry), so that refreshing the status of an
//! unchanged group costs one Spanner call. A missing table fails with
//! [`StoreError::MissingTable`]: the operator then provisions the schema.

use std::time::{Duration, SystemTime};

use google_cloud_spanner::result::Row;
use google_cloud_spanner::statement::Statement;

use super::SpannerStore;
use super::rows::{column, non_negative};
use crate::store::lease::ObservedLock;
use crate::store::{LockHolder, LockKey, StoreError, StoreResult};

/// A group as one strong read of its tables shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The leader lock's live holder, `None` when it is free, expired or was never granted.
    pub leader: Option<LockHolder>,
    /// The last fencing token granted for the leader lock, `None` when it was never granted.
    pub last_token: Option<u64>,
    /// The members whose heartbeat has not expired.
    pub live_members: u64,
    /// The schema version recorded for this table set, `None` when there is no record.
    pub schema_version: Option<i64>,
}

/// The statement: every column a scalar subquery, so the answer is one row even when the group
/// has no lock row and the table set no version record.
fn status_query(locks: &str, members: &str, schema: &str) -> String {
    let lock = |expr: &str| {
        format!("(SELECT {expr} FROM {locks} WHERE group_name = @g AND lock_name = @n)")
    };
    format!(
        "SELECT {holder} AS holder, {incarnation} AS holder_incarnation, {token} AS token, \
         {lease} AS lease_us, {age} AS age_us, {granted} AS granted_at, \
         (SELECT COUNT(*) FROM {members} WHERE group_name = @g \
          AND TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) < ttl_us) AS members, \
         (SELECT version FROM {schema} WHERE table_set = @ts) AS schema_version",
        holder = lock("holder"),
        incarnation = lock("holder_incarnation"),
        token = lock("token"),
        lease = lock("lease_us"),
        age = lock("TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND)"),
        granted = lock("granted_at"),
    )
}

fn decode(row: &Row, table: &str, key: &LockKey) -> StoreResult<GroupStatus> {
    let members: i64 = column(row, table, key, "members")?;
    let schema_version: Option<i64> = column(row, table, key, "schema_version")?;
    let token: Option<i64> = column(row, table, key, "token")?;
    let Some(token) = token else {
        return Ok(GroupStatus {
            leader: None,
            last_token: None,
            live_members: u64::try_from(members).unwrap_or(0),
            schema_version,
        });
    };
    let lease_us: i64 = column::<Option<i64>>(row, table, key, "lease_us")?.unwrap_or(0);
    let age_us: i64 = column::<Option<i64>>(row, table, key, "age_us")?.unwrap_or(0);
    let granted_at: Option<SystemTime> = column(row, table, key, "granted_at")?;
    let observed = ObservedLock {
        holder: column(row, table, key, "holder")?,
        holder_incarnation: column(row, table, key, "holder_incarnation")?,
        token: non_negative(table, key, "token", token)?,
        lease: Duration::from_micros(non_negative(table, key, "lease_us", lease_us)?),
        // A negative age (the statement's time before the row's commit) counts as zero: alive.
        age: Duration::from_micros(age_us.max(0).unsigned_abs()),
        granted_at: granted_at.unwrap_or(SystemTime::UNIX_EPOCH),
    };
    Ok(GroupStatus {
        leader: observed.live_holder(),
        last_token: Some(observed.token),
        live_members: u64::try_from(members).unwrap_or(0),
        schema_version,
    })
}

impl SpannerStore {
    /// The leader of `group` (its [`LockKey::LEADER`] lock), its live member count and the
    /// schema version of this table set, in one strong single-use query. Errors:
    /// [`StoreError::MissingTable`] when a table of the set does not exist, and the errors of
    /// any query.
    pub async fn group_status(&self, group: &str) -> StoreResult<GroupStatus> {
        let tables = self.tables();
        let key = LockKey::new(group, LockKey::LEADER);
        let statement =
            Statement::builder(status_query(&tables.locks, &tables.members, &tables.schema))
                .add_param("g", group)
                .add_param("n", LockKey::LEADER)
                .add_param("ts", tables.locks.as_str());
        let locks = tables.locks.clone();
        let rows = self
            .query("reading the group's status", &locks, statement, |row| {
                decode(row, &locks, &key)
            })
            .await?;
        rows.into_iter().next().ok_or_else(|| StoreError::Corrupt {
            table: locks.clone(),
            key: key.to_string(),
            message: "the status query returned no row".into(),
        })
    }
}
