//! Deterministic election tests on the memory store with paused tokio time: how a term ends
//! however the loop stops, how errors surface, and that the safety margin is what keeps terms
//! apart (each margin test names the mistake in the election it would catch).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hedge::store::{
    AcquireOutcome, Candidate, ClockSkew, Latency, LockKey, LockState, MemoryStore, ReleaseOutcome,
    RenewOutcome, Store, StoreError, StoreResult,
};
use hedge::{Election, ElectionError, ElectionTimings, Hedge, LeadershipEvent, LostReason};
use hedge_tests::faults::{Fault, FaultyStore, Op};
use hedge_tests::timeline::Timeline;
use tokio::sync::broadcast;
use tokio::time::{Instant, advance, sleep, timeout};
use tokio_util::sync::CancellationToken;

fn key(name: &str) -> LockKey {
    LockKey::new(format!("faults-{name}"), LockKey::LEADER)
}

/// A store with a millisecond of latency each way, as a store over a network has.
fn memory() -> MemoryStore {
    let store = MemoryStore::new();
    store.set_latency(Latency {
        request: Duration::from_millis(1),
        reply: Duration::from_millis(1),
    });
    store
}

fn election(store: Arc<dyn Store>, lock: &LockKey, id: &str) -> Election {
    Election::new(store, lock.clone(), id, ElectionTimings::default()).expect("valid settings")
}

/// Every event received so far.
fn drain(events: &mut broadcast::Receiver<LeadershipEvent>) -> Vec<LeadershipEvent> {
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    seen
}

fn losses(events: &[LeadershipEvent]) -> Vec<(u64, LostReason, Instant, Instant)> {
    events
        .iter()
        .filter_map(|e| match e {
            LeadershipEvent::Lost {
                token,
                reason,
                at,
                deadline,
            } => Some((*token, reason.clone(), *at, *deadline)),
            _ => None,
        })
        .collect()
}

