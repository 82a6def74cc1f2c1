//! The Spanner schema: table names, the DDL of every version, and (with the `spanner` feature)
//! the idempotent `ensure_schema` that the operator and the tests both call.
//!
//! The schema is described as an ordered list of [`Migration`]s. Each item of a migration names
//! the table (and column) it creates, so that provisioning can compare the list with what the
//! database has and create exactly what is missing: a fresh database gets everything, an older
//! schema gets the newer items, and an up-to-date one gets nothing at all.

use std::fmt;

/// The newest schema version this crate writes and reads.
pub const SCHEMA_VERSION: i64 = 4;

pub use crate::names::{TableNames, TableNamesError};

/// Errors of schema provisioning.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A table name Spanner would refuse (or two roles sharing a table).
    #[error(transparent)]
    Tables(#[from] TableNamesError),
    /// The database path is malformed.
    #[error(transparent)]
    Database(#[from] crate::names::DatabasePathError),
    /// The database is newer than this crate.
    #[error(
        "the database holds hedge schema version {found}, newer than the {supported} this \
         version of hedge knows: upgrade hedge (the operator and the members) instead"
    )]
    TooNew {
        /// The version found in the database.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// A version that does not exist was asked for.
    #[error("schema version {0} does not exist: use 1 to {SCHEMA_VERSION}")]
    UnknownVersion(i64),
    /// A table of the set exists but is not hedge's (its columns are not those of its role):
    /// hedge neither changes nor drops it.
    #[error(
        "table `{table}` exists but is not hedge's {role} table ({differs}): hedge leaves it \
         alone; name other tables (spec.tables) or remove it yourself"
    )]
    ForeignTable {
        /// The table, as named in the table set.
        table: String,
        /// Its role (`locks`, `members`, `schema`).
        role: &'static str,
        /// What differs: the missing and the unknown columns.
        differs: String,
    },
    /// Spanner (the admin API or a query) failed; the source says how.
    #[error("schema provisioning failed while {step}: {source}")]
    Spanner {
        /// What was being done.
        step: &'static str,
        /// The store's error, classified.
        #[source]
        source: super::StoreError,
    },
}

impl SchemaError {
    /// A short, stable name of what went wrong, for condition reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SchemaError::Tables(_) => "InvalidTableName",
            SchemaError::Database(_) => "InvalidDatabase",
            SchemaError::TooNew { .. } => "SchemaTooNew",
            SchemaError::UnknownVersion(_) => "UnknownSchemaVersion",
            SchemaError::ForeignTable { .. } => "ForeignTable",
            SchemaError::Spanner { source, .. } => source.reason(),
        }
    }

    /// Whether retrying the same provisioning later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SchemaError::Spanner { source, .. } if source.is_transient())
    }
}

/// One DDL statement and the table (and column, or index) whose existence shows it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdlItem {
    /// The table the statement creates or alters (or indexes).
    pub table: String,
    /// The column it adds, when it adds a column to an existing table.
    pub column: Option<String>,
    /// The index it creates on `table`, when it creates an index.
    pub index: Option<String>,
    /// The statement.
    pub statement: String,
}

impl DdlItem {
    fn table(table: &str, statement: String) -> Self {
        Self {
            table: table.to_owned(),
            column: None,
            index: None,
            statement,
        }
    }

    fn column(table: &str, column: &str, statement: String) -> Self {
        Self {
            column: Some(column.to_owned()),
            ..Self::table(table, statement)
        }
    }

    fn index(table: &str, index: &str, statement: String) -> Self {
        Self {
            index: Some(index.to_owned()),
            ..Self::table(table, statement)
        }
    }
}

/// The items that bring a schema to `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version reached once every item exists.
    pub version: i64,
    /// The statements, in order.
    pub items: Vec<DdlItem>,
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schema version {} ({} statements)",
            self.version,
            self.items.len()
        )
    }
}

