//! The Cloud Spanner backend, on Google's official `google-cloud-spanner` crate.
//!
//! Every [`Store`] operation is **one** read-write transaction (acquire, renew, release,
//! heartbeat, remove) or **one** strong single-use read (lock state, member list). Every value
//! is a bound parameter; the table names, validated by [`TableNames::validate`], are the only
//! text ever formatted into SQL.
//!
//! # Time
//!
//! Expiry is judged on Spanner's clock only. Writes stamp `heartbeat` (and `granted_at`,
//! `joined_at`) with the commit timestamp; the reading transaction measures the age of a row
//! as `TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND)` in the same statement that
//! reads it, and the next fencing token's clock floor is `UNIX_MICROS(CURRENT_TIMESTAMP())`.
//! A client's clock never enters the judgement.
//!
//! On real Spanner, `CURRENT_TIMESTAMP()` in a read-write transaction is taken after the
//! statement's locks, so it is never before the commit timestamp of a row the statement can
//! see. On the Cloud Spanner emulator (1.5.28), checked by the test
//! `current_timestamp_in_a_transaction_follows_earlier_commits` (150 back-to-back
//! transactions that each read `CURRENT_TIMESTAMP()` and the previous row's age, then write
//! with the commit timestamp): `CURRENT_TIMESTAMP()` was always at or after the previous
//! commit's timestamp (by 5 ms or more, one round trip), the age was never negative, and it
//! was always at or before the reading transaction's own commit timestamp. A negative age could
//! only come from a clock step on the server; it is clamped to zero, so such a lock counts as
//! alive (spindle's W4), never as expired.
//!
//! # Retries and deadlines
//!
//! The crate retries Aborted transactions itself (with the server's retry delay and lock
//! priority). Each operation is bounded by [`SpannerOptions::operation_timeout`] and connecting
//! by [`SpannerOptions::connect_timeout`]. An endpoint that refuses connections fails `connect`
//! with [`StoreError::Unavailable`] and a hint; an operation against a server that went away
//! fails with `Unavailable` or, when the crate is still retrying at the deadline,
//! [`StoreError::Timeout`]; never a hang. An operation cut off by its deadline may still have
//! committed (as after any lost reply): callers treat its outcome as unknown.
//!
//! # Files
//!
//! * `options.rs`: how to reach Spanner ([`SpannerOptions`]); `connection.rs`: the client, deadlines, queries;
//!   `errors.rs`: Spanner's errors classified by what retrying can fix;
//! * `locks.rs`: acquire, renew, release (one transaction each, written once);
//!   `members.rs`: the member rows; `log.rs`: the log's puts, reads, listings and trims;
//!   `semaphores.rs`: definitions and permits; `rows.rs`: column decoding; `status.rs`: the
//!   operator's one-call read of a group.
//!
//! # Emulator
//!
//! [`SpannerOptions::emulator_host`] points one store at one emulator without touching the
//! process-global `SPANNER_EMULATOR_HOST`, so one test process can talk to several emulators.
//! The emulator (1.5.28) runs one read-write transaction at a time per session, and the crate
//! uses one multiplexed session per client, so against an emulator a `SpannerStore` runs its
//! read-write transactions one after another (real Spanner runs them concurrently).

mod connection;
mod errors;
mod locks;
mod log;
mod members;
mod options;
mod rows;
mod semaphores;
mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_spanner::result::Row;
use google_cloud_spanner::statement::{Statement, StatementBuilder};
use google_cloud_spanner::transaction::ReadWriteTransaction;

pub(crate) use connection::Connection;
use connection::inner_deadline;
pub use errors::MEMBER_ROLE;
pub(crate) use errors::{ErrorContext, map_error};
pub use options::{ENV_EMULATOR_HOST, ENV_EMULATOR_REST, SpannerOptions};
use rows::column;
pub use status::GroupStatus;

