//! The hedge example workload and the local group runner.
//!
//! * `hedge-demo local`: three members on the embedded in-memory store in one process. It shows
//!   who leads with which fencing token, crashes the leader (nothing released), prints the new
//!   leader, its token and how long the failover took, then does a graceful handover.
//! * `hedge-demo member`: one member of a real group, configured from the environment the
//!   operator sets up (the group's ConfigMap and Secret, and the downward API). It logs every
//!   leadership event and leaves the group cleanly on SIGTERM.

use std::time::Duration;

use clap::{Parser, Subcommand};
use hedge::{ElectionTimings, Hedge, HedgeError, HedgeGuard, LeadershipEvent, MemoryStore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The hedge demo.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local group on the in-memory store and show a crash failover and a graceful handover.
    Local {
        /// How many members.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=50))]
        members: u16,
        /// The lease in milliseconds (renew and poll intervals are a fifth of it).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(600..=60_000))]
        lease_ms: u64,
    },
    /// Run one member of a group configured from the environment (HEDGE_* variables).
    Member,
}

/// The demo's errors.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error(transparent)]
    Hedge(#[from] HedgeError),
    #[error("no leader was elected within {0:?}")]
    NoLeader(Duration),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Local { members, lease_ms } => {
            local(members.into(), Duration::from_millis(lease_ms)).await
        }
        Command::Member => member().await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hedge-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct LocalMember {
    hedge: Hedge,
    guard: Option<HedgeGuard>,
}

async fn local(count: usize, lease: Duration) -> Result<(), DemoError> {
    let timings = ElectionTimings::from_lease(lease);
    let store = MemoryStore::new();
    println!(
        "hedge local group: {count} members on the in-memory store \
         (lease {:?}, renew every {:?}, poll every {:?}, safety margin {:?})",
        timings.lease, timings.renew_interval, timings.poll_interval, timings.safety_margin
    );
    let mut members = Vec::with_capacity(count);
    for i in 1..=count {
        let hedge = Hedge::builder("demo")
            .member_id(format!("member-{i}"))
            .store(store.clone())
            .election_timings(timings)
            .build()
            .await?;
        let guard = Some(hedge.spawn());
        members.push(LocalMember { hedge, guard });
    }
    let bound = timings.lease + timings.poll_interval * 2;

    let (first, token) = wait_for_leader(&members, bound).await?;
    let ids: Vec<String> = hedge_member_ids(&members[first].hedge).await?;
    println!("members: {}", ids.join(", "));
    println!(
        "{} leads with fencing token {token}",
        members[first].hedge.member_id()
    );

    println!(
        "crashing {} (no release: the others must wait for its lease to expire)",
        members[first].hedge.member_id()
    );
    let crashed_at = Instant::now();
    if let Some(guard) = members[first].guard.take() {
        guard.abort();
    }
    let (second, new_token) = wait_for_leader(&members, bound).await?;
    println!(
        "{} leads with fencing token {new_token} after a failover of {} ms (lease {} ms + poll ≤ {} ms)",
        members[second].hedge.member_id(),
        crashed_at.elapsed().as_millis(),
        timings.lease.as_millis(),
        timings.poll_interval.as_millis()
    );

    println!(
        "stopping {} gracefully (it releases the lock)",
        members[second].hedge.member_id()
    );
    let released_at = Instant::now();
    if let Some(guard) = members[second].guard.take() {
        guard.shutdown(timings.lease).await?;
    }
    let (third, last_token) = wait_for_leader(&members, bound).await?;
    println!(
        "{} leads with fencing token {last_token} after a graceful handover of {} ms",
        members[third].hedge.member_id(),
        released_at.elapsed().as_millis()
    );
    for m in &mut members {
        if let Some(guard) = m.guard.take() {
            guard.shutdown(timings.lease).await?;
        }
    }
    Ok(())
}

async fn hedge_member_ids(hedge: &Hedge) -> Result<Vec<String>, HedgeError> {
    Ok(hedge
        .members_from_store()
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect())
}

/// Waits until one running member leads; returns its index and token.
async fn wait_for_leader(
    members: &[LocalMember],
    within: Duration,
) -> Result<(usize, u64), DemoError> {
    let started = Instant::now();
    while started.elapsed() < within {
        let leader = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.guard.is_some())
            .find_map(|(i, m)| m.hedge.token().map(|t| (i, t)));
        if let Some(found) = leader {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(DemoError::NoLeader(within))
}

async fn member() -> Result<(), DemoError> {
    let hedge = Hedge::from_env().await?;
    info!(group = hedge.group(), member = hedge.member_id(), "joining");
    let shutdown = CancellationToken::new();
    let mut events = hedge.events();
    let watcher = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                LeadershipEvent::Elected { token, .. } => info!(token, "elected"),
                LeadershipEvent::Lost { token, reason, .. } => {
                    info!(token, ?reason, "lost leadership")
                }
                LeadershipEvent::LeaderChanged { leader } => info!(?leader, "leader changed"),
                LeadershipEvent::Stopped { error } => tracing::error!(%error, "election stopped"),
                LeadershipEvent::Started => {}
            }
        }
    });
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_termination().await;
        signal.cancel();
    });
    let result = hedge.run(shutdown).await;
    watcher.abort();
    Ok(result?)
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
