//! The command line: flags, each also read from an environment variable (flags win).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::allowlist::AllowEntry;
use crate::telemetry::LogFormat;

/// The hedge operator: reconciles HedgeGroup resources (Spanner schema, the members'
/// configuration, status).
#[derive(Debug, Parser)]
#[command(name = "hedge-operator", version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The operator's settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Print the HedgeGroup CRD as YAML (what crds/hedgegroup.yaml holds).
    Crd,
    /// Run the operator (the default).
    Run,
    /// Print, apply or check hedge's Spanner schema without Kubernetes (the same code the
    /// operator runs for a HedgeGroup).
    Schema(Box<SchemaArgs>),
}

/// `hedge-operator schema ...`.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct SchemaArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SchemaAction,
}

/// The schema subcommands.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum SchemaAction {
    /// Print the DDL of the newest schema for these table names (for `gcloud spanner databases
    /// ddl update --ddl-file`, or a DBA who provisions by hand).
    Print {
        /// The table names.
        #[command(flatten)]
        tables: TableArgs,
    },
    /// Create the missing tables and columns and record the version (idempotent: a current
    /// schema is left untouched). Needs roles/spanner.databaseAdmin on the database.
    Apply {
        /// The database and table names.
        #[command(flatten)]
        target: SchemaTarget,
    },
    /// Report the version recorded and what is missing; exits 1 when the schema is not
    /// current, 2 when it cannot be checked. Changes nothing (roles/spanner.databaseReader is
    /// enough).
    Check {
        /// The database and table names.
        #[command(flatten)]
        target: SchemaTarget,
    },
}

/// The table names of a table set: flags, or the members' own variables.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct TableArgs {
    /// The lock table.
    #[arg(long, env = "HEDGE_LOCK_TABLE", default_value = "hedge_locks")]
    pub lock_table: String,
    /// The member table.
    #[arg(long, env = "HEDGE_MEMBER_TABLE", default_value = "hedge_members")]
    pub member_table: String,
    /// The schema table.
    #[arg(long, env = "HEDGE_SCHEMA_TABLE", default_value = "hedge_schema")]
    pub schema_table: String,
    /// The log's key table.
    #[arg(long, env = "HEDGE_LOG_KEY_TABLE", default_value = "hedge_log_keys")]
    pub log_key_table: String,
    /// The log table.
    #[arg(long, env = "HEDGE_LOG_TABLE", default_value = "hedge_log")]
    pub log_table: String,
    /// The semaphore table.
    #[arg(
        long,
        env = "HEDGE_SEMAPHORE_TABLE",
        default_value = "hedge_semaphores"
    )]
    pub semaphore_table: String,
    /// The permit table.
    #[arg(long, env = "HEDGE_PERMIT_TABLE", default_value = "hedge_permits")]
    pub permit_table: String,
}

impl TableArgs {
    /// The table names.
    pub fn names(&self) -> hedge::TableNames {
        hedge::TableNames {
            locks: self.lock_table.clone(),
            members: self.member_table.clone(),
            schema: self.schema_table.clone(),
            log_keys: self.log_key_table.clone(),
            log: self.log_table.clone(),
            semaphores: self.semaphore_table.clone(),
            permits: self.permit_table.clone(),
        }
    }
}

/// A database and its table set.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct SchemaTarget {
    /// The database, `projects/P/instances/I/databases/D`.
    #[arg(long, env = "HEDGE_SPANNER_DATABASE")]
    pub database: hedge::DatabasePath,
    /// The Cloud Spanner emulator's gRPC endpoint (`host:port`) instead of Spanner. Without
    /// it, `SPANNER_EMULATOR_HOST` is honoured, else Spanner is reached with Application
    /// Default Credentials. The emulator's REST endpoint for DDL is
    /// `HEDGE_SPANNER_EMULATOR_REST` (default: the gRPC port 9010 gives 9020).
    #[arg(long, env = "HEDGE_SPANNER_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
    /// How long one Spanner call may take (a schema change may take up to 10 minutes).
    #[arg(long, env = "HEDGE_OPERATOR_SPANNER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub spanner_timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The table names.
    #[command(flatten)]
    pub tables: TableArgs,
}