/// Asserts the one term `token` ended exactly once with `reason`, before its deadline.
fn ended_once(events: &[LeadershipEvent], token: u64, reason: LostReason) {
    let lost = losses(events);
    assert_eq!(lost.len(), 1, "exactly one Lost: {events:#?}");
    let (t, r, at, deadline) = &lost[0];
    assert_eq!((*t, r.clone()), (token, reason), "{events:#?}");
    assert!(
        at < deadline,
        "Lost at {at:?} after the deadline {deadline:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A term always ends visibly.

#[tokio::test(start_paused = true)]
async fn an_aborted_loop_ends_its_term_visibly() {
    let e = election(Arc::new(memory()), &key("abort"), "a");
    let mut events = e.events();
    let guard = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    guard.abort();
    sleep(Duration::from_millis(1)).await;
    assert!(term.cancelled.is_cancelled(), "leader work keeps running");
    assert!(!e.is_leader());
    ended_once(&drain(&mut events), term.token, LostReason::Stopped);
    assert!(matches!(e.stopped(), Some(ElectionError::Aborted(_))));
}

#[tokio::test(start_paused = true)]
async fn a_run_future_dropped_by_a_timeout_ends_its_term() {
    let e = election(Arc::new(memory()), &key("timeout"), "a");
    let mut events = e.events();
    let watcher = e.clone();
    let term = tokio::spawn(async move { watcher.wait_for_term().await });
    let result = timeout(Duration::from_secs(3), e.run(CancellationToken::new())).await;
    assert!(result.is_err(), "the caller's timeout fired");
    let term = term.await.expect("joined").expect("led");
    assert!(term.cancelled.is_cancelled());
    ended_once(&drain(&mut events), term.token, LostReason::Stopped);
    // A waiting call learns that the loop is gone instead of waiting forever.
    assert!(matches!(
        e.wait_for_term().await,
        Err(ElectionError::Aborted(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_losing_select_branch_ends_its_term() {
    let e = election(Arc::new(memory()), &key("select"), "a");
    let mut events = e.events();
    let watcher = e.clone();
    let term = tokio::spawn(async move { watcher.wait_for_term().await });
    tokio::select! {
        _ = e.run(CancellationToken::new()) => panic!("the loop does not stop by itself"),
        () = sleep(Duration::from_secs(2)) => {}
    }
    let term = term.await.expect("joined").expect("led");
    assert!(term.cancelled.is_cancelled());
    ended_once(&drain(&mut events), term.token, LostReason::Stopped);
}

/// A store that panics on renewal (a bug in a custom backend).
#[derive(Debug)]
struct PanicsOnRenew(MemoryStore);

hedge_tests::store_with_storage_of!(PanicsOnRenew, 0, {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.0.acquire(key, candidate, lease).await
    }
    async fn renew(&self, _: &LockKey, _: &str, _: u64, _: Duration) -> StoreResult<RenewOutcome> {
        panic!("a bug in the store");
    }
    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.0.release(key, holder, token).await
    }
    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.0.lock_state(key).await
    }
});

#[tokio::test(start_paused = true)]
async fn a_panicking_store_ends_the_term() {
    let e = election(Arc::new(PanicsOnRenew(memory())), &key("panic"), "a");
    let mut events = e.events();
    let guard = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    let err = guard.wait().await.expect_err("the task panicked");
    assert!(matches!(err, ElectionError::Aborted(_)), "{err:?}");
    assert!(term.cancelled.is_cancelled());
    ended_once(&drain(&mut events), term.token, LostReason::Stopped);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_users_token_does_not_end_the_term() {
    let e = election(Arc::new(memory()), &key("child"), "a");
    let _guard = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    term.cancelled.cancel();
    sleep(ElectionTimings::default().lease * 2).await;
    assert_eq!(e.token(), Some(term.token), "the term goes on");
    let again = e.term().expect("still leads");
    assert!(!again.cancelled.is_cancelled(), "a fresh token per caller");
}

#[tokio::test(start_paused = true)]
async fn resigning_releases_the_lock_to_a_waiting_member() {
    let store = memory();
    let lock = key("resign");
    let a = election(Arc::new(store.clone()), &lock, "a");
    let b = election(Arc::new(store.clone()), &lock, "b");
    let _ga = a.spawn();
    let term = a.wait_for_term().await.expect("a leads");
    let _gb = b.spawn();
    sleep(Duration::from_secs(1)).await;
    let mut events = a.events();
    let resigned_at = Instant::now();
    a.resign();
    let next = b.wait_for_term().await.expect("b leads");
    assert!(next.token > term.token);
    assert!(term.cancelled.is_cancelled());
    // Within a poll interval (fast handover over the peer transport makes it one round trip).
    assert!(resigned_at.elapsed() <= ElectionTimings::default().poll_interval);
    ended_once(&drain(&mut events), term.token, LostReason::Released);
}

// ---------------------------------------------------------------------------------------------
// A stopped election is loud.

/// A store whose lock table lost a column after the member was elected.
#[derive(Debug)]
struct SchemaGoneAfterGrant {
    inner: MemoryStore,
    broken: AtomicBool,
}

hedge_tests::store_with_storage_of!(SchemaGoneAfterGrant, inner, {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.inner.acquire(key, candidate, lease).await
    }
    async fn renew(&self, k: &LockKey, h: &str, t: u64, l: Duration) -> StoreResult<RenewOutcome> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::SchemaMismatch {
                message: "Column not found: holder_incarnation".into(),
            });
        }
        self.inner.renew(k, h, t, l).await
    }
    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.inner.release(key, holder, token).await
    }
    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.inner.lock_state(key).await
    }
});

