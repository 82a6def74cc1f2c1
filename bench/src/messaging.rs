//! The messaging benchmark: send round trip and throughput to the leader, broadcast latency to 10
//! and 50 members, and how long a join takes to be visible to every member.
//!
//! Sends and broadcasts never touch the store, so they run on the in-memory store (heartbeats and
//! polls of the emulator would only add noise); the join measurement runs on the chosen backend
//! (the Spanner emulator by default), since a join starts with the member's first heartbeat.
//! Every member is a full `Hedge` with its own peer server on loopback, all in this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hedge::store::Store;
use hedge::{
    BroadcastOptions, ElectionTimings, GroupSecret, Hedge, HedgeGuard, MemoryStore, Message,
    PeerOptions, SendOptions,
};
use serde::Serialize;
use tokio::time::{Instant, sleep, timeout};

use crate::BackendKind;
use crate::election::BenchError;
use crate::stats::{Summary, summarize};

/// Options of the messaging benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Sequential sends measured for the round trip.
    #[arg(long, default_value_t = 5000)]
    sends: u32,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 3)]
    rps_seconds: u64,
    /// Broadcasts measured per group size.
    #[arg(long, default_value_t = 200)]
    broadcasts: u32,
    /// Join trials.
    #[arg(long, default_value_t = 20)]
    joins: u32,
    /// The store of the join measurement.
    #[arg(long, value_enum, default_value_t = BackendKind::Spanner)]
    backend: BackendKind,
}

/// What the benchmark prints with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    backend: &'static str,
    payload_bytes: usize,
    send_rtt_us: Option<Summary>,
    send_rps: f64,
    send_rps_callers: usize,
    broadcast_ms: BTreeMap<String, Option<Summary>>,
    join_visible_ms: Option<Summary>,
}

/// A member and its running loop.
struct Member {
    hedge: Hedge,
    guard: HedgeGuard,
}

fn secret() -> Result<GroupSecret, BenchError> {
    GroupSecret::new("the hedge benchmark's group secret")
        .map_err(|e| BenchError::Setup(e.to_string()))
}

async fn start(
    store: Arc<dyn Store>,
    group: &str,
    id: &str,
    timings: ElectionTimings,
) -> Result<Member, BenchError> {
    let hedge = Hedge::builder(group)
        .member_id(id)
        .shared_store(store)
        .election_timings(timings)
        .peer(
            PeerOptions::new(secret()?).listen(
                "127.0.0.1:0"
                    .parse()
                    .map_err(|_| BenchError::Setup("address".into()))?,
            ),
        )
        .on_send(|m: Message| async move { Ok(m.payload) })
        .on_broadcast(|m: Message| async move { Ok(m.payload) })
        .build()
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let guard = hedge.spawn();
    Ok(Member { hedge, guard })
}