/// Every migration, oldest first, for `tables` (which must be valid).
///
/// * Version 1: the schema table and the lock table.
/// * Version 2: the member table.
/// * Version 3: the incarnation of each lock holder and member (a value fresh for every process
///   start), so that a lost grant can be recognised and a restarted pod is a new member.
/// * Version 4: the log (a key table, the versions interleaved in it, and a unique index of
///   idempotency keys) and the semaphores (a definition table, the permits interleaved in it).
pub fn migrations(tables: &TableNames) -> Vec<Migration> {
    let TableNames {
        locks,
        members,
        schema,
        log_keys,
        log,
        semaphores,
        permits,
    } = tables;
    let log_index = tables.log_request_index();
    vec![
        Migration {
            version: 1,
            items: vec![
                DdlItem::table(
                    schema,
                    format!(
                        "CREATE TABLE {schema} (\n\
                         \x20 table_set STRING(128) NOT NULL,\n\
                         \x20 version INT64 NOT NULL,\n\
                         \x20 updated_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (table_set)"
                    ),
                ),
                DdlItem::table(
                    locks,
                    format!(
                        "CREATE TABLE {locks} (\n\
                         \x20 group_name STRING(253) NOT NULL,\n\
                         \x20 lock_name STRING(253) NOT NULL,\n\
                         \x20 holder STRING(253),\n\
                         \x20 token INT64 NOT NULL,\n\
                         \x20 lease_us INT64 NOT NULL,\n\
                         \x20 heartbeat TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         \x20 granted_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (group_name, lock_name)"
                    ),
                ),
            ],
        },
        Migration {
            version: 2,
            items: vec![DdlItem::table(
                members,
                format!(
                    "CREATE TABLE {members} (\n\
                     \x20 group_name STRING(253) NOT NULL,\n\
                     \x20 member_id STRING(253) NOT NULL,\n\
                     \x20 address STRING(MAX),\n\
                     \x20 ttl_us INT64 NOT NULL,\n\
                     \x20 heartbeat TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                     \x20 joined_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                     ) PRIMARY KEY (group_name, member_id)"
                ),
            )],
        },
        Migration {
            version: 3,
            items: vec![
                DdlItem::column(
                    locks,
                    "holder_incarnation",
                    format!("ALTER TABLE {locks} ADD COLUMN holder_incarnation STRING(64)"),
                ),
                DdlItem::column(
                    members,
                    "incarnation",
                    format!("ALTER TABLE {members} ADD COLUMN incarnation STRING(64)"),
                ),
            ],
        },
        Migration {
            version: 4,
            items: vec![
                DdlItem::table(
                    log_keys,
                    format!(
                        "CREATE TABLE {log_keys} (\n\
                         \x20 group_name STRING(253) NOT NULL,\n\
                         \x20 log_key STRING(1024) NOT NULL,\n\
                         \x20 last_seq INT64 NOT NULL,\n\
                         \x20 created_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (group_name, log_key)"
                    ),
                ),
                DdlItem::table(
                    log,
                    format!(
                        "CREATE TABLE {log} (\n\
                         \x20 group_name STRING(253) NOT NULL,\n\
                         \x20 log_key STRING(1024) NOT NULL,\n\
                         \x20 seq INT64 NOT NULL,\n\
                         \x20 entry_id STRING(36) NOT NULL,\n\
                         \x20 value BYTES(MAX) NOT NULL,\n\
                         \x20 writer STRING(253) NOT NULL,\n\
                         \x20 writer_incarnation STRING(64) NOT NULL,\n\
                         \x20 token INT64,\n\
                         \x20 request_id STRING(128),\n\
                         \x20 committed_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (group_name, log_key, seq DESC),\n\
                         \x20 INTERLEAVE IN PARENT {log_keys} ON DELETE CASCADE"
                    ),
                ),
                DdlItem::index(
                    log,
                    &log_index,
                    format!(
                        "CREATE UNIQUE NULL_FILTERED INDEX {log_index} \
                         ON {log} (group_name, log_key, request_id), INTERLEAVE IN {log_keys}"
                    ),
                ),
                DdlItem::table(
                    semaphores,
                    format!(
                        "CREATE TABLE {semaphores} (\n\
                         \x20 group_name STRING(253) NOT NULL,\n\
                         \x20 semaphore_name STRING(253) NOT NULL,\n\
                         \x20 permit_limit INT64 NOT NULL,\n\
                         \x20 last_token INT64 NOT NULL,\n\
                         \x20 created_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (group_name, semaphore_name)"
                    ),
                ),
                DdlItem::table(
                    permits,
                    format!(
                        "CREATE TABLE {permits} (\n\
                         \x20 group_name STRING(253) NOT NULL,\n\
                         \x20 semaphore_name STRING(253) NOT NULL,\n\
                         \x20 permit_id STRING(64) NOT NULL,\n\
                         \x20 holder STRING(253) NOT NULL,\n\
                         \x20 holder_incarnation STRING(64) NOT NULL,\n\
                         \x20 token INT64 NOT NULL,\n\
                         \x20 lease_us INT64 NOT NULL,\n\
                         \x20 heartbeat TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         \x20 acquired_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (group_name, semaphore_name, permit_id),\n\
                         \x20 INTERLEAVE IN PARENT {semaphores} ON DELETE CASCADE"
                    ),
                ),
            ],
        },
    ]
}

