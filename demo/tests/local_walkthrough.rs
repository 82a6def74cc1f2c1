//! `hedge-demo local --json` as a process: it exits 0 and prints one JSON object whose keys
//! (the contract CI and docs/demo.md name) show every step did what it says. On the in-memory
//! store with the default timings, then on Spanner: a database the test provisions in the
//! emulator and names with `--spanner` (the binary finds the emulator through
//! `SPANNER_EMULATOR_HOST`, as everywhere in hedge), and with `--emulator`, which starts one.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hedge-demo");

/// Runs `hedge-demo local --json <extra>` and returns its report.
fn local(extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = Command::new(BIN);
    command
        .args(["local", "--json"])
        .args(extra)
        .env_remove("SPANNER_EMULATOR_HOST")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("run hedge-demo local");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON line: {stdout}");
    // The steps went to stderr, one line each.
    for step in [
        "election",
        "membership",
        "put/get",
        "send",
        "broadcast",
        "semaphore",
        "failover",
        "handover",
    ] {
        assert!(stderr.contains(&format!("] {step} ")), "{step}: {stderr}");
    }
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The checks CI makes on the report.
fn check(report: &Value, members: u64, store: &str) {
    let number = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert_eq!(report["members"], members, "{report}");
    assert_eq!(report["store"], store, "{report}");
    let leader = report["leader"].as_str().expect("leader");
    assert!(leader.starts_with("member-"), "{report}");
    assert!(number("token") > 0.0, "{report}");
    assert_eq!(report["leaders_at_once"], 1, "{report}");
    assert_eq!(report["put_get_ok"], true, "{report}");
    assert_eq!(report["send_reply"], "hello hello-world", "{report}");
    assert_eq!(report["broadcast_replies"], members, "{report}");
    for reply in report["broadcast"].as_object().expect("broadcast").values() {
        assert_eq!(reply, "broadcast hello-all", "{report}");
    }
    assert_eq!(report["semaphore_limit"], 2, "{report}");
    let max_held = number("semaphore_max_held");
    assert!((1.0..=2.0).contains(&max_held), "{report}");
    assert_eq!(report["semaphore_grants"].as_u64(), Some(members * 2));
    // The crashed leader is replaced after its lease at most (plus a poll and slack), the
    // gracefully stopped one well before.
    let lease = number("lease_ms");
    assert!(number("failover_ms") > 0.0, "{report}");
    assert!(number("failover_ms") < lease * 3.0, "{report}");
    assert!(number("handover_ms") < number("failover_ms"), "{report}");
    assert!(number("failover_token") > number("token"), "{report}");
    assert!(
        number("handover_token") > number("failover_token"),
        "{report}"
    );
    assert_ne!(report["failover_leader"], report["crashed"]);
    assert_ne!(report["handover_leader"], report["stopped"]);
    assert!(number("duration_ms") >= number("failover_ms"), "{report}");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 8, "{report}");
}

#[test]
fn the_walkthrough_on_the_memory_store_reports_every_step() {
    let report = local(&[], &[]);
    check(&report, 3, "memory");
    assert_eq!(report["lease_ms"], 5000);
    eprintln!("memory store: {report}");
}

#[test]
fn five_members_on_a_short_lease() {
    let report = local(&["--members", "5", "--lease-ms", "1000"], &[]);
    check(&report, 5, "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_on_a_spanner_database() {
    let Some(emulator) = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("local_walkthrough"),
        false,
    )
    .await
    else {
        return;
    };
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("database")
        .to_string();
    let host = emulator.grpc_host().to_owned();
    let rest = emulator.rest_endpoint().to_owned();
    let report = tokio::task::spawn_blocking(move || {
        local(
            &["--spanner", &db, "--lease-ms", "2000"],
            &[
                ("SPANNER_EMULATOR_HOST", &host),
                ("HEDGE_SPANNER_EMULATOR_REST", &rest),
            ],
        )
    })
    .await
    .expect("the walkthrough");
    check(&report, 3, "spanner");
    eprintln!("spanner emulator: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_on_an_emulator_it_starts_itself() {
    // Only to learn whether an emulator is installed (skip, or fail under
    // HEDGE_REQUIRE_SPANNER=1, as every Spanner test); `--emulator` starts its own.
    let Some(probe) = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("local_walkthrough"),
        false,
    )
    .await
    else {
        return;
    };
    drop(probe);
    let report = tokio::task::spawn_blocking(|| local(&["--emulator", "--lease-ms", "2000"], &[]))
        .await
        .expect("the walkthrough");
    check(&report, 3, "spanner-emulator");
}
