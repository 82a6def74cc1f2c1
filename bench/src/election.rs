//! The election benchmark: crash failover, graceful handover, renewal latency and the cost of
//! `is_leader()`, on the Spanner emulator (default) or the memory store.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use hedge::store::{AcquireOutcome, LockKey, Store};
use hedge::{Election, ElectionGuard, ElectionTimings, MemoryStore};
use serde::Serialize;
use tokio::time::Instant;

use crate::BackendKind;
use crate::stats::{Summary, summarize};

/// Options of the election benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Trials per scenario.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    trials: u32,
    /// The lease in milliseconds; the other timings scale from it as the defaults do.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    lease_ms: u64,
    /// The store to run on.
    #[arg(long, value_enum, default_value_t = BackendKind::Spanner)]
    backend: BackendKind,
}

/// The benchmark's errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The emulator could not be started.
    #[error("could not start the Spanner emulator: {0}")]
    Emulator(String),
    /// Election setup failed.
    #[error(transparent)]
    Election(#[from] hedge::ElectionError),
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] hedge::StoreError),
    /// No leader within the bound.
    #[error("no leader within {0:?} in trial {1}")]
    NoLeader(Duration, u32),
    /// Serialising the report failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// What the benchmark prints with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    backend: &'static str,
    lease_ms: u128,
    renew_interval_ms: u128,
    poll_interval_ms: u128,
    safety_margin_ms: u128,
    crash_failover_ms: Option<Summary>,
    graceful_handover_ms: Option<Summary>,
    renew_latency_ms: Option<Summary>,
    acquire_latency_ms: Option<Summary>,
    is_leader_ns: f64,
}

/// Three member stores (separate clients on Spanner, as separate pods would have) and what keeps
/// the emulator alive.
struct Backend {
    stores: Vec<Arc<dyn Store>>,
    _emulator: Option<hedge_tests::emulator::Emulator>,
}

