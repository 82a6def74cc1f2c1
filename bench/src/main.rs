//! Scenario benchmarks for hedge. Each scenario prints a human summary, or one JSON object with
//! `--json`.
//!
//! `cargo run --release -p hedge-bench -- election --json` starts a Cloud Spanner emulator (through
//! the test harness), runs crash-failover and graceful-handover trials, measures `is_leader()`, and
//! prints the figures. `cargo run --release -p hedge-bench -- messaging --json` measures sends,
//! broadcasts and joins between members on loopback.

mod chaos;
mod election;
mod messaging;
mod report;
mod stats;
mod storage;
mod storage_peers;

use clap::{Parser, Subcommand, ValueEnum};

/// hedge scenario benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Leader election: crash failover, graceful handover, the cost of `is_leader()`.
    Election(election::Args),
    /// Messaging: send round trip and throughput, broadcast latency, join visibility.
    Messaging(messaging::Args),
    /// The log and the semaphores: put and get against bare Spanner calls, semaphore cycles,
    /// permit reclaim after a crash.
    Storage(storage::Args),
    /// Chaos: member processes killed, paused and cut off at random under a seed, the
    /// checkers over what they recorded, failover times by fault kind.
    Chaos(chaos::Args),
    /// Every scenario in one go: one JSON file, a markdown table, an SVG of the failover times.
    Report(report::Args),
}

/// Which store the benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The Cloud Spanner emulator, started by the test harness.
    Spanner,
    /// The in-memory store.
    Memory,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().scenario {
        Scenario::Election(args) => election::run(args).await.map_err(|e| e.to_string()),
        Scenario::Messaging(args) => messaging::run(args).await.map_err(|e| e.to_string()),
        Scenario::Storage(args) => storage::run(args).await.map_err(|e| e.to_string()),
        Scenario::Chaos(args) => chaos::run(args).await.map_err(|e| e.to_string()),
        Scenario::Report(args) => report::run(args).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hedge-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
