//! The hedge demo: the command line only; each mode lives in a module of its own.
//!
//! * `hedge-demo local`: a whole group in one process, walked through every feature
//!   ([`local`]), on the in-memory store or Spanner ([`backend`]), with a report ([`report`]).
//! * `hedge-demo member`: one member of a real group with the HTTP API of hedge's Go demo
//!   ([`member`], [`api`]), configured from the `HEDGE_*` environment; [`workload`] is where a
//!   member's extra workloads plug in.
//!
//! docs/demo.md documents both, route by route.

mod api;
mod backend;
mod chaos;
mod handlers;
mod local;
mod member;
mod report;
mod signals;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hedge::{DatabasePath, ElectionTimings};

/// The hedge demo.
#[derive(Debug, Parser)]
#[command(name = "hedge-demo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a group in this process and walk through every feature: election, membership,
    /// put/get, send, broadcast, a semaphore, crash failover, graceful handover.
    Local(LocalArgs),
    /// Run one member of a group (configured by HEDGE_* variables) with its HTTP API.
    Member(member::MemberArgs),
}

#[derive(Debug, Args)]
struct LocalArgs {
    /// How many members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=20))]
    members: u16,
    /// The lease in milliseconds; the other timings are derived from it as hedge's defaults are.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(600..=60_000))]
    lease_ms: u64,
    /// Use this Spanner database (projects/P/instances/I/databases/D) instead of the in-memory
    /// store; its schema must be current. SPANNER_EMULATOR_HOST is honoured.
    #[arg(long, conflicts_with = "emulator")]
    spanner: Option<DatabasePath>,
    /// Start the Cloud Spanner emulator (when installed), create a database with hedge's schema,
    /// and use it.
    #[arg(long)]
    emulator: bool,
    /// Print the report as one JSON object on stdout (the steps go to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the members running afterwards, each serving its HTTP API, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// With --serve: the first member's HTTP port on 127.0.0.1; the others follow it (0: free
    /// ports).
    #[arg(long, default_value_t = 8081)]
    http_port: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A member logs its events (info). The walkthrough prints its own lines and only warnings
    // besides; not the election loop's, whose error on the simulated crash (an aborted task in
    // this process) a crashed process would never get to log.
    let default_filter = match cli.command {
        Command::Member(_) => "info",
        Command::Local(_) => "warn,hedge::election::run=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hedge-demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Local(args) => run_local(args).await,
            Command::Member(args) => member::run(args).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hedge-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_local(args: LocalArgs) -> Result<(), String> {
    let backend = if args.emulator {
        eprintln!("starting the Cloud Spanner emulator and provisioning hedge's schema …");
        backend::Backend::emulator().await
    } else if let Some(database) = args.spanner {
        backend::Backend::spanner(database).await
    } else {
        Ok(backend::Backend::memory())
    }
    .map_err(|e| e.to_string())?;
    let options = local::LocalOptions {
        members: usize::from(args.members),
        timings: ElectionTimings::from_lease(Duration::from_millis(args.lease_ms)),
        json: args.json,
        serve: args.serve.then_some(args.http_port),
    };
    local::run(options, backend)
        .await
        .map(|_report| ())
        .map_err(|e| e.to_string())
}
