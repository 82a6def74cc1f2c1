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
//! # Emulator
//!
//! [`SpannerOptions::emulator_host`] points one store at one emulator without touching the
//! process-global `SPANNER_EMULATOR_HOST`, so one test process can talk to several emulators.
//! The emulator (1.5.28) runs one read-write transaction at a time per session, and the crate
//! uses one multiplexed session per client, so against an emulator a `SpannerStore` runs its
//! read-write transactions one after another (real Spanner runs them concurrently).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptions;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_spanner::channel_pool::StaticChannelPoolConfig;
use google_cloud_spanner::client::{DatabaseAdmin, DatabaseClient, Spanner, SpannerBuilderExt};
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::result::Row;
use google_cloud_spanner::retry_policy::SpannerRetryPolicy;
use google_cloud_spanner::statement::{Statement, StatementBuilder};
use google_cloud_spanner::transaction::{ReadWriteTransaction, TimestampBound};

use super::lease::{
    self, AcquireDecision, AcquireOutcome, ObservedLock, ReleaseOutcome, RenewOutcome,
};
use super::schema::TableNames;
use super::{LockKey, LockState, MemberHeartbeat, MemberRecord, Store, StoreError, StoreResult};
use crate::config::DatabasePath;

/// The variable the crate reads to find an emulator's gRPC endpoint (`host:port`).
pub const ENV_EMULATOR_HOST: &str = "SPANNER_EMULATOR_HOST";

/// The variable hedge reads for the emulator's REST admin endpoint (`http://host:port`, the
/// gateway's `--http_port`) when `SPANNER_EMULATOR_HOST` is set and the gRPC port is not the
/// default 9010 (whose REST port 9020 the crate derives by itself).
pub const ENV_EMULATOR_REST: &str = "HEDGE_SPANNER_EMULATOR_REST";

/// The value that makes Spanner store a mutation's commit timestamp in a column declared with
/// `allow_commit_timestamp=true` (the official crate has no typed sentinel).
pub const COMMIT_TIMESTAMP: &str = "spanner.commit_timestamp()";

/// The share of a deadline given to the crate's own retry limits. The crate does not always
/// stop at its limit (a query stream retries a refused connection past it), so hedge enforces
/// the full deadline itself; the crate, stopping a little earlier when it does, reports the
/// more telling error (a refused connection, say) instead of a bare timeout.
fn inner_deadline(deadline: Duration) -> Duration {
    deadline.mul_f64(0.9)
}

/// How to reach Spanner.
///
/// The default uses what the environment says, as the official crate does:
/// `SPANNER_EMULATOR_HOST` (with anonymous credentials) when it is set, otherwise
/// `spanner.googleapis.com` with Application Default Credentials (a service-account key in
/// `GOOGLE_APPLICATION_CREDENTIALS`, GKE Workload Identity through the metadata server, or
/// `gcloud auth application-default login`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpannerOptions {
    /// An emulator's gRPC endpoint (`host:port`, e.g. the gateway's `--grpc_port`), used with
    /// anonymous credentials. Overrides `SPANNER_EMULATOR_HOST` for this store only.
    pub emulator_host: Option<String>,
    /// The emulator's REST admin endpoint (`http://host:port`, the gateway's `--http_port`),
    /// used for DDL by [`ensure_schema`](super::schema::ensure_schema). When unset:
    /// `HEDGE_SPANNER_EMULATOR_REST`, else the crate's default (gRPC port 9010 → 9020).
    pub emulator_rest_endpoint: Option<String>,
    /// How long connecting (building the client and creating its session) may take before it
    /// fails with [`StoreError::Unavailable`]. Default 10 s.
    pub connect_timeout: Duration,
    /// How long one operation may take, its Aborted retries included. Default 10 s.
    pub operation_timeout: Duration,
    /// How long one schema change (a DDL batch, which real Spanner may take minutes to apply)
    /// may take. Default 10 minutes.
    pub schema_timeout: Duration,
    /// Export the crate's built-in client metrics to Cloud Monitoring (needs the
    /// `monitoring.timeSeries.create` permission). Default `false`; never on for emulators.
    pub export_builtin_metrics: bool,
}

