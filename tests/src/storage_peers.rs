//! The log and the semaphores across members on real loopback sockets, for every store backend:
//! followers' puts forwarded to the leader (written under its token, once, through failovers),
//! and a release on one member waking a waiter on another at once.
//!
//! Real time (sockets do not follow paused tokio time); bounds carry [`Params::slack`], and the
//! wake-up scenario judges by the order of events, not by a wall-clock threshold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hedge::store::{
    AcquireOutcome, DefineOutcome, LockState, LogEntry, LogQuery, MemberHeartbeat, PermitOutcome,
    PermitRenewal, PermitRequest, PutOutcome, PutRequest, ReleaseOutcome, RenewOutcome, Retention,
    SemaphoreKey, SemaphoreState, StoreResult,
};
use hedge::{
    Candidate, HedgeBuilder, KvError, LockKey, MemberRecord, PermitTimings, PutOptions, PutRouting,
    StorageOptions, Store,
};
use tokio::time::{Instant, sleep, timeout};

use crate::conformance::Backend;
use crate::messaging::{
    Failover, Params, Running, start_group, start_member, start_member_on, stop_all,
    wait_for_leader, wait_for_views,
};

fn via_leader(b: HedgeBuilder) -> HedgeBuilder {
    b.storage(StorageOptions {
        put_routing: PutRouting::ViaLeader,
        ..StorageOptions::default()
    })
}

/// A follower's put is written by the leader: under the leader's token, recording the
/// follower as its writer. Retried with the same idempotency key (forwarded again, or written
/// directly as a fallback would), it appends once. A put the follower fenced on a stale token
/// is refused.
pub async fn forwarded_put_is_written_by_the_leader_once(backend: &dyn Backend, params: Params) {
    let mut members = start_group(backend, params, 3, &via_leader).await;
    let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let token = members[leader].hedge.token().expect("the leader's token");
    let follower = &members[(leader + 1) % members.len()].hedge;
    assert_eq!(follower.token(), None, "a follower holds no token");
    let log = follower.log();

    let entry = log.put("jobs/1", "queued").await.expect("the put");
    assert_eq!(entry.token, Some(token), "written under the leader's term");
    assert_eq!(
        entry.writer,
        follower.member_id(),
        "the follower is the writer"
    );
    assert_eq!(entry.writer_incarnation, follower.incarnation());
    assert_eq!(log.all("jobs/1").await.expect("all"), [entry]);

    // The leader's own puts are written directly, with its token.
    let own = members[leader]
        .hedge
        .log()
        .put("jobs/2", "x")
        .await
        .expect("own put");
    assert_eq!(own.token, Some(token));

    // Retries with one idempotency key append once, however they travel.
    let keyed = || PutOptions::default().idempotency_key("req-7");
    let first = log.put_with("jobs/3", "a", keyed()).await.expect("put");
    let again = log.put_with("jobs/3", "a", keyed()).await.expect("retry");
    let direct = log
        .put_with("jobs/3", "a", keyed().routing(PutRouting::Direct))
        .await
        .expect("direct retry");
    assert_eq!(first.token, Some(token));
    assert_eq!(again, first);
    assert_eq!(direct, first);
    assert_eq!(log.all("jobs/3").await.expect("all"), [first]);

    // A put the follower fenced itself keeps its fence: a stale token is refused.
    match log.put_fenced("jobs/4", "late", token + 1000).await {
        Err(KvError::Fenced { current, .. }) => assert_eq!(current, Some(token)),
        other => panic!("a put fenced on a wrong token was not refused: {other:?}"),
    }
    assert!(log.all("jobs/4").await.expect("all").is_empty());
    stop_all(&mut members).await;
}

