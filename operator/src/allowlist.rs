//! Which databases the HedgeGroups of a namespace may name. The operator's Google service account
//! reaches many databases; without a limit, anyone who may create a HedgeGroup could make the
//! operator run DDL (and, with `DropTables`, `DROP TABLE`) on any of them.
//!
//! Each entry is `NAMESPACE=PREFIX`: HedgeGroups in `NAMESPACE` (`*` for every namespace) may
//! name a database whose path is `PREFIX` or lies under it, path segment by path segment
//! (`projects/p/instances/i` admits `projects/p/instances/i/databases/d`, not
//! `projects/p/instances/i2/...`). An empty list admits every database (and the operator warns
//! at start).

use std::fmt;
use std::str::FromStr;

/// One `NAMESPACE=PREFIX` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    /// The namespace, or `*`.
    pub namespace: String,
    /// The database path prefix.
    pub prefix: String,
}

/// An entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid database allowlist entry {0:?}: use NAMESPACE=PREFIX, e.g. team-a=projects/p/instances/i \
     (NAMESPACE may be *)"
)]
pub struct AllowEntryError(pub String);

impl FromStr for AllowEntry {
    type Err = AllowEntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, prefix) = s
            .split_once('=')
            .ok_or_else(|| AllowEntryError(s.to_owned()))?;
        let (namespace, prefix) = (namespace.trim(), prefix.trim().trim_end_matches('/'));
        if namespace.is_empty() || !prefix.starts_with("projects/") {
            return Err(AllowEntryError(s.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.namespace, self.prefix)
    }
}

/// The allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist(pub Vec<AllowEntry>);

impl Allowlist {
    /// Whether the list is empty (every database is allowed).
    pub fn allows_everything(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a HedgeGroup in `namespace` may name `database`.
    pub fn allows(&self, namespace: &str, database: &str) -> bool {
        self.allows_everything()
            || self.0.iter().any(|e| {
                (e.namespace == "*" || e.namespace == namespace)
                    && (database == e.prefix
                        || database
                            .strip_prefix(e.prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            })
    }

    /// The prefixes `namespace` may use, for the condition message.
    pub fn prefixes_for(&self, namespace: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|e| e.namespace == "*" || e.namespace == namespace)
            .map(|e| e.prefix.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist(entries.iter().map(|e| e.parse().unwrap()).collect())
    }

    #[test]
    fn prefixes_match_whole_path_segments_per_namespace() {
        let allow = list(&[
            "team-a=projects/p/instances/i",
            "*=projects/shared/instances/s/databases/d",
        ]);
        assert!(allow.allows("team-a", "projects/p/instances/i/databases/orders"));
        assert!(!allow.allows("team-a", "projects/p/instances/i2/databases/orders"));
        assert!(!allow.allows("team-b", "projects/p/instances/i/databases/orders"));
        assert!(allow.allows("team-b", "projects/shared/instances/s/databases/d"));
        assert!(!allow.allows("team-b", "projects/shared/instances/s/databases/d2"));
        assert!(Allowlist::default().allows("any", "projects/x/instances/y/databases/z"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["team-a", "=projects/p", "team-a=p/instances/i", "team-a="] {
            assert!(bad.parse::<AllowEntry>().is_err(), "{bad}");
        }
        assert_eq!(
            "team-a=projects/p/"
                .parse::<AllowEntry>()
                .unwrap()
                .to_string(),
            "team-a=projects/p"
        );
    }
}