impl Default for SpannerOptions {
    fn default() -> Self {
        Self {
            emulator_host: None,
            emulator_rest_endpoint: None,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            schema_timeout: Duration::from_secs(600),
            export_builtin_metrics: false,
        }
    }
}

impl SpannerOptions {
    /// Options for the emulator whose gateway listens on `grpc_host` (`host:port`) and
    /// `rest_endpoint` (`http://host:port`).
    pub fn emulator(grpc_host: impl Into<String>, rest_endpoint: impl Into<String>) -> Self {
        Self {
            emulator_host: Some(grpc_host.into()),
            emulator_rest_endpoint: Some(rest_endpoint.into()),
            ..Self::default()
        }
    }

    /// Whether these options (or the environment) point at an emulator.
    pub fn targets_emulator(&self) -> bool {
        self.emulator_host.is_some() || env_emulator_host().is_some()
    }

    /// A sentence on what to check when Spanner cannot be reached.
    pub(crate) fn unreachable_hint(&self) -> String {
        if let Some(host) = &self.emulator_host {
            return format!("is the Cloud Spanner emulator running with its gRPC port at {host}?");
        }
        if let Some(host) = env_emulator_host() {
            return format!(
                "is {ENV_EMULATOR_HOST}={host} right, and is the Cloud Spanner emulator running there?"
            );
        }
        "are Application Default Credentials present (GOOGLE_APPLICATION_CREDENTIALS, GKE \
         Workload Identity, or `gcloud auth application-default login`) with Spanner access, \
         and can this host reach spanner.googleapis.com? (For the emulator, set \
         SPANNER_EMULATOR_HOST.)"
            .to_owned()
    }

    fn emulator_endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| {
            if h.contains("://") {
                h.clone()
            } else {
                format!("http://{h}")
            }
        })
    }

    pub(crate) fn rest_endpoint(&self) -> Option<String> {
        if let Some(rest) = &self.emulator_rest_endpoint {
            return Some(rest.clone());
        }
        if self.emulator_host.is_some() || env_emulator_host().is_some() {
            return std::env::var(ENV_EMULATOR_REST)
                .ok()
                .filter(|v| !v.is_empty());
        }
        None
    }
}

fn env_emulator_host() -> Option<String> {
    std::env::var(ENV_EMULATOR_HOST)
        .ok()
        .filter(|v| !v.is_empty())
}

/// A connected Spanner client and what it needs to report errors; shared by the store and the
/// schema provisioning.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) spanner: Spanner,
    pub(crate) client: DatabaseClient,
    pub(crate) database: String,
    pub(crate) options: SpannerOptions,
}

impl Connection {
    /// Builds the client and creates its session (which fails if the database is missing).
    pub(crate) async fn open(db: &DatabasePath, options: &SpannerOptions) -> StoreResult<Self> {
        let database = checked_path(db)?;
        let deadline = options.connect_timeout;
        let attempt = async {
            let spanner = build_spanner(options).await?;
            let mut request = RequestOptions::default();
            request.set_attempt_timeout(inner_deadline(deadline));
            request.set_retry_policy(
                SpannerRetryPolicy::new().with_time_limit(inner_deadline(deadline)),
            );
            let client = spanner
                .database_client(database.clone())
                .with_request_options(request)
                .build()
                .await
                .map_err(|e| {
                    map_error(
                        &ErrorContext::new(&database, options, None),
                        "connecting",
                        e,
                    )
                })?;
            Ok::<_, StoreError>((spanner, client))
        };
        // The crate retries transport errors of idempotent calls; the time limit above bounds
        // that, and this outer limit bounds everything else (DNS, TLS, credentials).
        let (spanner, client) = tokio::time::timeout(deadline, attempt)
            .await
            .map_err(|_| StoreError::Unavailable {
                message: format!(
                    "connecting to {database} did not finish within {deadline:?}: {}",
                    options.unreachable_hint()
                ),
                source: None,
            })??;
        Ok(Self {
            spanner,
            client,
            database,
            options: options.clone(),
        })
    }

    /// The database admin client (REST), pointed at the emulator's REST port when needed.
    pub(crate) async fn admin(&self) -> StoreResult<DatabaseAdmin> {
        let mut builder = self.spanner.database_admin_builder();
        if let Some(rest) = self.options.rest_endpoint() {
            builder = builder.with_endpoint(rest);
        }
        builder.build().await.map_err(|e| StoreError::Unavailable {
            message: format!(
                "could not build the Spanner database admin client: {e}: {}",
                self.options.unreachable_hint()
            ),
            source: Some(Box::new(e)),
        })
    }

