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
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(600..=60_000))]
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
    /// A member could not be set up, or a scenario did not complete.
    #[error("{0}")]
    Setup(String),
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
    /// The holder's renewals (200, every 20 ms) on a lock nobody else polls.
    renew_latency_uncontended_ms: Option<Summary>,
    /// The holder's renewals while 10 candidates poll the lock at the default interval
    /// (strong reads; a transaction only when the lock looks free).
    renew_latency_10_candidates_ms: Option<Summary>,
    /// The same, with 10 candidates that open a read-write transaction at every poll, as every
    /// poll did before candidates read first: the "before" of the comparison.
    renew_latency_10_transaction_polls_ms: Option<Summary>,
    /// Renewals the store answered `Expired` while the holder's local deadline was ahead, over
    /// every election of every trial (must be 0).
    margin_violations: u64,
    /// How late a 10 ms tokio sleep wakes while both cores are busy with other threads (the
    /// scheduling slack the step-down lead must cover).
    timer_slack_ms: Option<Summary>,
}

/// Three member stores and ten candidate stores (separate clients on Spanner, as separate pods
/// would have) and what keeps the emulator alive.
pub(crate) struct Backend {
    pub(crate) stores: Vec<Arc<dyn Store>>,
    pub(crate) candidates: Vec<Arc<dyn Store>>,
    _emulator: Option<hedge_tests::emulator::Emulator>,
}

pub(crate) async fn open(kind: BackendKind) -> Result<Backend, BenchError> {
    match kind {
        BackendKind::Memory => {
            let store = MemoryStore::new();
            let share = |n| {
                (0..n)
                    .map(|_| Arc::new(store.clone()) as Arc<dyn Store>)
                    .collect()
            };
            Ok(Backend {
                stores: share(3),
                candidates: share(10),
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
            for _ in 0..13 {
                let store = emulator
                    .store(&db)
                    .await
                    .map_err(|e| BenchError::Emulator(e.to_string()))?;
                stores.push(Arc::new(store));
            }
            let candidates = stores.split_off(3);
            Ok(Backend {
                stores,
                candidates,
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

    let mut margin_violations = 0;
    let mut crash = Vec::new();
    for trial in 0..args.trials {
        let key = LockKey::new("bench", format!("crash-{trial}"));
        let mut members = start(&backend, &key, timings, 3)?;
        let leader = wait_for_leader(&members, bound, trial).await?;
        // Crash at a random moment of the renew cycle, not always just after an election.
        tokio::time::sleep(timings.renew_interval.mul_f64(rand::random_range(1.0..3.0))).await;
        let crashed_at = Instant::now();
        let (crashed, guard) = members.remove(leader);
        guard.abort();
        wait_for_leader(&members, bound, trial).await?;
        crash.push(ms(crashed_at.elapsed()));
        margin_violations += crashed.margin_violations();
        margin_violations += stop(members).await;
        progress(args.json, "crash failover", trial, args.trials);
    }

    // Graceful handover between two full members with the peer transport: the leader shuts
    // down, releases, and tells the other member, whose election tries at once (no poll wait).
    let mut handover = Vec::new();
    for trial in 0..args.trials {
        let stores = [backend.stores[0].clone(), backend.stores[1].clone()];
        let (elapsed, violations) =
            crate::messaging::graceful_handover(stores, timings, trial, bound).await?;
        handover.push(elapsed);
        margin_violations += violations;
        progress(args.json, "graceful handover", trial, args.trials);
    }

    let (acquire, renew) = store_latency(&backend, timings).await?;
    let is_leader_ns = is_leader_cost(&backend, timings).await?;
    let uncontended = renewals_under_polling(&backend, timings, Polling::None).await?;
    let polled = renewals_under_polling(&backend, timings, Polling::Reads).await?;
    let transactions = renewals_under_polling(&backend, timings, Polling::Transactions).await?;
    let timer_slack = timer_slack().await;

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
        renew_latency_uncontended_ms: summarize(&uncontended),
        renew_latency_10_candidates_ms: summarize(&polled),
        renew_latency_10_transaction_polls_ms: summarize(&transactions),
        margin_violations,
        timer_slack_ms: summarize(&timer_slack),
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

/// Stops the members; returns their margin violations.
async fn stop(members: Vec<(Election, ElectionGuard)>) -> u64 {
    let mut violations = 0;
    for (election, guard) in members {
        let _ = guard.shutdown().await;
        violations += election.margin_violations();
    }
    violations
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

/// How candidates poll during a renewal measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polling {
    /// No candidates.
    None,
    /// Ten election loops (a strong read per poll).
    Reads,
    /// Ten tasks that open a read-write acquire transaction at every poll interval.
    Transactions,
}

/// The holder's renewal latency (200 renewals, one every 20 ms) while candidates poll.
async fn renewals_under_polling(
    backend: &Backend,
    timings: ElectionTimings,
    polling: Polling,
) -> Result<Vec<f64>, BenchError> {
    let key = LockKey::new("bench", format!("renew-under-{polling:?}"));
    let holder = &backend.stores[0];
    let AcquireOutcome::Granted { token } = holder
        .acquire(&key, &"holder".into(), timings.lease)
        .await?
    else {
        return Err(BenchError::NoLeader(timings.lease, 0));
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let mut candidates = Vec::new();
    let mut pollers = Vec::new();
    for (i, store) in backend.candidates.iter().enumerate() {
        match polling {
            Polling::None => {}
            Polling::Reads => {
                let election = Election::new(store.clone(), key.clone(), format!("c{i}"), timings)?;
                candidates.push(election.spawn());
            }
            Polling::Transactions => {
                let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
                let candidate = hedge::Candidate::new(format!("c{i}"));
                pollers.push(tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let _ = store.acquire(&key, &candidate, timings.lease).await;
                        let poll = timings
                            .poll_interval
                            .mul_f64(rand::random_range(0.75..=1.0));
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = tokio::time::sleep(poll) => {}
                        }
                    }
                }));
            }
        }
    }
    // Let the candidates spread over their poll cycle.
    tokio::time::sleep(timings.poll_interval).await;
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        holder.renew(&key, "holder", token, timings.lease).await?;
        latencies.push(ms(started.elapsed()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for guard in candidates {
        let _ = guard.shutdown().await;
    }
    for poller in pollers {
        let _ = poller.await;
    }
    holder.release(&key, "holder", token).await?;
    Ok(latencies)
}

/// How late a 10 ms sleep wakes while two threads keep both cores busy (500 samples).
async fn timer_slack() -> Vec<f64> {
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let mut late = Vec::new();
    for _ in 0..500 {
        let asked = Duration::from_millis(10);
        let started = Instant::now();
        tokio::time::sleep(asked).await;
        late.push(ms(started.elapsed().saturating_sub(asked)));
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for hog in hogs {
        let _ = hog.join();
    }
    late
}
