//! The chaos harness's CI profile: three `hedge-demo member` processes with the chaos workload
//! on the Spanner emulator (aborting transactions at random), every fault kind injected once
//! under a printed seed (`HEDGE_CHAOS_SEED` replays it), and every checker over what they
//! recorded. Skipped (one `skipped:` line) without an emulator, as the other emulator tests.

use std::time::Duration;

use hedge_tests::chaos::schedule::seed_from_env;
use hedge_tests::chaos::{ChaosError, Profile, member_program, run_profile};

/// The whole profile must finish well within this (it takes about two minutes).
const LIMIT: Duration = Duration::from_secs(6 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_profile_finds_no_violation() {
    let seed = seed_from_env().expect("a valid seed");
    let profile = Profile::ci(seed);
    let program = member_program().await.expect("the member program");
    let outcome = tokio::time::timeout(
        LIMIT,
        run_profile(&profile, &program, |run| {
            eprintln!(
                "chaos: run {} (seed {}): {} faults, {} leader changes, {} violations, {:.0} s",
                run.index,
                run.seed,
                run.faults.values().sum::<u64>(),
                run.leader_changes,
                run.violations.len(),
                run.duration_s
            );
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("seed {seed}: the profile took longer than {LIMIT:?}"));
    let report = match outcome {
        Ok(report) => report,
        // No emulator: the harness printed the skip line.
        Err(ChaosError::Emulator(_)) => return,
        Err(e) => panic!("seed {seed}: {e}"),
    };
    let violations = report.violations();
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations:\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let problems = report.problems();
    assert!(problems.is_empty(), "seed {seed}: {}", problems.join("\n"));
    // The run did what it claims: every kind of fault, a leader change, and each workload.
    let faults = report.faults();
    assert!(faults.len() >= 4, "seed {seed}: faults {faults:?}");
    assert!(
        report.leader_changes() >= 1,
        "seed {seed}: no leader change"
    );
    let w = report.workload();
    assert!(
        w.register_writes > 0 && w.puts > 0 && w.permits > 0 && w.sends_ok > 0,
        "seed {seed}: the workload did not run: {w:?}"
    );
}