    /// Runs one strong single-use query, bounded by the operation timeout, and converts each
    /// row with `convert`.
    pub(crate) async fn query<T>(
        &self,
        ctx: &ErrorContext<'_>,
        op: &str,
        statement: StatementBuilder,
        mut convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let timeout = self.options.operation_timeout;
        let statement = statement
            .with_attempt_timeout(inner_deadline(timeout))
            .with_retry_policy(SpannerRetryPolicy::new().with_time_limit(inner_deadline(timeout)))
            .build();
        let run = async {
            let mut rows = self
                .client
                .single_use()
                .set_timestamp_bound(TimestampBound::strong())
                .build()
                .execute_query(statement)
                .await
                .map_err(|e| map_error(ctx, op, e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                let row = row.map_err(|e| map_error(ctx, op, e))?;
                out.push(convert(&row)?);
            }
            Ok(out)
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)))
    }

    pub(crate) fn context<'a>(&'a self, table: Option<&'a str>) -> ErrorContext<'a> {
        ErrorContext::new(&self.database, &self.options, table)
    }
}

async fn build_spanner(options: &SpannerOptions) -> StoreResult<Spanner> {
    let mut builder = Spanner::builder()
        .with_export_builtin_metrics_to_cloud_monitoring(options.export_builtin_metrics);
    if let Some(endpoint) = options.emulator_endpoint() {
        // A plain-text endpoint gets anonymous credentials from the crate; an emulator needs a
        // single channel (the crate picks that itself only for SPANNER_EMULATOR_HOST).
        builder = builder
            .with_endpoint(endpoint)
            .with_channel_pool(StaticChannelPoolConfig::new(1))
            .with_export_builtin_metrics_to_cloud_monitoring(false);
    }
    builder.build().await.map_err(|e| StoreError::Unavailable {
        message: format!(
            "could not build the Spanner client: {e}: {}",
            options.unreachable_hint()
        ),
        source: Some(Box::new(e)),
    })
}

/// The path as a string, after checking that it round-trips through the parser (the fields of
/// a `DatabasePath` are public, so a hand-built one may hold anything).
fn checked_path(db: &DatabasePath) -> StoreResult<String> {
    let text = db.to_string();
    match text.parse::<DatabasePath>() {
        Ok(parsed) if &parsed == db => Ok(text),
        _ => Err(StoreError::InvalidDatabase(format!(
            "malformed Spanner database path {text:?}: expected \
             projects/<project>/instances/<instance>/databases/<database>"
        ))),
    }
}

/// What an error message needs to say where it happened.
pub(crate) struct ErrorContext<'a> {
    database: &'a str,
    options: &'a SpannerOptions,
    /// The table the operation reads first, for a "Table not found" that names none of ours.
    table: Option<&'a str>,
    /// Every table of the set, to report the configured spelling of a missing one.
    tables: Option<&'a TableNames>,
}

impl<'a> ErrorContext<'a> {
    pub(crate) fn new(
        database: &'a str,
        options: &'a SpannerOptions,
        table: Option<&'a str>,
    ) -> Self {
        Self {
            database,
            options,
            table,
            tables: None,
        }
    }

    pub(crate) fn with_tables(mut self, tables: &'a TableNames) -> Self {
        self.tables = Some(tables);
        self
    }
}