async fn start_group(
    store: Arc<dyn Store>,
    group: &str,
    n: usize,
) -> Result<Vec<Member>, BenchError> {
    let timings = ElectionTimings::from_lease(Duration::from_secs(2));
    let mut members = Vec::new();
    for i in 0..n {
        members.push(start(store.clone(), group, &format!("m{i}"), timings).await?);
    }
    let ok = timeout(Duration::from_secs(30), async {
        loop {
            let leader = members.iter().filter(|m| m.hedge.is_leader()).count() == 1;
            let views = members.iter().all(|m| m.hedge.members().len() == n);
            let known = members.iter().all(|m| m.hedge.leader().is_some());
            if leader && views && known {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ok.map_err(|_| BenchError::Setup(format!("{n} members did not converge in 30 s")))?;
    Ok(members)
}

async fn stop(members: Vec<Member>) {
    for m in members {
        let _ = m.guard.shutdown(Duration::from_secs(5)).await;
    }
}

fn send_error(e: hedge::MessagingError) -> BenchError {
    BenchError::Setup(format!("a send failed: {e}"))
}

/// Runs the benchmark and prints the report.
pub async fn run(args: Args) -> Result<(), BenchError> {
    const PAYLOAD: usize = 1024;
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let options = SendOptions {
        timeout: Duration::from_secs(5),
    };

    // Round trip: one caller on a follower, sequential 1 KiB sends.
    let members = start_group(Arc::new(MemoryStore::new()), "bench-send", 3).await?;
    let followers: Vec<Hedge> = members
        .iter()
        .filter(|m| !m.hedge.is_leader())
        .map(|m| m.hedge.clone())
        .collect();
    let caller = followers[0].clone();
    for _ in 0..200 {
        caller
            .send_with(payload.clone(), options)
            .await
            .map_err(send_error)?;
    }
    let mut rtt = Vec::with_capacity(args.sends as usize);
    for _ in 0..args.sends {
        let started = Instant::now();
        caller
            .send_with(payload.clone(), options)
            .await
            .map_err(send_error)?;
        rtt.push(started.elapsed().as_secs_f64() * 1e6);
    }
    progress(args.json, "send round trip");

    // Throughput: 32 callers, 16 on each follower.
    const CALLERS: usize = 32;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.rps_seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (hedge, payload, done, failed) = (
                followers[i % 2].clone(),
                payload.clone(),
                done.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    match hedge.send_with(payload.clone(), options).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let send_rps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(BenchError::Setup(format!(
            "{} sends failed during the throughput run",
            failed.load(Ordering::Relaxed)
        )));
    }
    stop(members).await;
    progress(args.json, "send throughput");

    // Broadcast to 10 and 50 members (the caller included).
    let mut broadcast_ms = BTreeMap::new();
    for n in [10usize, 50] {
        let members = start_group(
            Arc::new(MemoryStore::new()),
            &format!("bench-broadcast-{n}"),
            n,
        )
        .await?;
        let caller = members[0].hedge.clone();
        let small = bytes::Bytes::from_static(b"ping");
        for _ in 0..20 {
            caller
                .broadcast(small.clone(), BroadcastOptions::default())
                .await;
        }
        let mut samples = Vec::new();
        for _ in 0..args.broadcasts {
            let started = Instant::now();
            let results = caller
                .broadcast(small.clone(), BroadcastOptions::default())
                .await;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            if results.len() != n || results.values().any(Result::is_err) {
                return Err(BenchError::Setup(format!(
                    "a broadcast to {n} members failed"
                )));
            }
        }
        broadcast_ms.insert(n.to_string(), summarize(&samples));
        stop(members).await;
        progress(args.json, &format!("broadcast to {n}"));
    }

    // Join visible to every member, on the chosen backend.
    let backend = crate::election::open(args.backend).await?;
    let timings = ElectionTimings::default();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            start(
                backend.stores[i].clone(),
                "bench-join",
                &format!("m{i}"),
                timings,
            )
            .await?,
        );
    }
    let mut joins = Vec::new();
    for trial in 0..args.joins as usize {
        let id = format!("joiner-{trial}");
        let started = Instant::now();
        let joiner = start(
            backend.stores[3 + trial].clone(),
            "bench-join",
            &id,
            timings,
        )
        .await?;
        let visible = timeout(Duration::from_secs(30), async {
            loop {
                if members
                    .iter()
                    .all(|m| m.hedge.members().iter().any(|x| x.id == id))
                {
                    return;
                }
                sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        visible.map_err(|_| BenchError::Setup(format!("{id} was not visible within 30 s")))?;
        joins.push(started.elapsed().as_secs_f64() * 1e3);
        let _ = joiner.guard.shutdown(Duration::from_secs(5)).await;
        progress(args.json, &format!("join {trial}"));
    }
    stop(members).await;

    let report = Report {
        scenario: "messaging",
        backend: match args.backend {
            BackendKind::Spanner => "spanner-emulator",
            BackendKind::Memory => "memory",
        },
        payload_bytes: PAYLOAD,
        send_rtt_us: summarize(&rtt),
        send_rps,
        send_rps_callers: CALLERS,
        broadcast_ms,
        join_visible_ms: summarize(&joins),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// One graceful handover between two members with the peer transport: milliseconds from the
/// leader's shutdown until the other member leads (release, announcement, nudged acquire), and
/// the margin violations both elections counted.
pub(crate) async fn graceful_handover(
    stores: [Arc<dyn Store>; 2],
    timings: ElectionTimings,
    trial: u32,
    bound: Duration,
) -> Result<(f64, u64), BenchError> {
    let group = format!("bench-handover-{trial}");
    let mut members = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        members.push(start(store, &group, &format!("m{i}"), timings).await?);
    }
    let converged = timeout(bound, async {
        loop {
            let leaders = members.iter().filter(|m| m.hedge.is_leader()).count();
            let views = members.iter().all(|m| m.hedge.members().len() == 2);
            let known = members.iter().all(|m| m.hedge.leader().is_some());
            if leaders == 1 && views && known {
                return;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    converged.map_err(|_| BenchError::NoLeader(bound, trial))?;
    // Let the candidate settle into its polling, as a long-running candidate would be.
    sleep(timings.poll_interval).await;
    let leader = members
        .iter()
        .position(|m| m.hedge.is_leader())
        .ok_or(BenchError::NoLeader(bound, trial))?;
    let old = members.remove(leader);
    let released_at = Instant::now();
    let shutdown = tokio::spawn(old.guard.shutdown(Duration::from_secs(5)));
    let old = old.hedge;
    let next = &members[0].hedge;
    timeout(bound, async {
        while !next.is_leader() {
            sleep(Duration::from_micros(200)).await;
        }
    })
    .await
    .map_err(|_| BenchError::NoLeader(bound, trial))?;
    let elapsed = released_at.elapsed().as_secs_f64() * 1e3;
    let _ = shutdown.await;
    let violations = old.election().margin_violations()
        + members
            .iter()
            .map(|m| m.hedge.election().margin_violations())
            .sum::<u64>();
    stop(members).await;
    Ok((elapsed, violations))
}

fn progress(json: bool, what: &str) {
    if !json {
        eprintln!("{what}: done");
    }
}
