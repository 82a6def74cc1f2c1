//! Spanner's errors mapped to [`StoreError`], by what retrying can fix.
//!
//! The gRPC code decides, refined by the message where one code covers both a fixable and an
//! unfixable case (NotFound is a missing table, a missing database, or a transaction the
//! emulator forgot):
//!
//! | Spanner says | hedge's error | retried? |
//! |---|---|---|
//! | Table not found | [`StoreError::MissingTable`] | no |
//! | Column not found, Unrecognized name, an index or other schema object missing | [`StoreError::SchemaMismatch`] | no |
//! | Database / Instance not found | [`StoreError::DatabaseNotFound`] | no |
//! | InvalidArgument, Unimplemented, OutOfRange | [`StoreError::InvalidRequest`] | no |
//! | PermissionDenied, Unauthenticated | [`StoreError::PermissionDenied`] | yes, logged at error level |
//! | Unavailable, DeadlineExceeded, Aborted, ResourceExhausted, Internal, Cancelled | [`StoreError::Unavailable`] | yes |
//! | a transport, connect or I/O failure | [`StoreError::Unavailable`] | yes |
//! | anything else (Unknown, another NotFound or FailedPrecondition, ...) | [`StoreError::Backend`] | yes |

use google_cloud_gax::error::rpc::Code;

use super::options::SpannerOptions;
use crate::names::TableNames;
use crate::store::StoreError;

/// The IAM role members need on the database.
pub const MEMBER_ROLE: &str = "roles/spanner.databaseUser";

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
    let database = ctx.database;
    let Some(status) = err.status() else {
        return map_transport_error(ctx, op, err);
    };
    let message = status.message.clone();
    if let Some(table) = missing_table(&message, ctx) {
        return StoreError::MissingTable { table };
    }
    if message.contains("Database not found") || message.contains("Instance not found") {
        return StoreError::DatabaseNotFound {
            database: database.to_owned(),
            message: format!(
                "{message}: create it, or fix the database path (HEDGE_SPANNER_DATABASE, or the \
                 HedgeGroup's spec.spanner.database)"
            ),
        };
    }
    if is_schema_object_missing(&message) {
        return StoreError::SchemaMismatch {
            message: format!(
                "{op} on {database}: {message}: the tables look older than this version of \
                 hedge; run `hedge-operator schema apply` (the operator does it for a \
                 HedgeGroup) or hedge::store::schema::ensure_schema"
            ),
        };
    }
    match status.code {
        Code::InvalidArgument | Code::Unimplemented | Code::OutOfRange => {
            StoreError::InvalidRequest {
                message: format!("{op} on {database}: {:?}: {message}", status.code),
            }
        }
        Code::PermissionDenied | Code::Unauthenticated => StoreError::PermissionDenied {
            message: format!(
                "{op} on {database}: {message}: grant the identity the pod runs as (its \
                 Kubernetes service account's Google service account, with Workload Identity) \
                 the role {MEMBER_ROLE} on the database; the operator needs \
                 roles/spanner.databaseAdmin to create the tables"
            ),
        },
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal
        | Code::Cancelled => StoreError::Unavailable {
            message: format!(
                "{op} on {database}: {:?}: {message}: {}",
                status.code,
                ctx.options.unreachable_hint()
            ),
            source: Some(std::sync::Arc::new(err)),
        },
        code => StoreError::Backend {
            message: format!("{op} on {database}: {code:?}: {message}"),
            source: Some(std::sync::Arc::new(err)),
        },
    }
}

/// An error without a gRPC status: the request never got an answer.
fn map_transport_error(
    ctx: &ErrorContext<'_>,
    op: &str,
    err: google_cloud_spanner::Error,
) -> StoreError {
    let database = ctx.database;
    if err.is_authentication() {
        return StoreError::PermissionDenied {
            message: format!(
                "{op} on {database}: no usable credentials ({err}): {}",
                ctx.options.unreachable_hint()
            ),
        };
    }
    if err.is_timeout()
        || err.is_exhausted()
        || err.is_transport()
        || err.is_io()
        || err.is_connect()
    {
        return StoreError::Unavailable {
            message: format!(
                "{op} on {database}: {err}: {}",
                ctx.options.unreachable_hint()
            ),
            source: Some(std::sync::Arc::new(err)),
        };
    }
    StoreError::Backend {
        message: format!("{op} on {database}: {err}"),
        source: Some(std::sync::Arc::new(err)),
    }
}

