//! The chaos benchmark: the chaos harness of `hedge-tests` (member processes on the Spanner
//! emulator, faults at random under a printed seed, the checkers) in its short or long profile,
//! reported as failover times by fault kind, leader changes and violations.
//!
//! `--short` is two runs (every fault kind in each, one run with the emulator aborting
//! transactions), a few minutes; `--long` is `--runs` runs of 30 faults each. `HEDGE_CHAOS_SEED`
//! or `--seed` replays a profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hedge_tests::chaos::schedule::seed_from_env;
use hedge_tests::chaos::{Profile, cluster::WorkloadCounts};
use hedge_tests::chaos::{ProfileReport, member_program, run_profile};
use serde::Serialize;

use crate::stats::{Summary, summarize};

/// Options of the chaos benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// The short profile (the default).
    #[arg(long, conflicts_with = "long")]
    short: bool,
    /// The long profile.
    #[arg(long)]
    long: bool,
    /// Runs of the long profile (about 3 minutes each).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// The profile's seed (default: `HEDGE_CHAOS_SEED`, or a fresh one).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the summary and every run's full report (each fault, each violation, each
    /// failover sample) to this file as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The benchmark's errors.
#[derive(Debug, thiserror::Error)]
pub enum ChaosBenchError {
    /// The seed is not a number.
    #[error("{0}")]
    Seed(String),
    /// A run could not be carried out.
    #[error(transparent)]
    Run(#[from] hedge_tests::chaos::ChaosError),
    /// The member program cannot be found.
    #[error(transparent)]
    Program(#[from] hedge_tests::chaos::program::ProgramError),
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Write(String),
}

/// The JSON the benchmark prints.
#[derive(Debug, Serialize)]
pub struct ChaosSummary {
    /// The profile's name.
    pub profile: String,
    /// The profile's seed (replays it).
    pub seed: u64,
    /// Runs (each a fresh emulator, database and members).
    pub runs: u32,
    /// Members per run.
    pub members: usize,
    /// Faults injected, by kind (`aborted_transactions`: runs with the emulator aborting).
    pub faults: BTreeMap<String, u64>,
    /// Terms granted after each run's first.
    pub leader_changes: u64,
    /// Violations found by the checkers (must be 0).
    pub violations: usize,
    /// The violations, as the checkers report them.
    pub violation_details: Vec<String>,
    /// Problems that are not safety violations (a member exiting by itself, no leader after
    /// the faults).
    pub problems: Vec<String>,
    /// Terms whose process was paused past their deadline.
    pub paused_past_deadline: u64,
    /// The election lease.
    pub lease_ms: u64,
    /// From a fault that ended the leader's term to the next term's start: every kind.
    pub failover_ms: Option<Summary>,
    /// The same, by fault kind.
    pub failover_ms_by_kind: BTreeMap<String, Summary>,
    /// What the workload did.
    pub workload: WorkloadCounts,
    /// Wall time of the whole profile.
    pub duration_s: f64,
}

impl ChaosSummary {
    /// The summary of `report`.
    pub fn of(report: &ProfileReport) -> Self {
        let by_kind = report.failover_ms();
        let all: Vec<f64> = by_kind.values().flatten().copied().collect();
        Self {
            profile: report.profile.name.clone(),
            seed: report.profile.seed,
            runs: report.runs.len() as u32,
            members: report.profile.members,
            faults: report.faults(),
            leader_changes: report.leader_changes(),
            violations: report.violations().len(),
            violation_details: report.violations().iter().map(|v| v.to_string()).collect(),
            problems: report.problems(),
            paused_past_deadline: report.paused_past_deadline(),
            lease_ms: report.profile.lease.as_millis() as u64,
            failover_ms: summarize(&all),
            failover_ms_by_kind: by_kind
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), summarize(v)?)))
                .collect(),
            workload: report.workload(),
            duration_s: report.runs.iter().map(|r| r.duration_s).sum(),
        }
    }
}

/// Runs the profile `args` chooses and returns its report.
pub async fn measure(args: &Args) -> Result<ProfileReport, ChaosBenchError> {
    let seed = match args.seed {
        Some(s) => s,
        None => seed_from_env().map_err(ChaosBenchError::Seed)?,
    };
    let profile = if args.long {
        Profile::long(seed, args.runs)
    } else {
        Profile::short(seed)
    };
    eprintln!(
        "chaos: profile {} with seed {seed} ({} runs of {} faults; replay with --seed {seed})",
        profile.name, profile.runs, profile.faults_per_run
    );
    let program = member_program().await?;
    let report = run_profile(&profile, &program, |run| {
        eprintln!(
            "chaos: run {} (seed {}): {} faults, {} leader changes, {} violations, {} problems, {:.0} s",
            run.index,
            run.seed,
            run.faults.values().sum::<u64>(),
            run.leader_changes,
            run.violations.len(),
            run.problems.len(),
            run.duration_s
        );
    })
    .await?;
    if let Some(path) = &args.report {
        // The summary the benchmark prints, then the profile and every run in full.
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "summary": ChaosSummary::of(&report),
            "profile": report.profile,
            "runs": report.runs,
        }))
        .map_err(|e| ChaosBenchError::Write(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| ChaosBenchError::Write(e.to_string()))?;
    }
    Ok(report)
}

/// Runs the chaos benchmark and prints its summary.
pub async fn run(args: Args) -> Result<(), ChaosBenchError> {
    let report = measure(&args).await?;
    let summary = ChaosSummary::of(&report);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary)
                .map_err(|e| ChaosBenchError::Write(e.to_string()))?
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &ChaosSummary) {
    println!(
        "chaos profile {} (seed {}): {} runs, {} members, lease {} ms, {:.0} s",
        s.profile, s.seed, s.runs, s.members, s.lease_ms, s.duration_s
    );
    println!("faults:");
    for (kind, n) in &s.faults {
        println!("  {kind:<24} {n}");
    }
    println!(
        "leader changes {}, paused past the deadline {}, violations {}",
        s.leader_changes, s.paused_past_deadline, s.violations
    );
    for v in &s.violation_details {
        println!("  violation: {v}");
    }
    for p in &s.problems {
        println!("  problem: {p}");
    }
    if let Some(f) = &s.failover_ms {
        println!(
            "failover (ms): p50 {:.0}, p99 {:.0}, max {:.0}, n {}",
            f.p50, f.p99, f.max, f.n
        );
    }
    for (kind, f) in &s.failover_ms_by_kind {
        println!(
            "  {kind:<24} p50 {:.0}, p99 {:.0}, max {:.0}, n {}",
            f.p50, f.p99, f.max, f.n
        );
    }
    println!("workload: {:?}", s.workload);
}