/// Maps a crate error to a [`StoreError`] whose message says what to do.
pub(crate) fn map_error(
    ctx: &ErrorContext<'_>,
    op: &str,
    err: google_cloud_spanner::Error,
) -> StoreError {
    let hint = || ctx.options.unreachable_hint();
    if let Some(status) = err.status() {
        let message = status.message.clone();
        if let Some(table) = missing_table(&message, ctx) {
            return StoreError::MissingTable { table };
        }
        if message.contains("Database not found") || message.contains("Instance not found") {
            return StoreError::InvalidDatabase(format!(
                "{} does not exist ({message}): create it, or fix the database path \
                 (HEDGE_SPANNER_DATABASE / the HedgeGroup's spec)",
                ctx.database
            ));
        }
        if message.contains("Column not found") || message.contains("Unrecognized name") {
            return StoreError::Backend {
                message: format!(
                    "{op}: the tables in {} look older than this version of hedge \
                     ({message}): run hedge::store::schema::ensure_schema (the operator does)",
                    ctx.database
                ),
                source: Some(Box::new(err)),
            };
        }
        return match status.code {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                StoreError::Unavailable {
                    message: format!("{op} on {}: {message}: {}", ctx.database, hint()),
                    source: Some(Box::new(err)),
                }
            }
            Code::PermissionDenied | Code::Unauthenticated => StoreError::Unavailable {
                message: format!(
                    "{op} on {}: access denied ({message}): check the credentials and that \
                     they may use the database (roles/spanner.databaseUser)",
                    ctx.database
                ),
                source: Some(Box::new(err)),
            },
            _ => StoreError::Backend {
                message: format!("{op} on {}: {:?}: {message}", ctx.database, status.code),
                source: Some(Box::new(err)),
            },
        };
    }
    if err.is_timeout()
        || err.is_exhausted()
        || err.is_transport()
        || err.is_io()
        || err.is_connect()
        || err.is_authentication()
    {
        return StoreError::Unavailable {
            message: format!("{op} on {}: {err}: {}", ctx.database, hint()),
            source: Some(Box::new(err)),
        };
    }
    StoreError::Backend {
        message: format!("{op} on {}: {err}", ctx.database),
        source: Some(Box::new(err)),
    }
}

/// The table a "Table not found: NAME" message names, spelled as configured when it is one of
/// ours.
fn missing_table(message: &str, ctx: &ErrorContext<'_>) -> Option<String> {
    const MARKER: &str = "Table not found: ";
    let start = message.find(MARKER)? + MARKER.len();
    let named: String = message[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if let Some(tables) = ctx.tables {
        for ours in [&tables.locks, &tables.members, &tables.schema] {
            if ours.eq_ignore_ascii_case(&named) {
                return Some(ours.clone());
            }
        }
    }
    if named.is_empty() {
        return ctx.table.map(str::to_owned);
    }
    Some(named)
}

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
}

