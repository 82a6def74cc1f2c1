//! Multi-member tests with real processes: three `hedge-demo member` processes on the Spanner
//! emulator, configured only through the environment the operator would set. The leader is
//! killed (SIGKILL), stopped gracefully (SIGTERM) and paused (SIGSTOP), and the lock table,
//! read with a client of the test's own, shows who leads.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hedge::store::{LockKey, SpannerStore, Store};
use hedge::{DatabasePath, ElectionTimings};

const GROUP: &str = "procs";
const LEASE: Duration = Duration::from_secs(2);

/// One member process and what it has printed.
struct Process {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(id: &str, db: &DatabasePath, emulator_host: &str) -> Self {
        let timings = ElectionTimings::from_lease(LEASE);
        let mut child = Command::new(env!("CARGO_BIN_EXE_hedge-demo"))
            .arg("member")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SPANNER_EMULATOR_HOST", emulator_host)
            .env("HEDGE_GROUP", GROUP)
            .env("HEDGE_SPANNER_DATABASE", db.to_string())
            .env("POD_NAME", id)
            // Each member serves its HTTP API on a port of its own.
            .env("HEDGE_DEMO_HTTP_ADDR", "127.0.0.1:0")
            .env("HEDGE_LEASE_MS", timings.lease.as_millis().to_string())
            .env(
                "HEDGE_RENEW_INTERVAL_MS",
                timings.renew_interval.as_millis().to_string(),
            )
            .env(
                "HEDGE_POLL_INTERVAL_MS",
                timings.poll_interval.as_millis().to_string(),
            )
            .env(
                "HEDGE_SAFETY_MARGIN_MS",
                timings.safety_margin.as_millis().to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hedge-demo member");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().expect("output").push(line);
                }
            });
        }
        Self { child, output }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we spawned and own; it has no memory effects on us.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    fn printed(&self, needle: &str) -> bool {
        self.output
            .lock()
            .expect("output")
            .iter()
            .any(|l| l.contains(needle))
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The live holder of the group's leader lock, as the store sees it.
async fn holder(store: &SpannerStore) -> Option<(String, u64)> {
    let key = LockKey::new(GROUP, LockKey::LEADER);
    let state = store.lock_state(&key).await.ok()??;
    state.holder.map(|h| (h.id, h.token))
}

async fn wait_for_holder(
    store: &SpannerStore,
    within: Duration,
    not: Option<&str>,
) -> (String, u64) {
    let started = Instant::now();
    loop {
        if let Some((id, token)) = holder(store).await
            && Some(id.as_str()) != not
        {
            return (id, token);
        }
        assert!(
            started.elapsed() < within,
            "no new leader within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running group: its emulator, a client of the test's own, the processes and who leads.
struct Group {
    _emulator: hedge_tests::Emulator,
    store: SpannerStore,
    processes: BTreeMap<String, Process>,
    leader: String,
    token: u64,
}

/// Starts three member processes on a fresh database and waits for a leader; `None` when no
/// emulator is installed and none is required.
async fn start_group() -> Option<Group> {
    let emulator = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("processes"),
        false,
    )
    .await?;
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("database");
    let store = emulator.store(&db).await.expect("store");
    let processes = ["pod-a", "pod-b", "pod-c"]
        .into_iter()
        .map(|id| (id.to_owned(), Process::spawn(id, &db, emulator.grpc_host())))
        .collect();
    let (leader, token) = wait_for_holder(&store, Duration::from_secs(20), None).await;
    Some(Group {
        _emulator: emulator,
        store,
        processes,
        leader,
        token,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_process_is_replaced_and_its_token_never_returns() {
    let Some(Group {
        store,
        mut processes,
        leader,
        token,
        // Bound, not `..`: an unbound field would be dropped here, stopping the emulator.
        _emulator,
    }) = start_group().await
    else {
        return;
    };
    let killed_at = Instant::now();
    let mut process = processes
        .remove(&leader)
        .expect("the leader is one of ours");
    process.child.kill().expect("SIGKILL");
    let _ = process.child.wait();
    let timings = ElectionTimings::from_lease(LEASE);
    let (next, next_token) = wait_for_holder(&store, timings.lease * 3, Some(&leader)).await;
    assert!(next_token > token, "token {next_token} after {token}");
    assert!(processes.contains_key(&next));
    eprintln!("failover after SIGKILL: {:?}", killed_at.elapsed());
    // Every survivor knows of the new leader, and the members table shows who is in the group.
    let members: Vec<String> = store
        .list_members(GROUP)
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.id)
        .collect();
    for id in processes.keys() {
        assert!(members.contains(id), "{id} missing from {members:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lock_and_a_candidate_takes_over_within_a_poll() {
    let Some(Group {
        store,
        mut processes,
        leader,
        token,
        // Bound, not `..`: an unbound field would be dropped here, stopping the emulator.
        _emulator,
    }) = start_group().await
    else {
        return;
    };
    let mut process = processes.remove(&leader).expect("ours");
    process.signal(libc::SIGTERM);
    let status = process.child.wait().expect("exit status");
    assert!(
        status.success(),
        "graceful exit: {status:?}\n{}",
        process.output()
    );
    assert!(process.printed("released"), "{}", process.output());
    let released_at = Instant::now();
    let timings = ElectionTimings::from_lease(LEASE);
    let (_, next_token) = wait_for_holder(&store, timings.lease, Some(&leader)).await;
    assert!(next_token > token);
    // Released, not expired: the takeover comes within a poll, well before the lease.
    assert!(
        released_at.elapsed() < timings.lease,
        "took {:?}",
        released_at.elapsed()
    );
    let members: Vec<String> = store
        .list_members(GROUP)
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(
        !members.contains(&leader),
        "a stopped member leaves at once: {members:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_steps_down_when_it_resumes() {
    let Some(Group {
        store,
        processes,
        leader,
        token,
        // Bound, not `..`: an unbound field would be dropped here, stopping the emulator.
        _emulator,
    }) = start_group().await
    else {
        return;
    };
    let process = &processes[&leader];
    process.signal(libc::SIGSTOP);
    let timings = ElectionTimings::from_lease(LEASE);
    let (_, next_token) = wait_for_holder(&store, timings.lease * 3, Some(&leader)).await;
    assert!(next_token > token);
    process.signal(libc::SIGCONT);
    // On resuming, its deadline has passed: it steps down without ever renewing the new term.
    let started = Instant::now();
    while !process.printed("lost leadership") {
        assert!(
            started.elapsed() < timings.lease * 2,
            "no step-down:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (id, still) = wait_for_holder(&store, timings.lease, Some(&leader)).await;
    assert_eq!(
        still, next_token,
        "the resumed process did not disturb the new term of {id}"
    );
}
