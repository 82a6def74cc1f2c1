//! The connection to one database: the client, its deadlines, strong single-use queries and
//! the admin client for DDL.

use std::time::Duration;

use google_cloud_gax::options::RequestOptions;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_spanner::channel_pool::StaticChannelPoolConfig;
use google_cloud_spanner::client::{DatabaseAdmin, DatabaseClient, Spanner, SpannerBuilderExt};
use google_cloud_spanner::read::ConfiguredReadRequestBuilder;
use google_cloud_spanner::result::{ResultSet, Row};
use google_cloud_spanner::retry_policy::SpannerRetryPolicy;
use google_cloud_spanner::statement::StatementBuilder;
use google_cloud_spanner::transaction::{SingleUseReadOnlyTransaction, TimestampBound};

use super::errors::{ErrorContext, map_error};
use super::options::SpannerOptions;
use crate::names::DatabasePath;
use crate::store::{StoreError, StoreResult};

/// The share of a deadline given to the crate's own retry limits. The crate does not always
/// stop at its limit (a query stream retries a refused connection past it), so hedge enforces
/// the full deadline itself; the crate, stopping a little earlier when it does, reports the
/// more telling error (a refused connection, say) instead of a bare timeout.
pub(super) fn inner_deadline(deadline: Duration) -> Duration {
    deadline.mul_f64(0.9)
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
            source: Some(std::sync::Arc::new(e)),
        })
    }

    /// Runs one strong single-use query, bounded by the operation timeout, and converts each
    /// row with `convert`.
    pub(crate) async fn query<T>(
        &self,
        ctx: &ErrorContext<'_>,
        op: &str,
        statement: StatementBuilder,
        convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let timeout = self.options.operation_timeout;
        let statement = statement
            .with_attempt_timeout(inner_deadline(timeout))
            .with_retry_policy(SpannerRetryPolicy::new().with_time_limit(inner_deadline(timeout)))
            .build();
        let transaction = self.strong_single_use();
        self.collect(ctx, op, transaction.execute_query(statement), convert)
            .await
    }

    /// Runs one strong single-use read by key (Spanner's Read API: a key lookup or a key range,
    /// in primary key order, without the SQL engine), bounded by the operation timeout.
    pub(crate) async fn read<T>(
        &self,
        ctx: &ErrorContext<'_>,
        op: &str,
        request: ConfiguredReadRequestBuilder,
        convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let timeout = self.options.operation_timeout;
        let request = request
            .with_attempt_timeout(inner_deadline(timeout))
            .with_retry_policy(SpannerRetryPolicy::new().with_time_limit(inner_deadline(timeout)))
            .build();
        let transaction = self.strong_single_use();
        self.collect(ctx, op, transaction.execute_read(request), convert)
            .await
    }

    fn strong_single_use(&self) -> SingleUseReadOnlyTransaction {
        self.client
            .single_use()
            .set_timestamp_bound(TimestampBound::strong())
            .build()
    }

    /// Awaits `rows` and converts each row with `convert`, all within the operation timeout.
    async fn collect<T>(
        &self,
        ctx: &ErrorContext<'_>,
        op: &str,
        rows: impl Future<Output = google_cloud_spanner::Result<ResultSet>>,
        mut convert: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let timeout = self.options.operation_timeout;
        let run = async {
            let mut rows = rows.await.map_err(|e| map_error(ctx, op, e))?;
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
        source: Some(std::sync::Arc::new(e)),
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
}