impl SpannerStore {
    /// Connects to `db`, whose tables are named `tables`.
    ///
    /// Errors: [`StoreError::InvalidDatabase`] for a malformed path, invalid table names, or a
    /// database (or instance) that does not exist; [`StoreError::Unavailable`] when Spanner
    /// cannot be reached within [`SpannerOptions::connect_timeout`] or credentials are missing.
    /// Missing tables are reported by the first operation that needs them
    /// ([`StoreError::MissingTable`]).
    pub async fn connect(
        db: &DatabasePath,
        tables: TableNames,
        options: &SpannerOptions,
    ) -> StoreResult<SpannerStore> {
        tables
            .validate()
            .map_err(|e| StoreError::InvalidDatabase(e.to_string()))?;
        let conn = Connection::open(db, options).await?;
        let rw_gate = options
            .targets_emulator()
            .then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(SpannerStore {
            conn,
            tables,
            rw_gate,
        })
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

    /// Deletes every lock row and member row of `group` (exact match on the group column, never
    /// a prefix), in one transaction: the operator's deletion policy for a removed group.
    /// Returns how many rows were deleted.
    pub async fn delete_group(&self, group: &str) -> StoreResult<u64> {
        let locks = self.tables.locks.clone();
        let members = self.tables.members.clone();
        let group = group.to_owned();
        let deleted = self
            .read_write(
                "deleting a group",
                &self.tables.locks,
                move |tx: ReadWriteTransaction| {
                    let (locks, members, group) = (locks.clone(), members.clone(), group.clone());
                    async move {
                        let mut total = 0i64;
                        for table in [&locks, &members] {
                            total += tx
                                .execute_update(
                                    Statement::builder(format!(
                                        "DELETE FROM {table} WHERE group_name = @g"
                                    ))
                                    .add_param("g", group.as_str())
                                    .build(),
                                )
                                .await?;
                        }
                        Ok(Ok(total))
                    }
                },
            )
            .await?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Brings this store's tables to the newest schema version on the store's own connection;
    /// otherwise exactly [`super::schema::ensure_schema`]: it applies only what is missing and
    /// writes nothing when the schema is current.
    pub async fn ensure_schema(
        &self,
    ) -> Result<super::schema::SchemaReport, super::schema::SchemaError> {
        super::schema::ensure_on(&self.conn, &self.tables, super::schema::SCHEMA_VERSION).await
    }

    /// The groups that have rows (live or not) in this table set's lock or member table, so
    /// that the operator can tell whether dropping the tables would hurt another group.
    pub async fn groups(&self) -> StoreResult<std::collections::BTreeSet<String>> {
        let mut groups = std::collections::BTreeSet::new();
        for table in [&self.tables.locks, &self.tables.members] {
            let statement = Statement::builder(format!("SELECT DISTINCT group_name FROM {table}"));
            let found = self
                .query("listing groups", table, statement, |row| {
                    column::<String>(row, table, "group_name")
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
            Ok(Ok(result)) => result.into_inner(),
        }
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

/// The columns of a lock row, with its age and the transaction's time, both on Spanner's clock.
fn lock_query(locks: &str) -> String {
    format!(
        "SELECT holder, token, lease_us, \
         TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) AS age_us, granted_at, \
         UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us \
         FROM {locks} WHERE group_name = @g AND lock_name = @n"
    )
}

fn corrupt(table: &str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: table.to_owned(),
        message: message.into(),
    }
}

fn column<T: google_cloud_spanner::value::FromValue>(
    row: &Row,
    table: &str,
    name: &str,
) -> StoreResult<T> {
    row.get::<T>(name)
        .map_err(|e| corrupt(table, format!("column {name}: {e}")))
}

fn non_negative(table: &str, name: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(table, format!("{name} is negative ({value})")))
}

/// A lock row as observed, and the statement's time in microseconds since the epoch.
fn observe(row: &Row, table: &str) -> StoreResult<(ObservedLock, u64)> {
    let holder: Option<String> = column(row, table, "holder")?;
    let token = non_negative(table, "token", column(row, table, "token")?)?;
    let lease_us = non_negative(table, "lease_us", column(row, table, "lease_us")?)?;
    // A negative age (the statement's time before the row's commit) counts as zero: alive.
    let age_us = column::<i64>(row, table, "age_us")?.max(0).unsigned_abs();
    let granted_at: SystemTime = column(row, table, "granted_at")?;
    let now_us = non_negative(table, "now_us", column(row, table, "now_us")?)?;
    Ok((
        ObservedLock {
            holder,
            token,
            lease: Duration::from_micros(lease_us),
            age: Duration::from_micros(age_us),
            granted_at,
        },
        now_us,
    ))
}

/// Reads the lock row inside `tx`. With `need_now`, also reads the transaction's time when
/// the row is missing (an acquire needs it for the token floor).
async fn read_lock(
    tx: &ReadWriteTransaction,
    locks: &str,
    key: &LockKey,
    need_now: bool,
) -> google_cloud_spanner::Result<StoreResult<(Option<ObservedLock>, u64)>> {
    let mut rows = tx
        .execute_query(
            Statement::builder(lock_query(locks))
                .add_param("g", key.group.as_str())
                .add_param("n", key.name.as_str())
                .build(),
        )
        .await?;
    if let Some(row) = rows.next().await.transpose()? {
        return Ok(observe(&row, locks).map(|(o, now)| (Some(o), now)));
    }
    if !need_now {
        return Ok(Ok((None, 0)));
    }
    let mut rows = tx
        .execute_query(Statement::builder(
            "SELECT UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us",
        ))
        .await?;
    let Some(row) = rows.next().await.transpose()? else {
        return Ok(Err(corrupt(
            locks,
            "SELECT CURRENT_TIMESTAMP() returned no row",
        )));
    };
    Ok(column::<i64>(&row, locks, "now_us")
        .and_then(|now| non_negative(locks, "now_us", now))
        .map(|now| (None, now)))
}

fn micros(what: &str, d: Duration) -> StoreResult<i64> {
    i64::try_from(d.as_micros()).map_err(|_| StoreError::Backend {
        message: format!("{what} {d:?} is too long to store"),
        source: None,
    })
}

#[async_trait]
impl Store for SpannerStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &str,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        let lease_us = micros("the lease", lease)?;
        let locks = self.tables.locks.clone();
        let key = key.clone();
        let candidate = candidate.to_owned();
        self.read_write(
            "acquiring a lock",
            &self.tables.locks,
            move |tx: ReadWriteTransaction| {
                let (locks, key, candidate) = (locks.clone(), key.clone(), candidate.clone());
                async move {
                    let (observed, now_us) = match read_lock(&tx, &locks, &key, true).await? {
                        Ok(seen) => seen,
                        Err(e) => return Ok(Err(e)),
                    };
                    let token = match lease::decide_acquire(observed.as_ref(), now_us) {
                        AcquireDecision::Held(holder) => {
                            return Ok(Ok(AcquireOutcome::Held(holder)));
                        }
                        AcquireDecision::Grant { token } => token,
                    };
                    let Ok(stored_token) = i64::try_from(token) else {
                        return Ok(Err(corrupt(
                            &locks,
                            format!("the next token {token} overflows INT64"),
                        )));
                    };
                    tx.buffer([Mutation::new_insert_or_update_builder(locks.as_str())
                        .set("group_name")
                        .to(key.group.as_str())
                        .set("lock_name")
                        .to(key.name.as_str())
                        .set("holder")
                        .to(candidate.as_str())
                        .set("token")
                        .to(stored_token)
                        .set("lease_us")
                        .to(lease_us)
                        .set("heartbeat")
                        .to(COMMIT_TIMESTAMP)
                        .set("granted_at")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(Ok(AcquireOutcome::Granted { token }))
                }
            },
        )
        .await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        let lease_us = micros("the lease", lease)?;
        let locks = self.tables.locks.clone();
        let key = key.clone();
        let holder = holder.to_owned();
        self.read_write(
            "renewing a lock",
            &self.tables.locks,
            move |tx: ReadWriteTransaction| {
                let (locks, key, holder) = (locks.clone(), key.clone(), holder.clone());
                async move {
                    let observed = match read_lock(&tx, &locks, &key, false).await? {
                        Ok((observed, _)) => observed,
                        Err(e) => return Ok(Err(e)),
                    };
                    if let Err(cause) = lease::decide_renew(observed.as_ref(), &holder, token) {
                        return Ok(Ok(RenewOutcome::Lost(cause)));
                    }
                    tx.buffer([Mutation::new_update_builder(locks.as_str())
                        .set("group_name")
                        .to(key.group.as_str())
                        .set("lock_name")
                        .to(key.name.as_str())
                        .set("lease_us")
                        .to(lease_us)
                        .set("heartbeat")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(Ok(RenewOutcome::Renewed))
                }
            },
        )
        .await
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        let locks = self.tables.locks.clone();
        let key = key.clone();
        let holder = holder.to_owned();
        self.read_write(
            "releasing a lock",
            &self.tables.locks,
            move |tx: ReadWriteTransaction| {
                let (locks, key, holder) = (locks.clone(), key.clone(), holder.clone());
                async move {
                    let observed = match read_lock(&tx, &locks, &key, false).await? {
                        Ok((observed, _)) => observed,
                        Err(e) => return Ok(Err(e)),
                    };
                    if !lease::decide_release(observed.as_ref(), &holder, token) {
                        return Ok(Ok(ReleaseOutcome::NotHolder));
                    }
                    tx.buffer([Mutation::new_update_builder(locks.as_str())
                        .set("group_name")
                        .to(key.group.as_str())
                        .set("lock_name")
                        .to(key.name.as_str())
                        .set("holder")
                        .to(None::<String>)
                        .set("heartbeat")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(Ok(ReleaseOutcome::Released))
                }
            },
        )
        .await
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        let locks = &self.tables.locks;
        let statement = Statement::builder(lock_query(locks))
            .add_param("g", key.group.as_str())
            .add_param("n", key.name.as_str());
        let rows = self
            .query("reading a lock", locks, statement, |row| {
                observe(row, locks)
            })
            .await?;
        Ok(rows.into_iter().next().map(|(observed, _)| LockState {
            holder: observed.live_holder(),
            last_token: observed.token,
        }))
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        let ttl_us = micros("the member TTL", member.ttl)?;
        let members = self.tables.members.clone();
        let group = group.to_owned();
        let member = member.clone();
        self.read_write(
            "recording a member",
            &self.tables.members,
            move |tx: ReadWriteTransaction| {
                let (members, group, member) = (members.clone(), group.clone(), member.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT ttl_us, \
                             TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) AS age_us \
                             FROM {members} WHERE group_name = @g AND member_id = @m"
                            ))
                            .add_param("g", group.as_str())
                            .add_param("m", member.id.as_str())
                            .build(),
                        )
                        .await?;
                    let alive = match rows.next().await.transpose()? {
                        None => false,
                        Some(row) => {
                            let ttl: i64 = match column(&row, &members, "ttl_us") {
                                Ok(v) => v,
                                Err(e) => return Ok(Err(e)),
                            };
                            let age: i64 = match column(&row, &members, "age_us") {
                                Ok(v) => v,
                                Err(e) => return Ok(Err(e)),
                            };
                            age.max(0) < ttl
                        }
                    };
                    let builder = if alive {
                        // Keep joined_at: the member never left.
                        Mutation::new_update_builder(members.as_str())
                    } else {
                        Mutation::new_insert_or_update_builder(members.as_str())
                            .set("joined_at")
                            .to(COMMIT_TIMESTAMP)
                    };
                    tx.buffer([builder
                        .set("group_name")
                        .to(group.as_str())
                        .set("member_id")
                        .to(member.id.as_str())
                        .set("address")
                        .to(member.address.clone())
                        .set("ttl_us")
                        .to(ttl_us)
                        .set("heartbeat")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(Ok(()))
                }
            },
        )
        .await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        let members = self.tables.members.clone();
        let group = group.to_owned();
        let id = id.to_owned();
        self.read_write(
            "removing a member",
            &self.tables.members,
            move |tx: ReadWriteTransaction| {
                let (members, group, id) = (members.clone(), group.clone(), id.clone());
                async move {
                    tx.execute_update(
                        Statement::builder(format!(
                            "DELETE FROM {members} WHERE group_name = @g AND member_id = @m"
                        ))
                        .add_param("g", group.as_str())
                        .add_param("m", id.as_str())
                        .build(),
                    )
                    .await?;
                    Ok(Ok(()))
                }
            },
        )
        .await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        let members = &self.tables.members;
        let statement = Statement::builder(format!(
            "SELECT member_id, address, joined_at FROM {members} \
             WHERE group_name = @g \
             AND TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) < ttl_us \
             ORDER BY member_id"
        ))
        .add_param("g", group);
        self.query("listing members", members, statement, |row| {
            Ok(MemberRecord {
                id: column(row, members, "member_id")?,
                address: column(row, members, "address")?,
                joined_at: column(row, members, "joined_at")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_built_paths_are_checked() {
        let good: DatabasePath = "projects/p/instances/i/databases/d".parse().unwrap();
        assert_eq!(
            checked_path(&good).unwrap(),
            "projects/p/instances/i/databases/d"
        );
        let bad = DatabasePath {
            project: "p/x".into(),
            instance: "i".into(),
            database: "d".into(),
        };
        assert!(matches!(
            checked_path(&bad),
            Err(StoreError::InvalidDatabase(_))
        ));
    }

    #[test]
    fn missing_tables_are_named_as_configured() {
        let options = SpannerOptions::default();
        let tables = TableNames::default();
        let ctx = ErrorContext::new("db", &options, Some("hedge_locks")).with_tables(&tables);
        assert_eq!(
            missing_table("Table not found: HEDGE_MEMBERS [at 1:2]", &ctx).as_deref(),
            Some("hedge_members")
        );
        assert_eq!(
            missing_table("Table not found: other", &ctx).as_deref(),
            Some("other")
        );
        assert_eq!(missing_table("Column not found", &ctx), None);
    }

    #[test]
    fn emulator_options_are_explicit() {
        let o = SpannerOptions::emulator("127.0.0.1:1234", "http://127.0.0.1:1235");
        assert!(o.targets_emulator());
        assert_eq!(
            o.emulator_endpoint().as_deref(),
            Some("http://127.0.0.1:1234")
        );
        assert_eq!(o.rest_endpoint().as_deref(), Some("http://127.0.0.1:1235"));
        assert!(o.unreachable_hint().contains("127.0.0.1:1234"));
    }
}