/// Followers keep putting (each put with its own idempotency key, on its own key per worker)
/// while the leader is replaced: every put succeeds, and each is written exactly once (neither
/// lost nor doubled), under the old leader's token, the new leader's, or directly while no
/// leader could take it.
pub async fn forwarded_puts_during_failover_are_written_once(
    backend: &dyn Backend,
    params: Params,
    failover: Failover,
) {
    let mut members = start_group(backend, params, 3, &via_leader).await;
    let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let old_token = members[leader].hedge.token().expect("the leader's token");
    let follower = (0..members.len())
        .find(|i| *i != leader)
        .expect("a follower");
    let log = members[follower].hedge.log();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (log, stop) = (log.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let key = format!("failover/w{worker}");
            let mut results = Vec::new();
            let mut seq = 0;
            while !stop.is_cancelled() {
                let id = format!("w{worker}-{seq}");
                seq += 1;
                let result = log
                    .put_with(&key, id.clone(), PutOptions::default().idempotency_key(&id))
                    .await;
                results.push((key.clone(), id, result));
            }
            results
        }));
    }
    sleep(Duration::from_millis(200)).await;
    match failover {
        Failover::Crash => members[leader].crash(),
        Failover::Graceful => members[leader].shutdown().await,
    }
    members.push(start_member(backend, params, "m3", &via_leader).await);
    let new_leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
    let new_token = members[new_leader].hedge.token().expect("the new token");
    // Let puts flow under the new leader for a moment.
    sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.expect("a worker"));
    }
    let mut stored: HashMap<String, Vec<LogEntry>> = HashMap::new();
    for key in (0..4).map(|w| format!("failover/w{w}")) {
        let versions = log.all(&key).await.expect("all");
        stored.insert(key, versions);
    }
    let mut tokens: HashMap<Option<u64>, usize> = HashMap::new();
    for (key, id, result) in &results {
        let entry = result
            .as_ref()
            .unwrap_or_else(|e| panic!("put {id} failed: {e}"));
        let copies: Vec<&LogEntry> = stored[key]
            .iter()
            .filter(|v| v.value == id.as_bytes())
            .collect();
        assert_eq!(copies.len(), 1, "put {id} is stored {} times", copies.len());
        assert_eq!(copies[0], entry, "put {id} returned the version stored");
        *tokens.entry(entry.token).or_default() += 1;
    }
    let stored_count: usize = stored.values().map(Vec::len).sum();
    assert_eq!(
        stored_count,
        results.len(),
        "nothing but the puts is stored"
    );
    assert!(
        tokens.get(&Some(old_token)).is_some_and(|n| *n > 0),
        "puts were forwarded to the old leader: {tokens:?}"
    );
    assert!(
        tokens.get(&Some(new_token)).is_some_and(|n| *n > 0),
        "puts were forwarded to the new leader: {tokens:?}"
    );
    assert!(
        tokens
            .keys()
            .all(|t| t.is_none() || *t == Some(old_token) || *t == Some(new_token)),
        "every put was written by a leader or directly: {tokens:?}"
    );
    stop_all(&mut members).await;
}

/// A store that records when each permit acquire of a member returned, and what it found.
#[derive(Debug)]
struct RecordingStore {
    inner: Arc<dyn Store>,
    /// `(returned at, granted)` of every acquire attempt.
    attempts: Arc<Mutex<Vec<(Instant, bool)>>>,
}

#[async_trait]
impl Store for RecordingStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.inner.acquire(key, candidate, lease).await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        self.inner.renew(key, holder, token, lease).await
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

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        self.inner.heartbeat_member(group, member).await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.inner.remove_member(group, id).await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        self.inner.list_members(group).await
    }

    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome> {
        self.inner.put(group, request).await
    }

    async fn read_log(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        self.inner.read_log(group, key, query).await
    }

    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        self.inner
            .list_log_keys(group, prefix, start_after, limit)
            .await
    }

    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64> {
        self.inner.trim_log(group, key, retention).await
    }

    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome> {
        self.inner.define_semaphore(key, limit).await
    }

    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        self.inner.semaphore_state(key).await
    }

    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        let outcome = self.inner.acquire_permit(key, request).await;
        let granted = matches!(outcome, Ok(PermitOutcome::Granted { .. }));
        self.attempts
            .lock()
            .expect("attempts")
            .push((Instant::now(), granted));
        outcome
    }

    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        self.inner.renew_permit(key, permit_id, token, lease).await
    }

    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        self.inner.release_permit(key, permit_id).await
    }
}

