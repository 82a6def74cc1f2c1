//! The `Hedge` handle on the memory store, with paused tokio time.

use std::time::Duration;

use async_trait::async_trait;
use hedge::store::{
    AcquireOutcome, Candidate, DefineOutcome, LockKey, LockState, LogEntry, LogQuery,
    MemberHeartbeat, MemberRecord, PermitOutcome, PermitRenewal, PermitRequest, PutOutcome,
    PutRequest, ReleaseOutcome, RenewOutcome, Retention, SemaphoreKey, SemaphoreState, Store,
    StoreError, StoreResult,
};
use hedge::{ElectionTimings, Hedge, HedgeError, LeadershipEvent, LostReason, MemoryStore};
use tokio_util::sync::CancellationToken;

async fn member(store: &MemoryStore, id: &str) -> Hedge {
    Hedge::builder("orders")
        .member_id(id)
        .store(store.clone())
        .build()
        .await
        .expect("valid member")
}

#[tokio::test(start_paused = true)]
async fn a_member_leads_reports_its_token_and_joins_the_membership() {
    let store = MemoryStore::new();
    let a = member(&store, "a").await;
    let mut watch = a.watch();
    let guard = a.spawn();
    let term = a.wait_for_term().await.expect("leads");
    assert!(a.is_leader());
    assert_eq!(a.token(), Some(term.token));
    assert_eq!(
        a.leader().map(|l| (l.id, l.token)),
        Some(("a".to_owned(), term.token))
    );
    watch.changed().await.expect("an event");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ids: Vec<String> = a
        .members_from_store()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["a"]);

    // Shutting down releases the lock at once and leaves the group.
    guard
        .shutdown(Duration::from_secs(5))
        .await
        .expect("clean stop");
    assert!(!a.is_leader());
    assert!(term.cancelled.is_cancelled());
    assert!(matches!(
        &*a.watch().borrow(),
        LeadershipEvent::Lost {
            reason: LostReason::Released,
            ..
        } | LeadershipEvent::LeaderChanged { leader: None }
    ));
    let state = store
        .lock_state(&LockKey::new("orders", LockKey::LEADER))
        .await
        .expect("read");
    assert!(state.expect("row").holder.is_none());
    assert!(a.members_from_store().await.expect("members").is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_hands_over_to_a_waiting_member() {
    let store = MemoryStore::new();
    let a = member(&store, "a").await;
    let b = member(&store, "b").await;
    let guard_a = a.spawn();
    a.wait_for_term().await.expect("leads");
    let _guard_b = b.spawn();
    assert_eq!(b.wait_for_any_leader().await.expect("a leader").id, "a");
    let poll = ElectionTimings::default().poll_interval;
    let dropped_at = tokio::time::Instant::now();
    drop(guard_a);
    b.wait_for_term().await.expect("leads");
    assert!(dropped_at.elapsed() <= poll);
}

#[tokio::test(start_paused = true)]
async fn several_named_locks_per_member() {
    let store = MemoryStore::new();
    let a = member(&store, "a").await;
    let jobs = a.lock("jobs").expect("valid lock");
    let _guard = jobs.spawn();
    let term = jobs.wait_for_term().await.expect("leads");
    assert!(
        jobs.is_leader() && !a.is_leader(),
        "the group lock is not run yet"
    );
    assert_eq!(jobs.key(), &LockKey::new("orders", "jobs"));
    assert!(term.token > 0);
}

#[tokio::test]
async fn a_builder_without_a_store_says_what_to_set() {
    let err = Hedge::builder("g")
        .member_id("a")
        .build()
        .await
        .expect_err("no store");
    assert!(matches!(err, HedgeError::NoStore));
    assert!(err.to_string().contains("HEDGE_SPANNER_DATABASE"), "{err}");
}

#[tokio::test]
async fn invalid_timings_and_names_are_rejected_before_anything_runs() {
    let bad = ElectionTimings {
        renew_interval: Duration::from_secs(10),
        ..ElectionTimings::default()
    };
    let err = Hedge::builder("g")
        .store(MemoryStore::new())
        .election_timings(bad)
        .build()
        .await
        .expect_err("invalid timings");
    assert!(
        err.to_string()
            .contains("renew interval (10s) must be below lease (5s)"),
        "{err}"
    );
    let err = Hedge::builder("g")
        .member_id("has space")
        .store(MemoryStore::new())
        .build()
        .await
        .expect_err("bad id");
    assert!(err.to_string().contains("invalid member id"), "{err}");
    let err = Hedge::builder("g")
        .store(MemoryStore::new())
        .build()
        .await
        .and_then(|h| h.lock(""))
        .expect_err("bad lock");
    assert!(err.to_string().contains("invalid lock name"), "{err}");
}

/// A store whose tables are missing: every call fails in a way retrying cannot fix.
#[derive(Debug)]
struct NoTables;

fn missing() -> StoreError {
    StoreError::MissingTable {
        table: "hedge_locks".into(),
    }
}

#[async_trait]
impl Store for NoTables {
    async fn acquire(
        &self,
        _: &LockKey,
        _: &Candidate,
        _: Duration,
    ) -> StoreResult<AcquireOutcome> {
        Err(missing())
    }
    async fn renew(&self, _: &LockKey, _: &str, _: u64, _: Duration) -> StoreResult<RenewOutcome> {
        Err(missing())
    }
    async fn release(&self, _: &LockKey, _: &str, _: u64) -> StoreResult<ReleaseOutcome> {
        Err(missing())
    }
    async fn lock_state(&self, _: &LockKey) -> StoreResult<Option<LockState>> {
        Err(missing())
    }
    async fn heartbeat_member(&self, _: &str, _: &MemberHeartbeat) -> StoreResult<()> {
        Err(missing())
    }
    async fn remove_member(&self, _: &str, _: &str) -> StoreResult<()> {
        Err(missing())
    }
    async fn list_members(&self, _: &str) -> StoreResult<Vec<MemberRecord>> {
        Err(missing())
    }
    async fn put(&self, _: &str, _: &PutRequest) -> StoreResult<PutOutcome> {
        Err(missing())
    }
    async fn read_log(&self, _: &str, _: &str, _: LogQuery) -> StoreResult<Vec<LogEntry>> {
        Err(missing())
    }
    async fn list_log_keys(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> StoreResult<Vec<String>> {
        Err(missing())
    }
    async fn trim_log(&self, _: &str, _: &str, _: Retention) -> StoreResult<u64> {
        Err(missing())
    }
    async fn define_semaphore(&self, _: &SemaphoreKey, _: u32) -> StoreResult<DefineOutcome> {
        Err(missing())
    }
    async fn semaphore_state(&self, _: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        Err(missing())
    }
    async fn acquire_permit(
        &self,
        _: &SemaphoreKey,
        _: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        Err(missing())
    }
    async fn renew_permit(
        &self,
        _: &SemaphoreKey,
        _: &str,
        _: u64,
        _: Duration,
    ) -> StoreResult<PermitRenewal> {
        Err(missing())
    }
    async fn release_permit(&self, _: &SemaphoreKey, _: &str) -> StoreResult<ReleaseOutcome> {
        Err(missing())
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_table_stops_the_member_with_an_error_that_says_how_to_fix_it() {
    let member = Hedge::builder("g")
        .member_id("a")
        .store(NoTables)
        .build()
        .await
        .expect("valid config");
    let err = member
        .run(CancellationToken::new())
        .await
        .expect_err("cannot run without tables");
    let message = err.to_string();
    assert!(
        message.contains("table `hedge_locks` does not exist"),
        "{message}"
    );
    assert!(message.contains("ensure_schema"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_member_with_the_same_id_waits_for_its_old_lease() {
    let store = MemoryStore::new();
    let old = member(&store, "pod-a").await;
    let guard = old.spawn();
    let old_term = old.wait_for_term().await.expect("leads");
    guard.abort(); // the container crashes; the pod (and its name) stays
    let restarted = member(&store, "pod-a").await;
    let mut events = restarted.events();
    let _guard = restarted.spawn();
    let started = tokio::time::Instant::now();
    // While the old incarnation's lease runs, the restarted member knows no leader: it is not
    // told that "pod-a" leads while it does not.
    tokio::time::sleep(ElectionTimings::default().poll_interval * 2).await;
    assert!(!restarted.is_leader());
    assert_eq!(restarted.leader(), None);
    let term = restarted.wait_for_term().await.expect("leads");
    let timings = ElectionTimings::default();
    assert!(
        started.elapsed() >= timings.lease - timings.renew_interval,
        "{:?}",
        started.elapsed()
    );
    assert!(term.token > old_term.token);
    let mut elected = false;
    while let Ok(event) = events.try_recv() {
        match event {
            LeadershipEvent::Elected { .. } => elected = true,
            LeadershipEvent::LeaderChanged { leader: Some(l) } if l.id == "pod-a" => {
                assert!(
                    elected,
                    "LeaderChanged named this member before it was elected"
                );
                assert_eq!(l.token, term.token);
            }
            _ => {}
        }
    }
    assert!(elected);
}
