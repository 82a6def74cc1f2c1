//! The names both the configuration and the store need: the Spanner database path and the
//! table names, with their validation.
//!
//! They live apart from [`crate::config`] and [`crate::store`] so that each of those can use them
//! without depending on the other.

use std::fmt;
use std::str::FromStr;

/// A malformed Spanner database path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid Spanner database path {0:?}: expected projects/<project>/instances/<instance>/databases/<database>"
)]
pub struct DatabasePathError(pub String);

/// A Spanner database path, `projects/P/instances/I/databases/D`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DatabasePath {
    /// The project id.
    pub project: String,
    /// The instance id.
    pub instance: String,
    /// The database id.
    pub database: String,
}

impl DatabasePath {
    /// `projects/P/instances/I`.
    pub fn instance_path(&self) -> String {
        format!("projects/{}/instances/{}", self.project, self.instance)
    }
}

impl FromStr for DatabasePath {
    type Err = DatabasePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid_segment = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        };
        match parts.as_slice() {
            ["projects", p, "instances", i, "databases", d]
                if valid_segment(p) && valid_segment(i) && valid_segment(d) =>
            {
                Ok(Self {
                    project: (*p).to_owned(),
                    instance: (*i).to_owned(),
                    database: (*d).to_owned(),
                })
            }
            _ => Err(DatabasePathError(s.to_owned())),
        }
    }
}

impl fmt::Display for DatabasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/instances/{}/databases/{}",
            self.project, self.instance, self.database
        )
    }
}

/// A table name Spanner would refuse, or two roles sharing one table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableNamesError {
    /// A name that is not a plain identifier (and so could smuggle SQL).
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
    /// A reserved word of Spanner's GoogleSQL, which every statement would have to quote.
    #[error(
        "table name `{name}` for {role} is a reserved word in Spanner SQL: choose another \
         (for example `hedge_{lower}`)",
        lower = name.to_ascii_lowercase()
    )]
    ReservedWord {
        /// Which table.
        role: &'static str,
        /// The name given.
        name: String,
    },
    /// A name too long to derive the name of an index from (Spanner names are at most 128
    /// characters, and the log's index is named after its table).
    #[error(
        "table name `{name}` for {role} is too long: at most {max} characters, since hedge names \
         an index after it"
    )]
    TooLongForIndex {
        /// Which table.
        role: &'static str,
        /// The name given.
        name: String,
        /// The longest name allowed for this role.
        max: usize,
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
}

/// The names of hedge's tables. Several groups share one set of tables: rows are keyed by group.
///
/// Build one with `..TableNames::default()` for the fields you do not name, so that code keeps
/// compiling when hedge adds a table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableNames {
    /// One row per lock: holder, fencing token, lease.
    pub locks: String,
    /// One row per member: address and heartbeat.
    pub members: String,
    /// One row per table set: the schema version.
    pub schema: String,
    /// One row per key of the log: its last sequence number (the parent of [`log`](Self::log)).
    pub log_keys: String,
    /// One row per version of a log key: value, writer, token, commit timestamp. Its index of
    /// idempotency keys is named [`TableNames::log_request_index`].
    pub log: String,
    /// One row per semaphore: its limit and last permit token.
    pub semaphores: String,
    /// One row per permit held: holder, token, lease (a child of [`semaphores`](Self::semaphores)).
    pub permits: String,
}

impl Default for TableNames {
    fn default() -> Self {
        Self {
            locks: "hedge_locks".into(),
            members: "hedge_members".into(),
            schema: "hedge_schema".into(),
            log_keys: "hedge_log_keys".into(),
            log: "hedge_log".into(),
            semaphores: "hedge_semaphores".into(),
            permits: "hedge_permits".into(),
        }
    }
}

/// What the log's index of idempotency keys is named after its table.
pub const LOG_REQUEST_INDEX_SUFFIX: &str = "_by_request";

/// The longest Spanner identifier.
const MAX_IDENTIFIER: usize = 128;

