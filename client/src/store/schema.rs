//! The Spanner schema: table names, the DDL of every version, and (with the `spanner` feature)
//! the idempotent [`ensure_schema`] that the operator and the tests both call.
//!
//! The schema is described as an ordered list of [`Migration`]s. Each item of a migration names
//! the table (and column) it creates, so that provisioning can compare the list with what the
//! database has and create exactly what is missing: a fresh database gets everything, an older
//! schema gets the newer items, and an up-to-date one gets nothing at all.

use std::fmt;

/// The newest schema version this crate writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// Errors about table names and schema provisioning.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A table name that Spanner would not accept, or that could smuggle SQL.
    #[error(
        "invalid table name `{name}` for {role}: use 1 to 128 ASCII letters, digits and \
         underscores, starting with a letter"
    )]
    InvalidTableName {
        /// Which table (`locks`, `members`, `schema`).
        role: &'static str,
        /// The name given.
        name: String,
    },
    /// Two roles were given the same table.
    #[error("the {first} and {second} tables must have different names (both are `{name}`)")]
    DuplicateTableName {
        /// One role.
        first: &'static str,
        /// The other role.
        second: &'static str,
        /// The shared name.
        name: String,
    },
    /// The database path is malformed.
    #[error(transparent)]
    Database(#[from] crate::config::DatabasePathError),
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
    /// The admin API or a query failed.
    #[error("schema provisioning failed while {step}: {message}")]
    Spanner {
        /// What was being done.
        step: &'static str,
        /// The error's text.
        message: String,
    },
}

/// The names of hedge's tables. Several groups share one set of tables: rows are keyed by group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableNames {
    /// One row per lock: holder, fencing token, lease.
    pub locks: String,
    /// One row per member: address and heartbeat.
    pub members: String,
    /// One row per table set: the schema version.
    pub schema: String,
}

impl Default for TableNames {
    fn default() -> Self {
        Self {
            locks: "hedge_locks".into(),
            members: "hedge_members".into(),
            schema: "hedge_schema".into(),
        }
    }
}

impl TableNames {
    /// Checks that every name is a plain Spanner identifier and that the names differ.
    ///
    /// Table names cannot be bound parameters, so they are the one thing ever formatted into
    /// SQL; this check is what makes that safe.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let roles = self.roles();
        for (role, name) in roles {
            if !is_identifier(name) {
                return Err(SchemaError::InvalidTableName {
                    role,
                    name: name.to_owned(),
                });
            }
        }
        for (i, (first, a)) in roles.iter().enumerate() {
            for (second, b) in &roles[i + 1..] {
                if a.eq_ignore_ascii_case(b) {
                    return Err(SchemaError::DuplicateTableName {
                        first,
                        second,
                        name: (*a).to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn roles(&self) -> [(&'static str, &str); 3] {
        [
            ("locks", self.locks.as_str()),
            ("members", self.members.as_str()),
            ("schema", self.schema.as_str()),
        ]
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One DDL statement and the table (and column) whose existence shows it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdlItem {
    /// The table the statement creates or alters.
    pub table: String,
    /// The column it adds, when it adds a column to an existing table.
    pub column: Option<String>,
    /// The statement.
    pub statement: String,
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
pub fn migrations(tables: &TableNames) -> Vec<Migration> {
    let TableNames {
        locks,
        members,
        schema,
    } = tables;
    vec![
        Migration {
            version: 1,
            items: vec![
                DdlItem {
                    table: schema.clone(),
                    column: None,
                    statement: format!(
                        "CREATE TABLE {schema} (\n\
                         \x20 table_set STRING(128) NOT NULL,\n\
                         \x20 version INT64 NOT NULL,\n\
                         \x20 updated_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                         ) PRIMARY KEY (table_set)"
                    ),
                },
                DdlItem {
                    table: locks.clone(),
                    column: None,
                    statement: format!(
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
                },
            ],
        },
        Migration {
            version: 2,
            items: vec![DdlItem {
                table: members.clone(),
                column: None,
                statement: format!(
                    "CREATE TABLE {members} (\n\
                     \x20 group_name STRING(253) NOT NULL,\n\
                     \x20 member_id STRING(253) NOT NULL,\n\
                     \x20 address STRING(MAX),\n\
                     \x20 ttl_us INT64 NOT NULL,\n\
                     \x20 heartbeat TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                     \x20 joined_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true),\n\
                     ) PRIMARY KEY (group_name, member_id)"
                ),
            }],
        },
    ]
}

/// The full DDL of the newest version, in order: what a fresh database receives.
pub fn ddl(tables: &TableNames) -> Vec<String> {
    migrations(tables)
        .into_iter()
        .flat_map(|m| m.items.into_iter().map(|i| i.statement))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_and_versions_are_ordered() {
        let tables = TableNames::default();
        tables.validate().unwrap();
        let versions: Vec<i64> = migrations(&tables).iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        assert_eq!(ddl(&tables).len(), 3);
    }

    #[test]
    fn names_that_could_smuggle_sql_are_rejected() {
        for bad in [
            "",
            "1abc",
            "a b",
            "a;DROP TABLE x",
            "a-b",
            "a`b",
            &"a".repeat(129),
        ] {
            let tables = TableNames {
                locks: bad.to_owned(),
                ..TableNames::default()
            };
            let err = tables.validate().unwrap_err();
            assert!(err.to_string().contains("invalid table name"), "{err}");
        }
    }

    #[test]
    fn two_roles_cannot_share_a_table() {
        let tables = TableNames {
            members: "HEDGE_LOCKS".into(),
            ..TableNames::default()
        };
        assert!(matches!(
            tables.validate(),
            Err(SchemaError::DuplicateTableName { .. })
        ));
    }
}