/// The first pause of a waiting acquire (the semaphore's `MIN_BACKOFF`), doubled after every
/// attempt that found the semaphore full, and jittered down to ¾ at most.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Member B waits on a full semaphore (with a 10 s maximum backoff) until its pauses between
/// attempts have grown long; member A then releases its permit. With the peer transport, B's
/// next attempt, which gets the permit, comes **before the earliest moment its backoff could
/// have ended**: the release announcement woke it. Without the transport (`transport: false`,
/// the control), the attempt that gets the permit comes only after that moment.
pub async fn release_wakes_a_waiter_on_another_member(
    backend: &dyn Backend,
    params: Params,
    transport: bool,
) {
    // A long lease, renewed well before it ends, so that the waiter's other timer (the first
    // live permit's expiry) stays far away; the backoff reaches 10 s at most.
    let timings = PermitTimings {
        max_backoff: Duration::from_secs(10),
        ..PermitTimings::from_lease(Duration::from_secs(30))
    };
    let configure = move |b: HedgeBuilder| {
        b.storage(StorageOptions {
            permit_timings: timings,
            // The control: A's releases are announced to nobody.
            release_notifier: (!transport)
                .then(|| Arc::new(Silent) as Arc<dyn hedge::semaphore::ReleaseNotifier>),
            ..StorageOptions::default()
        })
    };
    let attempts: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let a = start_member(backend, params, "a", &configure).await;
    let recording = Arc::new(RecordingStore {
        inner: backend.member_store().await,
        attempts: attempts.clone(),
    });
    let b = start_member_on(recording, params, "b", &configure).await;
    let mut members: Vec<Running> = vec![a, b];
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let pool_a = members[0]
        .hedge
        .semaphore("pool", 1)
        .await
        .expect("semaphore");
    let held = pool_a.acquire().await.expect("A's permit");
    let pool_b = members[1]
        .hedge
        .semaphore("pool", 1)
        .await
        .expect("semaphore");
    let waiter = tokio::spawn(async move { pool_b.acquire().await });
    // Eight full attempts: B's next pause is at least ¾ × 20 ms × 2⁷ = 1.92 s.
    const FULL: usize = 8;
    timeout(Duration::from_secs(20), async {
        while attempts.lock().expect("attempts").len() < FULL {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("B keeps trying");
    let last_full = {
        let attempts = attempts.lock().expect("attempts");
        assert!(
            attempts.iter().all(|(_, granted)| !granted),
            "B got nothing while A held the only permit"
        );
        attempts[FULL - 1].0
    };
    let earliest_retry = last_full + (FIRST_BACKOFF * 2u32.pow(FULL as u32 - 1)).mul_f64(0.75);
    held.release().await.expect("A releases");
    let permit = timeout(Duration::from_secs(15), waiter)
        .await
        .expect("B acquires in time")
        .expect("the waiter task")
        .expect("B's permit");
    let attempts = attempts.lock().expect("attempts").clone();
    let (granted_at, granted) = *attempts.last().expect("an attempt");
    assert!(granted);
    if transport {
        assert_eq!(
            attempts.len(),
            FULL + 1,
            "B's attempt right after the release got the permit"
        );
        assert!(
            granted_at < earliest_retry,
            "B was woken by the release announcement, {:?} before its backoff could end",
            earliest_retry - granted_at
        );
    } else {
        assert!(
            granted_at >= earliest_retry,
            "without the transport B waited for its backoff"
        );
    }
    drop(permit);
    stop_all(&mut members).await;
}

/// A release notifier that tells nobody.
#[derive(Debug)]
struct Silent;

impl hedge::semaphore::ReleaseNotifier for Silent {
    fn permit_released(&self, _key: &SemaphoreKey) {}
}