/// The columns of one of hedge's tables: those its `CREATE TABLE` made (every version has
/// them) and those a later version adds (an older table lacks them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumns {
    /// The table's role: `locks`, `members` or `schema`.
    pub role: &'static str,
    /// The table's name.
    pub table: String,
    /// The columns of its `CREATE TABLE`, lower-cased.
    pub created: std::collections::BTreeSet<String>,
    /// The columns later versions add, lower-cased.
    pub added: std::collections::BTreeSet<String>,
}

impl TableColumns {
    /// Why a table with `found` columns (lower-cased) is not this one, or `None` when it is.
    pub fn differs(&self, found: &std::collections::BTreeSet<String>) -> Option<String> {
        let missing: Vec<&str> = self.created.difference(found).map(String::as_str).collect();
        let unknown: Vec<&str> = found
            .iter()
            .filter(|c| !self.created.contains(*c) && !self.added.contains(*c))
            .map(String::as_str)
            .collect();
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing columns {}", missing.join(", ")));
        }
        if !unknown.is_empty() {
            parts.push(format!("unknown columns {}", unknown.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The columns of each of hedge's tables under `tables`, read from the migrations themselves
/// (the column lines of each `CREATE TABLE`, and each `ADD COLUMN`).
pub fn table_columns(tables: &TableNames) -> Vec<TableColumns> {
    let roles = [
        ("locks", &tables.locks),
        ("members", &tables.members),
        ("schema", &tables.schema),
        ("log", &tables.log),
        ("log keys", &tables.log_keys),
        ("semaphores", &tables.semaphores),
        ("permits", &tables.permits),
    ];
    let mut out: Vec<TableColumns> = roles
        .iter()
        .map(|(role, table)| TableColumns {
            role,
            table: (*table).clone(),
            created: Default::default(),
            added: Default::default(),
        })
        .collect();
    // An index adds no column.
    for item in migrations(tables)
        .into_iter()
        .flat_map(|m| m.items)
        .filter(|item| item.index.is_none())
    {
        let Some(entry) = out.iter_mut().find(|t| t.table == item.table) else {
            continue;
        };
        match item.column {
            Some(column) => {
                entry.added.insert(column.to_ascii_lowercase());
            }
            // One column per line between `CREATE TABLE name (` and `) PRIMARY KEY`.
            None => entry.created.extend(
                item.statement
                    .lines()
                    .skip(1)
                    .take_while(|l| !l.trim_start().starts_with(')'))
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_ascii_lowercase),
            ),
        }
    }
    out
}

/// The full DDL of the newest version, in order: what a fresh database receives.
pub fn ddl(tables: &TableNames) -> Vec<String> {
    migrations(tables)
        .into_iter()
        .flat_map(|m| m.items.into_iter().map(|i| i.statement))
        .collect()
}

#[cfg(feature = "spanner")]
pub(crate) use provision::ensure_on;
#[cfg(feature = "spanner")]
pub use provision::{
    SchemaReport, SchemaStatus, check_schema, drop_schema, ensure_schema, ensure_schema_version,
};

/// Provisioning through the Spanner admin API: compare [`migrations`] with what the database
/// has, apply exactly what is missing, and record the version.
#[cfg(feature = "spanner")]
mod provision {
    use std::collections::BTreeSet;

    use google_cloud_lro::Poller as _;
    use google_cloud_spanner::mutation::Mutation;
    use google_cloud_spanner::statement::Statement;
    use google_cloud_spanner::transaction::ReadWriteTransaction;
    use google_cloud_spanner::types;

    use super::{DdlItem, SCHEMA_VERSION, SchemaError, TableNames, migrations, table_columns};
    use crate::config::DatabasePath;
    use crate::store::StoreError;
    use crate::store::spanner::{
        COMMIT_TIMESTAMP, Connection, ErrorContext, SpannerOptions, map_error,
    };

    /// What [`ensure_schema`] found and did.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SchemaReport {
        /// The version recorded in the schema table before the run (`None`: no record, e.g. a
        /// fresh database).
        pub version_before: Option<i64>,
        /// The version recorded after the run.
        pub version_after: i64,
        /// The DDL statements applied, in order (empty when the schema was up to date).
        pub applied: Vec<String>,
    }

    impl SchemaReport {
        /// Whether the run changed anything (DDL or the version record).
        pub fn changed(&self) -> bool {
            !self.applied.is_empty() || self.version_before != Some(self.version_after)
        }
    }

    /// What [`check_schema`] found, without changing anything.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SchemaStatus {
        /// The version recorded in the schema table (`None`: no record, e.g. a fresh database
        /// or tables created by hand from `ddl`).
        pub version_found: Option<i64>,
        /// The items of the newest version that the database lacks, in the order
        /// [`ensure_schema`] would apply them.
        pub missing: Vec<DdlItem>,
    }

    impl SchemaStatus {
        /// Whether the database holds the newest schema and records it: [`ensure_schema`]
        /// would change nothing.
        pub fn is_current(&self) -> bool {
            self.missing.is_empty() && self.version_found == Some(SCHEMA_VERSION)
        }
    }

    fn spanner_error(step: &'static str) -> impl FnOnce(StoreError) -> SchemaError {
        move |source| SchemaError::Spanner { step, source }
    }

    /// Brings the tables `tables` of `db` to [`SCHEMA_VERSION`]: creates exactly the missing
    /// tables and columns, in migration order, through the database admin API, then records the
    /// version in the schema table (row `table_set` = the lock table's name) if it changed.
    ///
    /// Idempotent: on an up-to-date database it applies nothing and writes nothing. A database
    /// recorded at a newer version than this crate knows fails with [`SchemaError::TooNew`]
    /// before anything is changed.
    pub async fn ensure_schema(
        db: &DatabasePath,
        tables: &TableNames,
        options: &SpannerOptions,
    ) -> Result<SchemaReport, SchemaError> {
        ensure_schema_version(db, tables, options, SCHEMA_VERSION).await
    }

    /// Like [`ensure_schema`], but applies the migrations only up to `target` (1 to
    /// [`SCHEMA_VERSION`]); for tests that need an older schema, and for staged upgrades.
    /// Never downgrades: a database already past `target` keeps its tables and version.
    pub async fn ensure_schema_version(
        db: &DatabasePath,
        tables: &TableNames,
        options: &SpannerOptions,
        target: i64,
    ) -> Result<SchemaReport, SchemaError> {
        tables.validate()?;
        db.to_string().parse::<DatabasePath>()?;
        if !(1..=SCHEMA_VERSION).contains(&target) {
            return Err(SchemaError::UnknownVersion(target));
        }
        let conn = Connection::open(db, options)
            .await
            .map_err(spanner_error("connecting"))?;
        ensure_on(&conn, tables, target).await
    }

    /// Reads what `db` holds of the tables `tables` and compares it with the newest schema:
    /// the version recorded and the items missing. Changes nothing; the same comparison
    /// [`ensure_schema`] makes before it applies anything (a table of the set that is not
    /// hedge's is [`SchemaError::ForeignTable`], a newer version [`SchemaError::TooNew`]).
    pub async fn check_schema(
        db: &DatabasePath,
        tables: &TableNames,
        options: &SpannerOptions,
    ) -> Result<SchemaStatus, SchemaError> {
        tables.validate()?;
        db.to_string().parse::<DatabasePath>()?;
        let conn = Connection::open(db, options)
            .await
            .map_err(spanner_error("connecting"))?;
        inspect(&conn, tables, SCHEMA_VERSION).await
    }

    /// The version recorded and the items up to `target` that the database lacks.
    async fn inspect(
        conn: &Connection,
        tables: &TableNames,
        target: i64,
    ) -> Result<SchemaStatus, SchemaError> {
        let existing = Existing::read(conn, tables).await?;
        existing.check_ours(tables)?;
        let version_found = if existing.has_table(&tables.schema) {
            read_version(conn, tables).await?
        } else {
            None
        };
        if let Some(found) = version_found.filter(|v| *v > SCHEMA_VERSION) {
            return Err(SchemaError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let missing = migrations(tables)
            .into_iter()
            .filter(|m| m.version <= target)
            .flat_map(|m| m.items)
            .filter(|item| match (&item.column, &item.index) {
                (Some(column), _) => !existing.has_column(&item.table, column),
                (None, Some(index)) => !existing.has_index(index),
                (None, None) => !existing.has_table(&item.table),
            })
            .collect();
        Ok(SchemaStatus {
            version_found,
            missing,
        })
    }

    /// [`ensure_schema_version`] on an open connection (a store's own, so that a caller that
    /// checks the schema often does not open a client each time).
    pub(crate) async fn ensure_on(
        conn: &Connection,
        tables: &TableNames,
        target: i64,
    ) -> Result<SchemaReport, SchemaError> {
        let conn = conn.clone();
        let SchemaStatus {
            version_found: version_before,
            missing,
        } = inspect(&conn, tables, target).await?;
        let missing: Vec<String> = missing.into_iter().map(|item| item.statement).collect();
        if !missing.is_empty() {
            apply_ddl(&conn, missing.clone(), "applying the schema DDL").await?;
        }
        let version_after = version_before.unwrap_or(0).max(target);
        if version_before != Some(version_after) {
            write_version(&conn, tables, version_after).await?;
        }
        Ok(SchemaReport {
            version_before,
            version_after,
            applied: missing,
        })
    }

    /// Drops hedge's tables named in `tables` (and nothing else) from `db`: the log's index, the
    /// interleaved tables before their parents (log, log keys, permits, semaphores), the member
    /// and lock tables, then the schema table, unless the schema table still records another
    /// table set (then only this set's row is deleted). Absent tables are skipped. Returns the
    /// DDL applied.
    pub async fn drop_schema(
        db: &DatabasePath,
        tables: &TableNames,
        options: &SpannerOptions,
    ) -> Result<Vec<String>, SchemaError> {
        tables.validate()?;
        db.to_string().parse::<DatabasePath>()?;
        let conn = Connection::open(db, options)
            .await
            .map_err(spanner_error("connecting"))?;
        let existing = Existing::read(&conn, tables).await?;
        existing.check_ours(tables)?;
        let index = tables.log_request_index();
        let mut statements: Vec<String> = Vec::new();
        if existing.has_index(&index) {
            statements.push(format!("DROP INDEX {index}"));
        }
        statements.extend(
            [
                &tables.log,
                &tables.log_keys,
                &tables.permits,
                &tables.semaphores,
                &tables.members,
                &tables.locks,
            ]
            .into_iter()
            .filter(|t| existing.has_table(t))
            .map(|t| format!("DROP TABLE {t}")),
        );
        let mut delete_own_row = false;
        if existing.has_table(&tables.schema) {
            let schema = &tables.schema;
            let statement = Statement::builder(format!(
                "SELECT COUNT(*) AS others FROM {schema} WHERE table_set != @ts"
            ))
            .add_param("ts", tables.locks.as_str());
            let ctx = conn.context(Some(schema)).with_tables(tables);
            let others = conn
                .query(&ctx, "counting table sets", statement, |row| {
                    row.get::<i64>("others").map_err(|e| StoreError::Corrupt {
                        table: schema.clone(),
                        key: "(count of other table sets)".into(),
                        message: e.to_string(),
                    })
                })
                .await
                .map_err(spanner_error("reading the schema table"))?;
            if others.first().copied().unwrap_or(0) == 0 {
                statements.push(format!("DROP TABLE {schema}"));
            } else {
                delete_own_row = true;
            }
        }
        if !statements.is_empty() {
            apply_ddl(&conn, statements.clone(), "dropping the tables").await?;
        }
        if delete_own_row {
            let schema = tables.schema.clone();
            let table_set = tables.locks.clone();
            run_write(
                &conn,
                tables,
                "deleting the schema record",
                move |tx: ReadWriteTransaction| {
                    let (schema, table_set) = (schema.clone(), table_set.clone());
                    async move {
                        tx.execute_update(
                            Statement::builder(format!(
                                "DELETE FROM {schema} WHERE table_set = @ts"
                            ))
                            .add_param("ts", table_set.as_str())
                            .build(),
                        )
                        .await?;
                        Ok(())
                    }
                },
            )
            .await?;
        }
        Ok(statements)
    }

    /// The tables, columns and indexes of the table set that exist, lower-cased (Spanner names
    /// are case-insensitive).
    struct Existing {
        columns: BTreeSet<(String, String)>,
        indexes: BTreeSet<String>,
    }

    impl Existing {
        async fn read(conn: &Connection, tables: &TableNames) -> Result<Self, SchemaError> {
            let names: Vec<String> = tables
                .roles()
                .iter()
                .map(|(_, name)| name.to_ascii_lowercase())
                .collect();
            let statement = Statement::builder(
                "SELECT TABLE_NAME, COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS \
                 WHERE TABLE_SCHEMA = '' AND LOWER(TABLE_NAME) IN UNNEST(@tables)",
            )
            .add_typed_param("tables", names, types::array(types::string()));
            let ctx = conn.context(None);
            let rows = conn
                .query(&ctx, "reading INFORMATION_SCHEMA", statement, |row| {
                    let get = |name: &str| {
                        row.get::<String>(name).map_err(|e| StoreError::Corrupt {
                            table: "INFORMATION_SCHEMA.COLUMNS".into(),
                            key: name.to_owned(),
                            message: e.to_string(),
                        })
                    };
                    Ok((
                        get("TABLE_NAME")?.to_ascii_lowercase(),
                        get("COLUMN_NAME")?.to_ascii_lowercase(),
                    ))
                })
                .await
                .map_err(spanner_error("reading the existing tables"))?;
            let statement = Statement::builder(
                "SELECT INDEX_NAME FROM INFORMATION_SCHEMA.INDEXES \
                 WHERE TABLE_SCHEMA = '' AND INDEX_TYPE = 'INDEX' \
                 AND LOWER(INDEX_NAME) = LOWER(@index)",
            )
            .add_param("index", tables.log_request_index());
            let indexes = conn
                .query(&ctx, "reading INFORMATION_SCHEMA", statement, |row| {
                    row.get::<String>("INDEX_NAME")
                        .map(|name| name.to_ascii_lowercase())
                        .map_err(|e| StoreError::Corrupt {
                            table: "INFORMATION_SCHEMA.INDEXES".into(),
                            key: "INDEX_NAME".into(),
                            message: e.to_string(),
                        })
                })
                .await
                .map_err(spanner_error("reading the existing indexes"))?;
            Ok(Self {
                columns: rows.into_iter().collect(),
                indexes: indexes.into_iter().collect(),
            })
        }

        fn has_index(&self, index: &str) -> bool {
            self.indexes.contains(&index.to_ascii_lowercase())
        }

        fn has_table(&self, table: &str) -> bool {
            let table = table.to_ascii_lowercase();
            self.columns.iter().any(|(t, _)| *t == table)
        }

        fn has_column(&self, table: &str, column: &str) -> bool {
            self.columns
                .contains(&(table.to_ascii_lowercase(), column.to_ascii_lowercase()))
        }

        /// Refuses a table of the set that exists with columns other than hedge's for its role:
        /// hedge never alters, writes to or drops a table it did not make.
        fn check_ours(&self, tables: &TableNames) -> Result<(), SchemaError> {
            for expected in table_columns(tables) {
                let name = expected.table.to_ascii_lowercase();
                let found: BTreeSet<String> = self
                    .columns
                    .iter()
                    .filter(|(t, _)| *t == name)
                    .map(|(_, c)| c.clone())
                    .collect();
                if found.is_empty() {
                    continue;
                }
                if let Some(differs) = expected.differs(&found) {
                    return Err(SchemaError::ForeignTable {
                        table: expected.table.clone(),
                        role: expected.role,
                        differs,
                    });
                }
            }
            Ok(())
        }
    }

    async fn read_version(
        conn: &Connection,
        tables: &TableNames,
    ) -> Result<Option<i64>, SchemaError> {
        let schema = &tables.schema;
        let statement = Statement::builder(format!(
            "SELECT version FROM {schema} WHERE table_set = @ts"
        ))
        .add_param("ts", tables.locks.as_str());
        let ctx = conn.context(Some(schema)).with_tables(tables);
        let versions = conn
            .query(&ctx, "reading the schema version", statement, |row| {
                row.get::<i64>("version").map_err(|e| StoreError::Corrupt {
                    table: schema.clone(),
                    key: tables.locks.clone(),
                    message: e.to_string(),
                })
            })
            .await
            .map_err(spanner_error("reading the schema version"))?;
        Ok(versions.first().copied())
    }

    /// Records `version` for the table set, unless a concurrent run recorded a newer one.
    async fn write_version(
        conn: &Connection,
        tables: &TableNames,
        version: i64,
    ) -> Result<(), SchemaError> {
        let schema = tables.schema.clone();
        let table_set = tables.locks.clone();
        run_write(
            conn,
            tables,
            "recording the schema version",
            move |tx: ReadWriteTransaction| {
                let (schema, table_set) = (schema.clone(), table_set.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT version FROM {schema} WHERE table_set = @ts"
                            ))
                            .add_param("ts", table_set.as_str())
                            .build(),
                        )
                        .await?;
                    if let Some(row) = rows.next().await.transpose()?
                        && row.get::<i64>("version")? >= version
                    {
                        return Ok(());
                    }
                    tx.buffer([Mutation::new_insert_or_update_builder(schema.as_str())
                        .set("table_set")
                        .to(table_set.as_str())
                        .set("version")
                        .to(version)
                        .set("updated_at")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(())
                }
            },
        )
        .await
    }

    async fn run_write<F>(
        conn: &Connection,
        tables: &TableNames,
        step: &'static str,
        work: F,
    ) -> Result<(), SchemaError>
    where
        F: AsyncFnMut(ReadWriteTransaction) -> google_cloud_spanner::Result<()>,
    {
        let timeout = conn.options.operation_timeout;
        let run = conn
            .client
            .read_write_transaction()
            .with_transaction_timeout(timeout)
            .build()
            .run(work);
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(spanner_error(step)(StoreError::Timeout(timeout))),
            Ok(Err(e)) => {
                let ctx = conn.context(Some(&tables.schema)).with_tables(tables);
                Err(spanner_error(step)(map_error(&ctx, step, e)))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn apply_ddl(
        conn: &Connection,
        statements: Vec<String>,
        step: &'static str,
    ) -> Result<(), SchemaError> {
        let admin = conn.admin().await.map_err(spanner_error(step))?;
        let timeout = conn.options.schema_timeout;
        let operation = admin
            .update_database_ddl()
            .set_database(conn.database.clone())
            .set_statements(statements)
            .poller()
            .until_done();
        match tokio::time::timeout(timeout, operation).await {
            Err(_) => Err(spanner_error(step)(StoreError::Timeout(timeout))),
            Ok(Err(e)) => {
                let ctx = ErrorContext::new(&conn.database, &conn.options, None);
                Err(spanner_error(step)(map_error(&ctx, step, e)))
            }
            Ok(Ok(())) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tables_columns_come_from_the_migrations_and_a_foreign_table_is_told_apart() {
        let columns = table_columns(&TableNames::default());
        let locks = columns.iter().find(|t| t.role == "locks").unwrap();
        let set = |cs: &[&str]| cs.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(
            locks.created,
            set(&[
                "group_name",
                "lock_name",
                "holder",
                "token",
                "lease_us",
                "heartbeat",
                "granted_at"
            ])
        );
        assert_eq!(locks.added, set(&["holder_incarnation"]));
        assert_eq!(
            locks.differs(&locks.created),
            None,
            "a version 1 table is hedge's"
        );
        let members = columns.iter().find(|t| t.role == "members").unwrap();
        let differs = locks
            .differs(&members.created.union(&members.added).cloned().collect())
            .unwrap();
        assert!(
            differs.contains("missing columns granted_at, holder, lease_us, lock_name, token"),
            "{differs}"
        );
        assert!(
            differs.contains("unknown columns address, incarnation, joined_at, member_id, ttl_us"),
            "{differs}"
        );
        let schema = columns.iter().find(|t| t.role == "schema").unwrap();
        assert_eq!(schema.created, set(&["table_set", "version", "updated_at"]));
    }

    #[test]
    fn default_names_are_valid_and_versions_are_ordered() {
        let tables = TableNames::default();
        tables.validate().unwrap();
        let versions: Vec<i64> = migrations(&tables).iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        assert_eq!(ddl(&tables).len(), 10);
        // Every item says how to tell it was applied.
        let v4 = &migrations(&tables)[3];
        assert_eq!(v4.version, 4);
        assert!(
            v4.items
                .iter()
                .any(|i| i.index.as_deref() == Some("hedge_log_by_request"))
        );
    }
}