#[tokio::test(start_paused = true)]
async fn a_fatal_error_ends_the_term_as_failed_and_stops_loudly() {
    let store = Arc::new(SchemaGoneAfterGrant {
        inner: memory(),
        broken: AtomicBool::new(false),
    });
    let e = election(store.clone(), &key("fatal"), "a");
    let mut events = e.events();
    let guard = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    store.broken.store(true, Ordering::SeqCst);
    let err = guard.wait().await.expect_err("stops");
    assert!(
        matches!(
            &err,
            ElectionError::Store {
                source: StoreError::SchemaMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let seen = drain(&mut events);
    ended_once(
        &seen,
        term.token,
        LostReason::Failed {
            reason: "SchemaMismatch",
        },
    );
    assert!(
        matches!(seen.last(), Some(LeadershipEvent::Stopped { error }) if error.to_string() == err.to_string()),
        "{seen:#?}"
    );
    // Every waiting call returns the error instead of waiting forever.
    let waited = e.wait_for_term().await.expect_err("stopped");
    assert_eq!(waited.to_string(), err.to_string());
    assert!(e.wait_for_leader().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_hedge_member_that_cannot_run_says_so_to_every_waiter() {
    let store = Arc::new(SchemaGoneAfterGrant {
        inner: memory(),
        broken: AtomicBool::new(true),
    });
    let member = Hedge::builder("loud")
        .member_id("a")
        .shared_store(store)
        .build()
        .await
        .expect("valid");
    let guard = member.spawn();
    let term = member
        .wait_for_term()
        .await
        .expect("elected before renewing");
    let err = guard.wait().await.expect_err("stops");
    assert!(err.to_string().contains("Column not found"), "{err}");
    assert!(term.cancelled.is_cancelled());
    assert!(member.wait_for_term().await.is_err());
}

// ---------------------------------------------------------------------------------------------
// One loop per lock and member.

#[tokio::test(start_paused = true)]
async fn a_second_loop_for_the_same_lock_and_member_is_refused() {
    let e = election(Arc::new(memory()), &key("twice"), "a");
    let _first = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    let second = e.spawn().wait().await.expect_err("refused");
    assert!(
        matches!(second, ElectionError::AlreadyRunning { .. }),
        "{second:?}"
    );
    sleep(ElectionTimings::default().lease).await;
    assert_eq!(e.token(), Some(term.token), "the first loop is unharmed");

    let member = Hedge::builder("twice")
        .member_id("a")
        .store(memory())
        .build()
        .await
        .expect("valid");
    let _guard = member.spawn();
    member.wait_for_term().await.expect("leads");
    // The group's own lock name gives the same election, not a second loop.
    let same = member.lock(LockKey::LEADER).expect("valid");
    assert!(same.is_leader());
    assert!(matches!(
        same.spawn().wait().await,
        Err(ElectionError::AlreadyRunning { .. })
    ));
    assert!(member.is_leader());
}

// ---------------------------------------------------------------------------------------------
// Renewal retry, leaderless gaps, polls.

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_retried_before_the_step_down() {
    let t = ElectionTimings::default();
    let faults = FaultyStore::new(Arc::new(memory()));
    let e = election(Arc::new(faults.clone()), &key("retry"), "a");
    let _guard = e.spawn();
    let term = e.wait_for_term().await.expect("leads");
    // Right after a successful renewal, the store becomes unreachable until shortly before
    // the step-down time; a retry in that last stretch keeps the term.
    let renewed = e.deadline().expect("deadline") - t.holding_time();
    let step_down = e.deadline().expect("deadline") - t.step_down_lead();
    let back = step_down - Duration::from_millis(100);
    faults.set_for(Op::Renew, Fault::Unreachable);
    sleep_until_instant(back).await;
    faults.set(Fault::None);
    sleep(t.renew_interval * 2).await;
    assert_eq!(
        e.token(),
        Some(term.token),
        "renewed in the last {:?}",
        step_down - renewed
    );
}

async fn sleep_until_instant(at: Instant) {
    tokio::time::sleep_until(at).await;
}

#[tokio::test(start_paused = true)]
async fn a_grant_that_arrives_too_late_is_given_back_at_once() {
    let store = memory();
    let lock = key("late-grant");
    let t = ElectionTimings::default();
    let slow = FaultyStore::new(Arc::new(store.clone()));
    // The grant's reply arrives after the term's step-down time.
    slow.set_for(Op::Acquire, Fault::SlowReply(t.holding_time()));
    let a = election(Arc::new(slow.clone()), &lock, "a");
    let mut events = a.events();
    let _ga = a.spawn();
    sleep(Duration::from_millis(10)).await;
    // a's first acquire is in flight (and keeps its slow reply); later ones fail at once, so
    // that a, which competes again after giving the grant back, cannot win the lock back
    // before b's next poll (whoever polls first would, with jittered polls).
    slow.set_for(Op::Acquire, Fault::Unreachable);
    let b = election(Arc::new(store.clone()), &lock, "b");
    let _gb = b.spawn();
    let started = Instant::now();
    b.wait_for_term().await.expect("b leads");
    // Not a lease after a's grant: right after a gave it back.
    assert!(
        started.elapsed() < t.holding_time() + t.poll_interval,
        "{:?}",
        started.elapsed()
    );
    assert!(
        drain(&mut events)
            .iter()
            .all(|e| !matches!(e, LeadershipEvent::Elected { .. })),
        "a never led under the late grant"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_whose_reply_was_lost_is_given_back_not_left_to_expire() {
    let store = memory();
    let lock = key("lost-reply");
    let t = ElectionTimings::default();
    let faults = FaultyStore::new(Arc::new(store.clone()));
    faults.set_for(Op::Acquire, Fault::LoseReply);
    let a = election(Arc::new(faults.clone()), &lock, "a");
    let _ga = a.spawn();
    // The grant committed, its reply was lost; within a poll interval the member finds its own
    // incarnation in the row and gives it back.
    sleep(Duration::from_millis(10)).await;
    let held = store.lock_state(&lock).await.expect("read").expect("row");
    assert_eq!(held.holder.as_ref().map(|h| h.id.as_str()), Some("a"));
    sleep(t.poll_interval + Duration::from_millis(10)).await;
    faults.set(Fault::None);
    let state = store.lock_state(&lock).await.expect("read").expect("row");
    assert!(
        state
            .holder
            .as_ref()
            .is_none_or(|h| h.token != held.holder.as_ref().map_or(0, |x| x.token)),
        "the lost grant still blocks the lock: {state:?}"
    );
    a.wait_for_term()
        .await
        .expect("leads once the replies arrive");
}

/// Counts the acquires that reach the store.
#[derive(Debug)]
struct CountAcquires {
    inner: MemoryStore,
    acquires: AtomicUsize,
}

hedge_tests::store_with_storage_of!(CountAcquires, inner, {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(key, candidate, lease).await
    }
    async fn renew(&self, k: &LockKey, h: &str, t: u64, l: Duration) -> StoreResult<RenewOutcome> {
        self.inner.renew(k, h, t, l).await
    }
    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.inner.release(key, holder, token).await
    }
    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.inner.lock_state(key).await
    }
});

#[tokio::test(start_paused = true)]
async fn candidates_do_not_open_transactions_on_a_held_lock() {
    let store = memory();
    let lock = key("polls");
    let leader = election(Arc::new(store.clone()), &lock, "leader");
    let _gl = leader.spawn();
    leader.wait_for_term().await.expect("leads");
    let counting = Arc::new(CountAcquires {
        inner: store.clone(),
        acquires: AtomicUsize::new(0),
    });
    let mut guards = Vec::new();
    for i in 0..10 {
        let c = election(counting.clone(), &lock, &format!("c{i}"));
        guards.push(c.spawn());
    }
    sleep(Duration::from_secs(30)).await;
    assert!(leader.is_leader());
    assert_eq!(
        counting.acquires.load(Ordering::SeqCst),
        0,
        "10 candidates polled for 30 s: they read, never lock the held row"
    );
}

// ---------------------------------------------------------------------------------------------
// The safety margin is what keeps terms apart. Each test fails if the election made the mistake
// it names (checked by making that mistake in the code and watching the test fail).

/// Mistake: computing the deadline from the reply's arrival instead of the request's sending.
/// The holder's renewal replies arrive 1.5 s late (more than the 700 ms margin); then its store
/// becomes unreachable. A deadline counted from the reply would run past the store's expiry,
/// where the candidate is granted the lock.
#[tokio::test(start_paused = true)]
async fn a_slow_reply_never_extends_the_deadline_past_the_lease() {
    let store = memory();
    let lock = key("slow-reply");
    let timeline = Timeline::new();
    let holder_store = FaultyStore::new(Arc::new(store.clone()));
    let holder = election(Arc::new(holder_store.clone()), &lock, "holder");
    timeline.record(&holder);
    let _gh = holder.spawn();
    holder.wait_for_term().await.expect("leads");
    holder_store.set_for(Op::Renew, Fault::SlowReply(Duration::from_millis(1500)));
    let candidate = election(Arc::new(store.clone()), &lock, "candidate");
    timeline.record(&candidate);
    let _gc = candidate.spawn();
    // Let a few slow renewals succeed, then cut the holder off.
    sleep(Duration::from_secs(4)).await;
    assert!(holder.is_leader(), "slow renewals still renew");
    holder_store.set(Fault::Unreachable);
    candidate
        .wait_for_term()
        .await
        .expect("the candidate takes over");
    timeline.assert_safe();
}

/// Mistake: a safety margin that covers nothing (deadline = sent + lease). The store's clock
/// jumps ahead by 600 ms (under the 700 ms margin) and the holder is cut off: the lease expires
/// 600 ms early on the store's clock; only the margin keeps the holder's deadline before it.
#[tokio::test(start_paused = true)]
async fn a_store_clock_jump_ahead_within_the_margin_never_overlaps() {
    let store = memory();
    let lock = key("jump");
    let timeline = Timeline::new();
    let holder_store = FaultyStore::new(Arc::new(store.clone()));
    let holder = election(Arc::new(holder_store.clone()), &lock, "holder");
    timeline.record(&holder);
    let _gh = holder.spawn();
    holder.wait_for_term().await.expect("leads");
    let candidate = election(Arc::new(store.clone()), &lock, "candidate");
    timeline.record(&candidate);
    let _gc = candidate.spawn();
    sleep(Duration::from_millis(2500)).await;
    store.set_clock_skew(ClockSkew::Ahead(Duration::from_millis(600)));
    holder_store.set(Fault::Unreachable);
    candidate
        .wait_for_term()
        .await
        .expect("the candidate takes over");
    assert_eq!(holder.margin_violations(), 0);
    timeline.assert_safe();
}

/// Mistake: judging expiry on the members' clock instead of the store's. The store's clock runs
/// 2 s behind the members' from the start (rows are stamped on it); judged on the members' clock,
/// every lease would look 2 s older and expire while its holder still leads.
#[tokio::test(start_paused = true)]
async fn a_store_clock_behind_the_members_never_lets_a_candidate_in_early() {
    let store = memory();
    store.set_clock_skew(ClockSkew::Behind(Duration::from_secs(2)));
    let lock = key("behind");
    let timeline = Timeline::new();
    let holder_store = FaultyStore::new(Arc::new(store.clone()));
    let holder = election(Arc::new(holder_store.clone()), &lock, "holder");
    timeline.record(&holder);
    let _gh = holder.spawn();
    holder.wait_for_term().await.expect("leads");
    let candidate = election(Arc::new(store.clone()), &lock, "candidate");
    timeline.record(&candidate);
    let _gc = candidate.spawn();
    sleep(Duration::from_secs(3)).await;
    assert!(holder.is_leader() && !candidate.is_leader());
    holder_store.set(Fault::Unreachable);
    candidate
        .wait_for_term()
        .await
        .expect("the candidate takes over");
    timeline.assert_safe();
}

/// A crashed holder is replaced about one lease after its last renewal: candidates retry when
/// the lease they saw runs out instead of a poll interval later.
#[tokio::test(start_paused = true)]
async fn a_crashed_leader_is_replaced_one_lease_after_its_last_renewal() {
    let store = memory();
    let lock = key("failover");
    let t = ElectionTimings::default();
    let holder = election(Arc::new(store.clone()), &lock, "holder");
    let gh = holder.spawn();
    holder.wait_for_term().await.expect("leads");
    let candidate = election(Arc::new(store.clone()), &lock, "candidate");
    let _gc = candidate.spawn();
    sleep(Duration::from_millis(2300)).await;
    let last_renewal_sent = holder.deadline().expect("deadline") - t.holding_time();
    gh.abort();
    candidate.wait_for_term().await.expect("takes over");
    let gap = last_renewal_sent.elapsed();
    // Lease, the candidates' small jitter, and a few 1 ms store trips.
    assert!(
        gap <= t.lease + t.poll_interval / 50 + Duration::from_millis(10),
        "{gap:?} after the last renewal"
    );
    advance(Duration::ZERO).await;
}