use super::lease::{AcquireOutcome, ReleaseOutcome, RenewOutcome};
use super::{
    Candidate, DefineOutcome, LockKey, LockState, LogEntry, LogQuery, MemberHeartbeat,
    MemberRecord, PermitOutcome, PermitRenewal, PermitRequest, PutOutcome, PutRequest, Retention,
    SemaphoreKey, SemaphoreState, Store, StoreError, StoreResult,
};
use crate::names::{DatabasePath, TableNames};

/// The value that makes Spanner store a mutation's commit timestamp in a column declared with
/// `allow_commit_timestamp=true` (the official crate has no typed sentinel).
pub const COMMIT_TIMESTAMP: &str = "spanner.commit_timestamp()";

/// The Cloud Spanner store. Cheap to clone: clones share the client and its session.
///
/// One `SpannerStore` holds one `DatabaseClient` (one multiplexed session). Real Spanner runs
/// many transactions on it at once; against the emulator, give each simulated member its own
/// store (as separate pods would have).
#[derive(Clone, Debug)]
pub struct SpannerStore {
    conn: Connection,
    tables: TableNames,
    /// Serialises read-write transactions against an emulator (see the module docs).
    rw_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// How many times a read-write transaction body ran: more than the transactions when the
    /// crate retried aborted ones.
    attempts: Arc<AtomicU64>,
}

impl SpannerStore {
    /// Connects to `db`, whose tables are named `tables`.
    ///
    /// Errors: [`StoreError::InvalidDatabase`] for a malformed path,
    /// [`StoreError::InvalidRequest`] for invalid table names, [`StoreError::DatabaseNotFound`]
    /// for a database (or instance) that does not exist; [`StoreError::Unavailable`] when
    /// Spanner cannot be reached within [`SpannerOptions::connect_timeout`], and
    /// [`StoreError::PermissionDenied`] when the credentials are refused.
    /// Missing tables are reported by the first operation that needs them
    /// ([`StoreError::MissingTable`]).
    pub async fn connect(
        db: &DatabasePath,
        tables: TableNames,
        options: &SpannerOptions,
    ) -> StoreResult<SpannerStore> {
        tables.validate().map_err(|e| StoreError::InvalidRequest {
            message: e.to_string(),
        })?;
        let conn = Connection::open(db, options).await?;
        let rw_gate = options
            .targets_emulator()
            .then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(SpannerStore {
            conn,
            tables,
            rw_gate,
            attempts: Arc::default(),
        })
    }

    /// How many times a read-write transaction's body has run on this store (and its clones):
    /// every attempt counts, so the excess over the operations is the number of aborted
    /// transactions the crate retried.
    pub fn transaction_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The database this store uses.
    pub fn database(&self) -> &str {
        &self.conn.database
    }

    /// The table names this store uses.
    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// Closes the store.
    ///
    /// `google-cloud-spanner` 0.34.8-preview offers no call that deletes a client's session: it
    /// uses one multiplexed session per client, which real Spanner cannot delete (it expires by
    /// itself); the emulator keeps it until the emulator stops. Closing drops the client and its
    /// channel; in-flight operations of clones finish first.
    pub async fn close(self) {
        drop(self);
    }