/// The operator's settings.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints. The IPv6 wildcard also serves
    /// IPv4 where the kernel allows it, and falls back to 0.0.0.0 on hosts without IPv6.
    #[arg(long, env = "HEDGE_OPERATOR_METRICS_ADDR", default_value = "[::]:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "HEDGE_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,hedge_operator=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// Watch HedgeGroups in this namespace only (all namespaces when unset).
    #[arg(long, env = "HEDGE_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// How often a healthy group is reconciled again to refresh its leader and members
    /// (e.g. `30s`, `2m`).
    #[arg(long, env = "HEDGE_OPERATOR_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// The first retry delay after a failed reconcile; it doubles per further failure.
    #[arg(long, env = "HEDGE_OPERATOR_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// The longest retry delay.
    #[arg(long, env = "HEDGE_OPERATOR_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How long one Spanner call may take.
    #[arg(long, env = "HEDGE_OPERATOR_SPANNER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub spanner_timeout: Duration,
    /// This operator's instance in events (the pod name from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// A database HedgeGroups of a namespace may name, as NAMESPACE=PREFIX (NAMESPACE `*` for
    /// all; PREFIX a database path or a prefix of whole segments, e.g.
    /// `team-a=projects/p/instances/i`). Repeat the flag, or separate entries with commas in the
    /// variable. None: every database is allowed (a warning at start).
    #[arg(
        long = "allow-database",
        env = "HEDGE_OPERATOR_ALLOWED_DATABASES",
        value_delimiter = ',',
        value_name = "NAMESPACE=PREFIX"
    )]
    pub allowed_databases: Vec<AllowEntry>,
    /// The most HedgeGroups reconciled at once.
    #[arg(long, env = "HEDGE_OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// How long a configured group may have no member before its MembersSeen condition (and
    /// Ready) turns false.
    #[arg(long, env = "HEDGE_OPERATOR_MEMBERS_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub members_grace: Duration,
    /// How long watch errors may persist before /readyz fails.
    #[arg(long, env = "HEDGE_OPERATOR_WATCH_FAILURE_THRESHOLD", default_value = "2m", value_parser = parse_duration)]
    pub watch_failure_threshold: Duration,
}

/// Parses `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{s:?} is not a duration: use a number and a unit, e.g. 500ms, 30s, 5m, 1h")
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("{s:?} has no unit: use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn the_crd_subcommand_needs_no_settings() {
        let cli = Cli::try_parse_from(["hedge-operator", "crd"]).unwrap();
        assert_eq!(cli.command, Some(Command::Crd));
        let cli = Cli::try_parse_from([
            "hedge-operator",
            "--log-format",
            "json",
            "--resync-interval",
            "10s",
        ])
        .unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.run.log_format, LogFormat::Json);
        assert_eq!(cli.run.resync_interval, Duration::from_secs(10));
        assert_eq!(cli.run.metrics_addr, "[::]:8080".parse().unwrap());
        assert!(cli.run.allowed_databases.is_empty());
    }

    #[test]
    fn the_schema_subcommands_default_to_the_clients_table_names() {
        let cli = Cli::try_parse_from(["hedge-operator", "schema", "print"]).unwrap();
        let Some(Command::Schema(args)) = cli.command else {
            panic!("{:?}", cli.command);
        };
        let SchemaAction::Print { tables } = args.action else {
            panic!("{:?}", args.action);
        };
        assert_eq!(tables.names(), hedge::TableNames::default());
        let cli = Cli::try_parse_from([
            "hedge-operator",
            "schema",
            "check",
            "--database",
            "projects/p/instances/i/databases/d",
            "--lock-table",
            "orders_locks",
            "--json",
        ])
        .unwrap();
        let Some(Command::Schema(args)) = cli.command else {
            panic!("{:?}", cli.command);
        };
        let SchemaAction::Check { target } = args.action else {
            panic!("{:?}", args.action);
        };
        assert_eq!(target.database.database, "d");
        assert_eq!(target.tables.names().locks, "orders_locks");
        assert!(target.json);
        let err = Cli::try_parse_from(["hedge-operator", "schema", "apply", "--database", "d"])
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid Spanner database path"),
            "{err}"
        );
    }

    #[test]
    fn the_allowlist_comes_from_repeated_flags_and_fails_on_a_malformed_entry() {
        let cli = Cli::try_parse_from([
            "hedge-operator",
            "--allow-database",
            "team-a=projects/p/instances/i",
            "--allow-database",
            "*=projects/shared/instances/s/databases/d",
        ])
        .unwrap();
        assert_eq!(cli.run.allowed_databases.len(), 2);
        assert_eq!(cli.run.allowed_databases[0].namespace, "team-a");
        let err =
            Cli::try_parse_from(["hedge-operator", "--allow-database", "team-a"]).unwrap_err();
        assert!(err.to_string().contains("NAMESPACE=PREFIX"), "{err}");
    }
}