/// Whether `e` is Spanner's ALREADY_EXISTS: an insert found its key (or a unique index entry)
/// taken.
pub(crate) fn is_already_exists(e: &StoreError) -> bool {
    let StoreError::Backend {
        source: Some(source),
        ..
    } = e
    else {
        return false;
    };
    source
        .downcast_ref::<google_cloud_spanner::Error>()
        .and_then(google_cloud_spanner::Error::status)
        .is_some_and(|status| status.code == Code::AlreadyExists)
}

/// Whether Spanner says a column, index or other schema object (not a table) is missing.
fn is_schema_object_missing(message: &str) -> bool {
    [
        "Column not found",
        "Unrecognized name",
        "Index not found",
        "not found in table",
        "does not have a column",
    ]
    .iter()
    .any(|marker| message.contains(marker))
}

/// The table a "Table not found: NAME" message names, spelled as configured when it is one of
/// ours.
pub(crate) fn missing_table(message: &str, ctx: &ErrorContext<'_>) -> Option<String> {
    const MARKER: &str = "Table not found: ";
    let start = message.find(MARKER)? + MARKER.len();
    let named: String = message[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if let Some(tables) = ctx.tables {
        for (_, ours) in tables.roles() {
            if ours.eq_ignore_ascii_case(&named) {
                return Some(ours.to_owned());
            }
        }
    }
    if named.is_empty() {
        return ctx.table.map(str::to_owned);
    }
    Some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn classify(code: Code, message: &str) -> StoreError {
        let options = SpannerOptions::default();
        let tables = TableNames::default();
        let ctx = ErrorContext::new(
            "projects/p/instances/i/databases/d",
            &options,
            Some("hedge_locks"),
        )
        .with_tables(&tables);
        let status = google_cloud_gax::error::rpc::Status::default()
            .set_code(code)
            .set_message(message);
        map_error(
            &ctx,
            "renewing a lock",
            google_cloud_spanner::Error::service(status),
        )
    }

    #[test]
    fn errors_are_classified_by_what_retrying_can_fix() {
        let cases = [
            (
                Code::NotFound,
                "Table not found: hedge_locks",
                "MissingTable",
                false,
            ),
            (
                Code::InvalidArgument,
                "Column not found: holder_incarnation",
                "SchemaMismatch",
                false,
            ),
            (
                Code::NotFound,
                "Database not found: projects/p/instances/i/databases/d",
                "DatabaseNotFound",
                false,
            ),
            (
                Code::NotFound,
                "Instance not found: projects/p/instances/i",
                "DatabaseNotFound",
                false,
            ),
            (
                Code::InvalidArgument,
                "Syntax error: Unexpected keyword ORDER",
                "InvalidRequest",
                false,
            ),
            (
                Code::Unimplemented,
                "not supported",
                "InvalidRequest",
                false,
            ),
            (
                Code::PermissionDenied,
                "caller lacks spanner.sessions.create",
                "PermissionDenied",
                true,
            ),
            (
                Code::Unauthenticated,
                "invalid token",
                "PermissionDenied",
                true,
            ),
            (Code::Unavailable, "connection reset", "Unavailable", true),
            (Code::DeadlineExceeded, "deadline", "Unavailable", true),
            (
                Code::Aborted,
                "Transaction was aborted",
                "Unavailable",
                true,
            ),
            (Code::ResourceExhausted, "quota", "Unavailable", true),
            (Code::Internal, "RST_STREAM", "Unavailable", true),
            // The emulator forgets a transaction of a busy session: not a schema problem.
            (Code::NotFound, "Transaction not found: 12", "Backend", true),
            (
                Code::FailedPrecondition,
                "Invalid transaction ID",
                "Backend",
                true,
            ),
        ];
        for (code, message, reason, transient) in cases {
            let e = classify(code, message);
            assert_eq!(
                (e.reason(), e.is_transient()),
                (reason, transient),
                "{code:?} {message:?}: {e}"
            );
        }
        let denied = classify(Code::PermissionDenied, "denied").to_string();
        assert!(denied.contains(MEMBER_ROLE), "{denied}");
        let old = classify(Code::InvalidArgument, "Column not found: x").to_string();
        assert!(old.contains("schema apply"), "{old}");
    }

    #[test]
    fn schema_objects_are_recognised() {
        assert!(is_schema_object_missing(
            "Column not found in table hedge_locks: holder_incarnation"
        ));
        assert!(is_schema_object_missing(
            "Unrecognized name: attempt [at 1:8]"
        ));
        assert!(!is_schema_object_missing("Transaction not found: 12"));
    }
}