impl TableNames {
    /// Checks that every name is a plain Spanner identifier, not a reserved word, and that the
    /// names differ.
    ///
    /// Table names cannot be bound parameters, so they are the one thing ever formatted into
    /// SQL; this check is what makes that safe.
    pub fn validate(&self) -> Result<(), TableNamesError> {
        let roles = self.roles();
        for (role, name) in roles {
            if !is_identifier(name) {
                return Err(TableNamesError::InvalidTableName {
                    role,
                    name: name.to_owned(),
                });
            }
            if is_reserved_word(name) {
                return Err(TableNamesError::ReservedWord {
                    role,
                    name: name.to_owned(),
                });
            }
        }
        let max = MAX_IDENTIFIER - LOG_REQUEST_INDEX_SUFFIX.len();
        if self.log.len() > max {
            return Err(TableNamesError::TooLongForIndex {
                role: "log",
                name: self.log.clone(),
                max,
            });
        }
        // Tables and indexes share one namespace in Spanner.
        let index = self.log_request_index();
        let mut names = roles.to_vec();
        names.push(("log request index", index.as_str()));
        for (i, (first, a)) in names.iter().enumerate() {
            for (second, b) in &names[i + 1..] {
                if a.eq_ignore_ascii_case(b) {
                    return Err(TableNamesError::DuplicateTableName {
                        first,
                        second,
                        name: (*a).to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Each table with its role.
    pub fn roles(&self) -> [(&'static str, &str); 7] {
        [
            ("locks", self.locks.as_str()),
            ("members", self.members.as_str()),
            ("schema", self.schema.as_str()),
            ("log keys", self.log_keys.as_str()),
            ("log", self.log.as_str()),
            ("semaphores", self.semaphores.as_str()),
            ("permits", self.permits.as_str()),
        ]
    }

    /// The name of the log's unique index of idempotency keys: the log table's name and
    /// [`LOG_REQUEST_INDEX_SUFFIX`].
    pub fn log_request_index(&self) -> String {
        format!("{}{LOG_REQUEST_INDEX_SUFFIX}", self.log)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= MAX_IDENTIFIER
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The reserved keywords of Spanner's GoogleSQL dialect (its lexical structure reference), which
/// cannot be used as unquoted identifiers. Case-insensitive.
const RESERVED_WORDS: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASSERT_ROWS_MODIFIED",
    "AT",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "COLLATE",
    "CONTAINS",
    "CREATE",
    "CROSS",
    "CUBE",
    "CURRENT",
    "DEFAULT",
    "DEFINE",
    "DESC",
    "DISTINCT",
    "ELSE",
    "END",
    "ENUM",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXISTS",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FOLLOWING",
    "FOR",
    "FROM",
    "FULL",
    "GROUP",
    "GROUPING",
    "GROUPS",
    "HASH",
    "HAVING",
    "IF",
    "IGNORE",
    "IN",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LATERAL",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOOKUP",
    "MERGE",
    "NATURAL",
    "NEW",
    "NO",
    "NOT",
    "NULL",
    "NULLS",
    "OF",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PRECEDING",
    "PROTO",
    "RANGE",
    "RECURSIVE",
    "RESPECT",
    "RIGHT",
    "ROLLUP",
    "ROWS",
    "SELECT",
    "SET",
    "SOME",
    "STRUCT",
    "TABLESAMPLE",
    "THEN",
    "TO",
    "TREAT",
    "TRUE",
    "UNBOUNDED",
    "UNION",
    "UNNEST",
    "USING",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHIN",
];

fn is_reserved_word(name: &str) -> bool {
    RESERVED_WORDS.iter().any(|w| w.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_paths_are_checked() {
        let ok: DatabasePath = "projects/p-1/instances/i/databases/d_1".parse().unwrap();
        assert_eq!(ok.instance_path(), "projects/p-1/instances/i");
        assert_eq!(ok.to_string(), "projects/p-1/instances/i/databases/d_1");
        for bad in [
            "",
            "projects/p",
            "projects//instances/i/databases/d",
            "p/i/d",
            "projects/p/instances/i/databases/d/x",
        ] {
            let err = bad.parse::<DatabasePath>().unwrap_err();
            assert!(
                err.to_string().contains("expected projects/<project>"),
                "{err}"
            );
        }
    }

    #[test]
    fn default_names_are_valid() {
        TableNames::default().validate().unwrap();
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
    fn reserved_words_are_rejected_in_any_case() {
        for word in ["Order", "GROUP", "select", "Lookup"] {
            let tables = TableNames {
                members: word.to_owned(),
                ..TableNames::default()
            };
            let err = tables.validate().unwrap_err();
            assert!(
                matches!(
                    &err,
                    TableNamesError::ReservedWord {
                        role: "members",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("reserved word"), "{err}");
        }
        // A reserved word as part of a longer name is fine.
        TableNames {
            locks: "orders_locks".into(),
            ..TableNames::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_log_table_leaves_room_for_its_index_name() {
        let long = TableNames {
            log: format!("l{}", "o".repeat(117)),
            ..TableNames::default()
        };
        assert!(matches!(
            long.validate(),
            Err(TableNamesError::TooLongForIndex {
                role: "log",
                max: 117,
                ..
            })
        ));
        TableNames {
            log: format!("l{}", "o".repeat(116)),
            ..TableNames::default()
        }
        .validate()
        .unwrap();
        // A table named like the index would collide with it.
        let clash = TableNames {
            permits: "hedge_log_by_request".into(),
            ..TableNames::default()
        };
        assert!(matches!(
            clash.validate(),
            Err(TableNamesError::DuplicateTableName { .. })
        ));
    }

    #[test]
    fn two_roles_cannot_share_a_table() {
        let tables = TableNames {
            members: "HEDGE_LOCKS".into(),
            ..TableNames::default()
        };
        assert!(matches!(
            tables.validate(),
            Err(TableNamesError::DuplicateTableName { .. })
        ));
    }
}