    /// Deletes every row of `group` from every table of the set that exists (exact match on
    /// the group column, never a prefix), in one transaction: the operator's deletion policy
    /// for a removed group. Returns how many rows were deleted.
    ///
    /// Each table's rows go in one range delete (one mutation, however many rows), so a group
    /// with a long log is deleted as quickly as an empty one; interleaved tables go before their
    /// parents. Tables missing from an older schema are skipped.
    pub async fn delete_group(&self, group: &str) -> StoreResult<u64> {
        let existing = self.existing_tables().await?;
        let t = &self.tables;
        let tables: Vec<String> = [
            &t.log,
            &t.log_keys,
            &t.permits,
            &t.semaphores,
            &t.members,
            &t.locks,
        ]
        .into_iter()
        .filter(|name| existing.contains(&name.to_ascii_lowercase()))
        .cloned()
        .collect();
        let group = group.to_owned();
        let deleted = self
            .read_write(
                "deleting a group",
                &self.tables.locks,
                move |tx: ReadWriteTransaction| {
                    let (tables, group) = (tables.clone(), group.clone());
                    async move {
                        let mut total = 0i64;
                        let prefix = || {
                            google_cloud_spanner::key::Key::new(vec![
                                google_cloud_spanner::value::Value::from(group.clone()),
                            ])
                        };
                        for table in &tables {
                            let mut rows = tx
                                .execute_query(
                                    Statement::builder(format!(
                                        "SELECT COUNT(*) AS n FROM {table} WHERE group_name = @g"
                                    ))
                                    .add_param("g", group.as_str())
                                    .build(),
                                )
                                .await?;
                            if let Some(row) = rows.next().await.transpose()? {
                                total += row.get::<i64>("n")?;
                            }
                            tx.buffer([google_cloud_spanner::mutation::Mutation::delete(
                                table.as_str(),
                                google_cloud_spanner::key::KeySet::builder()
                                    .add_range(google_cloud_spanner::key::KeyRange::closed_closed(
                                        prefix(),
                                        prefix(),
                                    ))
                                    .build(),
                            )])?;
                        }
                        Ok(Ok(total))
                    }
                },
            )
            .await?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// The tables of this set that exist in the database, lower-cased.
    async fn existing_tables(&self) -> StoreResult<std::collections::BTreeSet<String>> {
        let names: Vec<String> = self
            .tables
            .roles()
            .iter()
            .map(|(_, name)| name.to_ascii_lowercase())
            .collect();
        let statement = Statement::builder(
            "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES \
             WHERE TABLE_SCHEMA = '' AND LOWER(TABLE_NAME) IN UNNEST(@tables)",
        )
        .add_typed_param(
            "tables",
            names,
            google_cloud_spanner::types::array(google_cloud_spanner::types::string()),
        );
        let found = self
            .query(
                "reading INFORMATION_SCHEMA",
                "INFORMATION_SCHEMA.TABLES",
                statement,
                |row| column::<String>(row, "INFORMATION_SCHEMA.TABLES", "-", "TABLE_NAME"),
            )
            .await?;
        Ok(found.iter().map(|t| t.to_ascii_lowercase()).collect())
    }

    /// Brings this store's tables to the newest schema version on the store's own connection;
    /// otherwise exactly [`super::schema::ensure_schema`]: it applies only what is missing and
    /// writes nothing when the schema is current.
    pub async fn ensure_schema(
        &self,
    ) -> Result<super::schema::SchemaReport, super::schema::SchemaError> {
        super::schema::ensure_on(&self.conn, &self.tables, super::schema::SCHEMA_VERSION).await
    }

    /// The groups that have rows (live or not) in this table set's lock, member, log key or
    /// semaphore table, so that the operator can tell whether dropping the tables would hurt
    /// another group. Tables missing from an older schema are skipped.
    pub async fn groups(&self) -> StoreResult<std::collections::BTreeSet<String>> {
        let existing = self.existing_tables().await?;
        let mut groups = std::collections::BTreeSet::new();
        let t = &self.tables;
        for table in [&t.locks, &t.members, &t.log_keys, &t.semaphores]
            .into_iter()
            .filter(|name| existing.contains(&name.to_ascii_lowercase()))
        {
            let statement = Statement::builder(format!("SELECT DISTINCT group_name FROM {table}"));
            let found = self
                .query("listing groups", table, statement, |row| {
                    column::<String>(row, table, "(group list)", "group_name")
                })
                .await?;
            groups.extend(found);
        }
        Ok(groups)
    }

    /// Deletes the row of `key` behind the election's back, as a person (or a clean-up gone
    /// wrong) might: for recovery tests (spindle's W7). Returns whether a row was deleted.
    pub async fn delete_lock(&self, key: &LockKey) -> StoreResult<bool> {
        let locks = self.tables.locks.clone();
        let key = key.clone();
        let deleted = self
            .read_write(
                "deleting a lock row",
                &self.tables.locks,
                move |tx: ReadWriteTransaction| {
                    let (locks, key) = (locks.clone(), key.clone());
                    async move {
                        let n = tx
                            .execute_update(
                                Statement::builder(format!(
                                    "DELETE FROM {locks} WHERE group_name = @g AND lock_name = @n"
                                ))
                                .add_param("g", key.group.as_str())
                                .add_param("n", key.name.as_str())
                                .build(),
                            )
                            .await?;
                        Ok(Ok(n))
                    }
                },
            )
            .await?;
        Ok(deleted > 0)
    }

    fn context<'a>(&'a self, table: &'a str) -> ErrorContext<'a> {
        self.conn.context(Some(table)).with_tables(&self.tables)
    }

    /// Runs `work` as one read-write transaction, bounded by the operation timeout. `work`
    /// returns `Ok(Err(_))` for a decision error (corrupt data): nothing is buffered then.
    async fn read_write<T, F>(&self, op: &str, table: &str, work: F) -> StoreResult<T>
    where
        F: AsyncFnMut(ReadWriteTransaction) -> google_cloud_spanner::Result<StoreResult<T>>,
    {
        Ok(self.read_write_committed(op, table, work).await?.0)
    }

    /// [`Self::read_write`], also returning the commit timestamp (`None` if Spanner did not
    /// report one, which it does for every commit that wrote something).
    async fn read_write_committed<T, F>(
        &self,
        op: &str,
        table: &str,
        mut work: F,
    ) -> StoreResult<(T, Option<std::time::SystemTime>)>
    where
        F: AsyncFnMut(ReadWriteTransaction) -> google_cloud_spanner::Result<StoreResult<T>>,
    {
        let attempts = self.attempts.clone();
        let work = async move |tx: ReadWriteTransaction| {
            attempts.fetch_add(1, Ordering::Relaxed);
            work(tx).await
        };
        let timeout = self.conn.options.operation_timeout;
        let run = async {
            let _gate = match &self.rw_gate {
                Some(gate) => Some(gate.lock().await),
                None => None,
            };
            self.conn
                .client
                .read_write_transaction()
                .with_transaction_timeout(inner_deadline(timeout))
                .build()
                .run(work)
                .await
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(Err(e)) => Err(map_error(&self.context(table), op, e)),
            Ok(Ok(result)) => {
                let committed = result
                    .commit_timestamp()
                    .and_then(|ts| std::time::SystemTime::try_from(ts).ok());
                Ok((result.into_inner()?, committed))
            }
        }
    }

    /// Runs one strong single-use read by key and converts each row with `convert`.
    async fn read<T>(
        &self,
        op: &str,
        table: &str,
        request: google_cloud_spanner::read::ConfiguredReadRequestBuilder,
        convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        self.conn
            .read(&self.context(table), op, request, convert)
            .await
    }

    /// Runs one strong single-use query and converts each row with `convert`.
    async fn query<T>(
        &self,
        op: &str,
        table: &str,
        statement: StatementBuilder,
        convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        self.conn
            .query(&self.context(table), op, statement, convert)
            .await
    }
}

#[async_trait]
impl Store for SpannerStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.acquire_lock(key, candidate, lease).await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        self.renew_lock(key, holder, token, lease).await
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.release_lock(key, holder, token).await
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.read_lock_state(key).await
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        self.heartbeat(group, member).await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.remove(group, id).await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        self.live_members(group).await
    }

    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome> {
        self.put_entry(group, request).await
    }

    async fn read_log(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        self.read_entries(group, key, query).await
    }

    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        self.list_keys(group, prefix, start_after, limit).await
    }

    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64> {
        self.trim_entries(group, key, retention).await
    }

    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome> {
        self.create_semaphore(key, limit).await
    }

    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        self.read_semaphore_state(key).await
    }

    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        self.grant_permit(key, request).await
    }

    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        self.extend_permit(key, permit_id, token, lease).await
    }

    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        self.delete_permit(key, permit_id).await
    }
}
