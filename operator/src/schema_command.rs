//! `hedge-operator schema print|apply|check`: hedge's Spanner schema for everyone outside
//! Kubernetes, and for DBAs who provision by hand.
//!
//! `apply` and `check` run the client crate's own schema code (`ensure_schema`, the function the
//! reconciler runs for every HedgeGroup, and `check_schema`, the comparison `ensure_schema`
//! makes before it changes anything), so the command and the operator cannot disagree about
//! what a current schema is.

use std::io::Write;

use hedge::store::schema::{
    self, DdlItem, SCHEMA_VERSION, SchemaError, SchemaReport, SchemaStatus, TableNames,
};
use hedge::store::spanner::SpannerOptions;
use serde_json::json;

use crate::settings::{SchemaAction, SchemaArgs, SchemaTarget};

/// Exit code: the schema is current (check), or was applied.
pub const EXIT_OK: u8 = 0;
/// Exit code of `check`: the schema is not current (something is missing, or no version is
/// recorded).
pub const EXIT_NOT_CURRENT: u8 = 1;
/// Exit code: the command failed (invalid names, Spanner unreachable, a foreign table, a newer
/// schema).
pub const EXIT_FAILED: u8 = 2;

/// Why a schema command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaCommandError {
    /// The client's schema code failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The table names are invalid.
    #[error(transparent)]
    Tables(#[from] hedge::names::TableNamesError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `args`, writing its report to `out`; returns the exit code.
pub async fn run(args: &SchemaArgs, out: &mut impl Write) -> Result<u8, SchemaCommandError> {
    match &args.action {
        SchemaAction::Print { tables } => {
            let tables = tables.names();
            tables.validate()?;
            write!(out, "{}", print(&tables))?;
            Ok(EXIT_OK)
        }
        SchemaAction::Apply { target } => {
            let tables = target.tables.names();
            let report = schema::ensure_schema(&target.database, &tables, &options(target)).await?;
            let text = if target.json {
                apply_json(target, &tables, &report)
            } else {
                apply_text(target, &tables, &report)
            };
            writeln!(out, "{text}")?;
            Ok(EXIT_OK)
        }
        SchemaAction::Check { target } => {
            let tables = target.tables.names();
            let status = schema::check_schema(&target.database, &tables, &options(target)).await?;
            let text = if target.json {
                check_json(target, &tables, &status)
            } else {
                check_text(target, &tables, &status)
            };
            writeln!(out, "{text}")?;
            Ok(if status.is_current() {
                EXIT_OK
            } else {
                EXIT_NOT_CURRENT
            })
        }
    }
}

fn options(target: &SchemaTarget) -> SpannerOptions {
    SpannerOptions {
        emulator_host: target.emulator_host.clone().filter(|h| !h.is_empty()),
        operation_timeout: target.spanner_timeout,
        ..SpannerOptions::default()
    }
}

/// The DDL of the newest schema, each statement ended by `;`, with a header saying how to
/// apply it and how to record the version afterwards.
pub fn print(tables: &TableNames) -> String {
    let mut text = format!(
        "-- hedge schema version {SCHEMA_VERSION}: tables {}.\n\
         -- Apply with: gcloud spanner databases ddl update DATABASE --instance=INSTANCE --ddl-file=FILE\n\
         -- (or let `hedge-operator schema apply` do it, which also records the version). After\n\
         -- applying by hand, record the version so that `schema check` and the operator see it:\n\
         --   INSERT INTO {schema} (table_set, version, updated_at)\n\
         --   VALUES ('{locks}', {SCHEMA_VERSION}, PENDING_COMMIT_TIMESTAMP())\n\n",
        table_list(tables),
        schema = tables.schema,
        locks = tables.locks,
    );
    for statement in schema::ddl(tables) {
        text.push_str(&statement);
        text.push_str(";\n\n");
    }
    text
}

fn table_list(tables: &TableNames) -> String {
    tables
        .roles()
        .iter()
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn version(v: Option<i64>) -> String {
    v.map_or_else(|| "none recorded".to_owned(), |v| v.to_string())
}

/// The first line of a statement (`CREATE TABLE hedge_locks (`), for one-line reports.
fn headline(statement: &str) -> &str {
    statement
        .lines()
        .next()
        .unwrap_or(statement)
        .trim_end_matches(" (")
}

fn apply_text(target: &SchemaTarget, tables: &TableNames, report: &SchemaReport) -> String {
    let mut text = format!(
        "database {}, tables {}\n",
        target.database,
        table_list(tables)
    );
    if report.changed() {
        text.push_str(&format!(
            "schema version {} -> {}; applied {} statement(s)",
            version(report.version_before),
            report.version_after,
            report.applied.len()
        ));
        for statement in &report.applied {
            text.push_str(&format!("\n  {}", headline(statement)));
        }
    } else {
        text.push_str(&format!(
            "schema version {} is current: nothing changed",
            report.version_after
        ));
    }
    text
}

fn apply_json(target: &SchemaTarget, tables: &TableNames, report: &SchemaReport) -> String {
    json!({
        "database": target.database.to_string(),
        "tables": tables_json(tables),
        "version_before": report.version_before,
        "version_after": report.version_after,
        "applied": report.applied,
        "changed": report.changed(),
    })
    .to_string()
}

fn tables_json(tables: &TableNames) -> serde_json::Value {
    tables
        .roles()
        .iter()
        .map(|(role, name)| ((*role).to_owned(), json!(name)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// What a missing item is, in a few words: `table hedge_members`, `column
/// hedge_locks.holder_incarnation` or `index hedge_log_by_request on hedge_log`.
fn what(item: &DdlItem) -> String {
    match (&item.column, &item.index) {
        (Some(column), _) => format!("column {}.{column}", item.table),
        (None, Some(index)) => format!("index {index} on {}", item.table),
        (None, None) => format!("table {}", item.table),
    }
}

fn check_text(target: &SchemaTarget, tables: &TableNames, status: &SchemaStatus) -> String {
    let mut text = format!(
        "database {}, tables {}\nschema version found: {} (this release of hedge writes version {SCHEMA_VERSION})",
        target.database,
        table_list(tables),
        version(status.version_found),
    );
    if status.missing.is_empty() {
        text.push_str("\nmissing: nothing");
    } else {
        text.push_str("\nmissing:");
        for item in &status.missing {
            text.push_str(&format!(
                "\n  {}: {}",
                what(item),
                headline(&item.statement)
            ));
        }
    }
    if status.is_current() {
        text.push_str("\nthe schema is current");
    } else {
        text.push_str(&format!(
            "\nNOT CURRENT: run `hedge-operator schema apply --database {}` (with the same table \
             flags) to bring it to version {SCHEMA_VERSION}",
            target.database
        ));
    }
    text
}

fn check_json(target: &SchemaTarget, tables: &TableNames, status: &SchemaStatus) -> String {
    let missing: Vec<serde_json::Value> = status
        .missing
        .iter()
        .map(|item| {
            json!({
                "table": item.table,
                "column": item.column,
                "index": item.index,
                "statement": item.statement,
            })
        })
        .collect();
    json!({
        "database": target.database.to_string(),
        "tables": tables_json(tables),
        "version_found": status.version_found,
        "version_supported": SCHEMA_VERSION,
        "missing": missing,
        "current": status.is_current(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TableArgs;

    fn target(json: bool) -> SchemaTarget {
        SchemaTarget {
            database: "projects/p/instances/i/databases/d".parse().unwrap(),
            emulator_host: None,
            spanner_timeout: std::time::Duration::from_secs(30),
            json,
            tables: TableArgs {
                lock_table: "hedge_locks".into(),
                member_table: "hedge_members".into(),
                schema_table: "hedge_schema".into(),
                log_key_table: "hedge_log_keys".into(),
                log_table: "hedge_log".into(),
                semaphore_table: "hedge_semaphores".into(),
                permit_table: "hedge_permits".into(),
            },
        }
    }

    #[test]
    fn print_gives_every_statement_of_the_newest_version_for_the_names_given() {
        let tables = TableNames {
            locks: "orders_locks".into(),
            ..TableNames::default()
        };
        let text = print(&tables);
        for statement in schema::ddl(&tables) {
            assert!(text.contains(&format!("{statement};\n")), "{text}");
        }
        assert!(text.contains("CREATE TABLE orders_locks ("));
        assert!(text.contains(&format!("VALUES ('orders_locks', {SCHEMA_VERSION},")));
        // Every line outside the statements is a comment, so the file is valid DDL.
        let statements = schema::ddl(&tables).join("\n");
        for line in text.lines().filter(|l| !l.is_empty()) {
            assert!(
                line.starts_with("--") || statements.contains(line.trim_end_matches(';')),
                "{line}"
            );
        }
    }

    #[test]
    fn check_reports_the_version_and_what_is_missing() {
        let tables = TableNames::default();
        let missing: Vec<DdlItem> = schema::migrations(&tables)
            .into_iter()
            .skip(2)
            .flat_map(|m| m.items)
            .collect();
        let status = SchemaStatus {
            version_found: Some(2),
            missing,
        };
        let text = check_text(&target(false), &tables, &status);
        assert!(text.contains("schema version found: 2"), "{text}");
        assert!(
            text.contains("column hedge_locks.holder_incarnation: ALTER TABLE hedge_locks"),
            "{text}"
        );
        assert!(text.contains("NOT CURRENT"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&check_json(&target(true), &tables, &status)).unwrap();
        assert_eq!(json["version_found"], 2);
        assert_eq!(json["current"], false);
        assert_eq!(json["missing"][0]["column"], "holder_incarnation");

        let current = SchemaStatus {
            version_found: Some(SCHEMA_VERSION),
            missing: Vec::new(),
        };
        assert!(check_text(&target(false), &tables, &current).ends_with("the schema is current"));
        // Complete tables without a recorded version (created by hand) are not current.
        let unrecorded = SchemaStatus {
            version_found: None,
            missing: Vec::new(),
        };
        assert!(!unrecorded.is_current());
        assert!(check_text(&target(false), &tables, &unrecorded).contains("none recorded"));
    }

    #[test]
    fn apply_reports_what_it_did() {
        let tables = TableNames::default();
        let fresh = SchemaReport {
            version_before: None,
            version_after: SCHEMA_VERSION,
            applied: schema::ddl(&tables),
        };
        let text = apply_text(&target(false), &tables, &fresh);
        assert!(
            text.contains(&format!("schema version none recorded -> {SCHEMA_VERSION}")),
            "{text}"
        );
        assert!(text.contains("\n  CREATE TABLE hedge_locks\n"), "{text}");
        let unchanged = SchemaReport {
            version_before: Some(SCHEMA_VERSION),
            version_after: SCHEMA_VERSION,
            applied: Vec::new(),
        };
        assert!(apply_text(&target(false), &tables, &unchanged).contains("nothing changed"));
        let json: serde_json::Value =
            serde_json::from_str(&apply_json(&target(true), &tables, &unchanged)).unwrap();
        assert_eq!(json["changed"], false);
        assert_eq!(json["tables"]["locks"], "hedge_locks");
    }
}