async fn open(kind: BackendKind) -> Result<Backend, BenchError> {
    match kind {
        BackendKind::Memory => {
            let store = MemoryStore::new();
            Ok(Backend {
                stores: (0..3)
                    .map(|_| Arc::new(store.clone()) as Arc<dyn Store>)
                    .collect(),
                _emulator: None,
            })
        }
        BackendKind::Spanner => {
            let emulator = hedge_tests::emulator::Emulator::start(false)
                .await
                .map_err(|e| BenchError::Emulator(e.to_string()))?
                .ok_or_else(|| {
                    BenchError::Emulator("no emulator found (see the line above)".into())
                })?;
            let db = emulator
                .create_database_with_schema(&hedge::TableNames::default())
                .await
                .map_err(|e| BenchError::Emulator(e.to_string()))?;
            let mut stores: Vec<Arc<dyn Store>> = Vec::new();
            for _ in 0..3 {
                let store = emulator
                    .store(&db)
                    .await
                    .map_err(|e| BenchError::Emulator(e.to_string()))?;
                stores.push(Arc::new(store));
            }
            Ok(Backend {
                stores,
                _emulator: Some(emulator),
            })
        }
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: Args) -> Result<(), BenchError> {
    let timings = ElectionTimings::from_lease(Duration::from_millis(args.lease_ms));
    let backend = open(args.backend).await?;
    let bound = timings.lease * 2 + timings.poll_interval * 2;

    let mut crash = Vec::new();
    for trial in 0..args.trials {
        let key = LockKey::new("bench", format!("crash-{trial}"));
        let mut members = start(&backend, &key, timings, 3)?;
        let leader = wait_for_leader(&members, bound, trial).await?;
        let crashed_at = Instant::now();
        let (_, guard) = members.remove(leader);
        guard.abort();
        wait_for_leader(&members, bound, trial).await?;
        crash.push(ms(crashed_at.elapsed()));
        stop(members).await;
        progress(args.json, "crash failover", trial, args.trials);
    }

    let mut handover = Vec::new();
    for trial in 0..args.trials {
        let key = LockKey::new("bench", format!("handover-{trial}"));
        let mut members = start(&backend, &key, timings, 2)?;
        let leader = wait_for_leader(&members, bound, trial).await?;
        // Let the candidate settle into its polling, as a long-running candidate would be.
        tokio::time::sleep(timings.poll_interval).await;
        let released_at = Instant::now();
        let (_, guard) = members.remove(leader);
        // A failed release just shows up as a longer handover (the lease expires instead).
        let _ = guard.shutdown().await;
        wait_for_leader(&members, bound, trial).await?;
        handover.push(ms(released_at.elapsed()));
        stop(members).await;
        progress(args.json, "graceful handover", trial, args.trials);
    }

    let (acquire, renew) = store_latency(&backend, timings).await?;
    let is_leader_ns = is_leader_cost(&backend, timings).await?;

    let report = Report {
        scenario: "election",
        backend: match args.backend {
            BackendKind::Spanner => "spanner-emulator",
            BackendKind::Memory => "memory",
        },
        lease_ms: timings.lease.as_millis(),
        renew_interval_ms: timings.renew_interval.as_millis(),
        poll_interval_ms: timings.poll_interval.as_millis(),
        safety_margin_ms: timings.safety_margin.as_millis(),
        crash_failover_ms: summarize(&crash),
        graceful_handover_ms: summarize(&handover),
        renew_latency_ms: summarize(&renew),
        acquire_latency_ms: summarize(&acquire),
        is_leader_ns,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(json: bool, what: &str, trial: u32, of: u32) {
    if !json {
        eprintln!("{what}: trial {}/{of}", trial + 1);
    }
}

fn start(
    backend: &Backend,
    key: &LockKey,
    timings: ElectionTimings,
    count: usize,
) -> Result<Vec<(Election, ElectionGuard)>, BenchError> {
    backend.stores[..count]
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let election = Election::new(store.clone(), key.clone(), format!("m{i}"), timings)?;
            let guard = election.spawn();
            Ok((election, guard))
        })
        .collect()
}

async fn stop(members: Vec<(Election, ElectionGuard)>) {
    for (_, guard) in members {
        let _ = guard.shutdown().await;
    }
}

async fn wait_for_leader(
    members: &[(Election, ElectionGuard)],
    within: Duration,
    trial: u32,
) -> Result<usize, BenchError> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(i) = members.iter().position(|(e, _)| e.is_leader()) {
            return Ok(i);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(BenchError::NoLeader(within, trial))
}

/// Latency of single acquire and renew operations on an uncontended lock.
async fn store_latency(
    backend: &Backend,
    timings: ElectionTimings,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let store = &backend.stores[0];
    let mut acquire = Vec::new();
    let mut renew = Vec::new();
    for i in 0..100 {
        let key = LockKey::new("bench", format!("latency-{i}"));
        let started = Instant::now();
        let outcome = store.acquire(&key, &"m0".into(), timings.lease).await?;
        acquire.push(ms(started.elapsed()));
        if let AcquireOutcome::Granted { token } = outcome {
            let started = Instant::now();
            store.renew(&key, "m0", token, timings.lease).await?;
            renew.push(ms(started.elapsed()));
            store.release(&key, "m0", token).await?;
        }
    }
    Ok((acquire, renew))
}

/// The median cost of `is_leader()` on a member that leads, in nanoseconds.
async fn is_leader_cost(backend: &Backend, timings: ElectionTimings) -> Result<f64, BenchError> {
    let key = LockKey::new("bench", "is-leader");
    let members = start(backend, &key, timings, 1)?;
    wait_for_leader(&members, timings.lease * 2, 0).await?;
    let election = &members[0].0;
    const CALLS: u32 = 100_000;
    let mut per_call = Vec::new();
    for _ in 0..50 {
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            black_box(election.is_leader());
        }
        per_call.push(started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS));
    }
    stop(members).await;
    Ok(summarize(&per_call).map_or(0.0, |s| s.p50))
}
