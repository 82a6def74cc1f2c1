//! The election conformance suite: every scenario runs unchanged on every store backend.
//!
//! On the memory backend the scenarios run with paused tokio time, so every bound is exact and
//! a scenario takes milliseconds. On Spanner they run in real time against the emulator, with
//! [`Backend::slack`] added to bounds for the store's latency.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hedge::store::lease::LossCause;
use hedge::store::{AcquireOutcome, ClockSkew, LockKey, ReleaseOutcome, RenewOutcome, Store};
use hedge::{Election, ElectionGuard, ElectionTimings, LeadershipEvent, LostReason};
use tokio::time::{Instant, sleep, timeout};

use crate::faults::{Fault, FaultyStore, Op};
use crate::timeline::Timeline;

/// A store backend under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A store for one member (on Spanner, a client of its own, as a separate pod would have).
    async fn member_store(&self) -> Arc<dyn Store>;
    /// Deletes the row of `key` behind hedge's back, as a person might.
    async fn delete_lock_row(&self, key: &LockKey);
    /// The election timings the scenarios use.
    fn timings(&self) -> ElectionTimings;
    /// What bounds allow on top of the contract for store latency and scheduling.
    fn slack(&self) -> Duration;
    /// Moves the store's clock relative to the members' (a clock jump), if the backend can;
    /// returns whether it did.
    fn skew_store_clock(&self, skew: ClockSkew) -> bool {
        let _ = skew;
        false
    }
    /// Writes `values` as consecutive versions of log key `key` of `group` in **one** atomic
    /// step, so that they share one commit timestamp, as the log's own puts never do for one
    /// key on Spanner (two puts to a key conflict and commit one after the other). The storage
    /// scenarios use it to prove that "latest" does not depend on timestamps.
    async fn write_tied_versions(&self, group: &str, key: &str, values: &[&str]);
    /// The permit timings the storage scenarios use.
    fn permit_timings(&self) -> hedge::PermitTimings {
        hedge::PermitTimings::from_lease(self.timings().lease)
    }
}

/// A member under test: its election, its store's fault switch, and its running loop.
pub struct Member {
    /// The election.
    pub election: Election,
    /// The member's store, for injecting faults.
    pub faults: FaultyStore,
    guard: Option<ElectionGuard>,
}

impl Member {
    /// Starts a member `id` contending for `key`, recorded in `timeline`.
    pub async fn start(
        backend: &dyn Backend,
        key: &LockKey,
        id: &str,
        timeline: &Timeline,
    ) -> Self {
        let faults = FaultyStore::new(backend.member_store().await);
        let election = Election::new(Arc::new(faults.clone()), key.clone(), id, backend.timings())
            .expect("valid election settings");
        timeline.record(&election);
        let guard = Some(election.spawn());
        Self {
            election,
            faults,
            guard,
        }
    }

    /// Stops the member gracefully (releasing the lock) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.shutdown().await.expect("election stopped cleanly");
        }
    }

    /// Stops the member as a crash would: nothing released.
    pub fn crash(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.abort();
        }
    }
}

/// Waits until exactly one of `members` leads, and returns its index and token.
pub async fn wait_for_leader(members: &[Member], within: Duration) -> (usize, u64) {
    let started = Instant::now();
    loop {
        let leaders: Vec<(usize, u64)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.guard.is_some())
            .filter_map(|(i, m)| m.election.token().map(|t| (i, t)))
            .collect();
        assert!(leaders.len() <= 1, "two members lead at once: {leaders:?}");
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            started.elapsed() <= within,
            "no leader within {within:?} (members: {})",
            members.len()
        );
        sleep(Duration::from_millis(5)).await;
    }
}

fn key(name: &str) -> LockKey {
    LockKey::new(format!("conformance-{name}"), LockKey::LEADER)
}

/// One member becomes leader, within one acquire.
pub async fn single_member_becomes_leader(backend: &dyn Backend) {
    let timeline = Timeline::new();
    let members = vec![Member::start(backend, &key("single"), "solo", &timeline).await];
    let (_, token) = wait_for_leader(&members, backend.slack() + Duration::from_millis(100)).await;
    assert!(token > 0);
    assert_eq!(
        members[0].election.leader().map(|l| l.id),
        Some("solo".to_owned())
    );
    timeline.assert_safe();
}

/// With `n` contenders there is exactly one leader per token, and tokens strictly increase over
/// `rounds` successive graceful handovers.
pub async fn contenders_share_one_leader(backend: &dyn Backend, n: usize, rounds: usize) {
    let lock = key(&format!("contenders-{n}"));
    let timeline = Timeline::new();
    let mut members = Vec::new();
    for i in 0..n {
        members.push(Member::start(backend, &lock, &format!("m{i}"), &timeline).await);
    }
    let t = backend.timings();
    let bound = t.lease + t.poll_interval + backend.slack();
    let mut tokens = Vec::new();
    for round in 0..rounds {
        let (leader, token) = wait_for_leader(&members, bound).await;
        tokens.push(token);
        members[leader].stop().await;
        // The stopped member comes back as a fresh candidate under a new id.
        members[leader] =
            Member::start(backend, &lock, &format!("m{leader}-r{round}"), &timeline).await;
    }
    let (_, last) = wait_for_leader(&members, bound).await;
    tokens.push(last);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );
    for m in &mut members {
        m.stop().await;
    }
    timeline.assert_safe();
}

/// A crashed leader (its loop aborted, nothing released) is replaced about one lease after its
/// last renewal (candidates retry when the lease they saw runs out, not a poll interval later),
/// and its token is never granted again.
pub async fn crashed_leader_is_replaced_within_the_lease(backend: &dyn Backend) {
    let lock = key("crash");
    let timeline = Timeline::new();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(Member::start(backend, &lock, &format!("m{i}"), &timeline).await);
    }
    let t = backend.timings();
    let (leader, old_token) =
        wait_for_leader(&members, t.lease + t.poll_interval + backend.slack()).await;
    let crashed_at = Instant::now();
    members[leader].crash();
    let survivors: Vec<Member> = members
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m)
        .collect();
    let (_, new_token) =
        wait_for_leader(&survivors, t.lease + t.poll_interval + backend.slack()).await;
    let failover = crashed_at.elapsed();
    // The lease, plus the candidates' jitter (a fiftieth of a poll) and the store's latency.
    let bound = t.lease + t.poll_interval / 50 + backend.slack();
    assert!(
        failover <= bound,
        "failover took {failover:?} (bound {bound:?})"
    );
    assert!(new_token > old_token, "token {new_token} after {old_token}");
    timeline.assert_safe();
    let mut survivors = survivors;
    for m in &mut survivors {
        m.stop().await;
    }
}

/// Graceful release: a waiting candidate leads within one poll interval.
pub async fn released_lock_is_taken_within_one_poll(backend: &dyn Backend) {
    let lock = key("release");
    let timeline = Timeline::new();
    let t = backend.timings();
    let mut members = vec![Member::start(backend, &lock, "first", &timeline).await];
    wait_for_leader(&members, backend.slack() + Duration::from_millis(100)).await;
    members.push(Member::start(backend, &lock, "second", &timeline).await);
    // Let the second member settle into its poll cycle.
    sleep(t.poll_interval).await;
    assert!(!members[1].election.is_leader());
    members[0].stop().await;
    let released_at = Instant::now();
    let rest = members.split_off(1);
    let (_, _) = wait_for_leader(&rest, t.poll_interval + backend.slack()).await;
    assert!(released_at.elapsed() <= t.poll_interval + backend.slack());
    timeline.assert_safe();
}

/// Renewal failing (`fault`: the store unreachable, or slower than the deadline): the holder
/// signals `Lost` before its local deadline, and no other member acquires before that deadline.
pub async fn failing_renewals_step_down_before_anyone_else_acquires(
    backend: &dyn Backend,
    fault: Fault,
) {
    let lock = key(&format!("renew-{}", matches!(fault, Fault::Unreachable)));
    let timeline = Timeline::new();
    let t = backend.timings();
    let mut members = vec![Member::start(backend, &lock, "holder", &timeline).await];
    wait_for_leader(&members, backend.slack() + Duration::from_millis(100)).await;
    let mut lost = members[0].election.events();
    members.push(Member::start(backend, &lock, "candidate", &timeline).await);
    members[0].faults.set(fault);
    let event = timeout(t.lease + backend.slack(), async {
        loop {
            match lost.recv().await {
                Ok(LeadershipEvent::Lost { reason, .. }) => break reason,
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the holder signals Lost within one lease");
    assert_eq!(event, LostReason::DeadlinePassed);
    assert!(!members[0].election.is_leader());
    let rest = members.split_off(1);
    wait_for_leader(&rest, t.lease + t.poll_interval + backend.slack()).await;
    // The overlap checker: Lost before the deadline, the next term after it.
    let intervals = timeline.intervals();
    let holder = intervals
        .iter()
        .find(|i| i.member == "holder")
        .expect("holder's term");
    let next = intervals
        .iter()
        .find(|i| i.member == "candidate")
        .expect("candidate's term");
    assert!(
        next.start >= holder.deadline.expect("deadline"),
        "{intervals:#?}"
    );
    timeline.assert_safe();
    members[0].faults.set(Fault::None);
}

/// W8: a deposed holder cannot extend the new holder's lease.
pub async fn deposed_holder_cannot_renew(backend: &dyn Backend) {
    let store = backend.member_store().await;
    let lock = key("w8");
    let short = Duration::from_millis(300);
    let AcquireOutcome::Granted { token: old } = store
        .acquire(&lock, &"old".into(), short)
        .await
        .expect("acquire")
    else {
        panic!("a free lock is granted");
    };
    sleep(short + backend.slack()).await;
    let AcquireOutcome::Granted { token: new } = store
        .acquire(&lock, &"new".into(), Duration::from_secs(30))
        .await
        .expect("acquire")
    else {
        panic!("an expired lock is granted");
    };
    assert!(new > old);
    let renewal = store
        .renew(&lock, "old", old, Duration::from_secs(60))
        .await
        .expect("renew");
    assert!(
        matches!(&renewal, RenewOutcome::Lost(LossCause::Deposed { holder: Some(h), token }) if h == "new" && *token == new),
        "{renewal:?}"
    );
    assert_eq!(
        store.release(&lock, "old", old).await.expect("release"),
        ReleaseOutcome::NotHolder
    );
    let state = store.lock_state(&lock).await.expect("read").expect("row");
    let holder = state.holder.expect("held");
    assert_eq!((holder.id.as_str(), holder.token), ("new", new));
    assert!(
        holder.remaining > Duration::from_secs(20),
        "the new lease was not shortened: {holder:?}"
    );
}

/// W6: locks `a` and `a_b`, and groups `x` and `x_y`, never touch each other's rows.
pub async fn similar_names_never_collide(backend: &dyn Backend) {
    let store = backend.member_store().await;
    let lease = Duration::from_secs(30);
    let keys = [
        LockKey::new("w6-x", "a"),
        LockKey::new("w6-x", "a_b"),
        LockKey::new("w6-x_y", "a"),
        LockKey::new("w6-x_y", "a_b"),
    ];
    let mut tokens = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match store
            .acquire(k, &format!("holder-{i}").into(), lease)
            .await
            .expect("acquire")
        {
            AcquireOutcome::Granted { token } => tokens.push(token),
            held => panic!("{k} must be free, got {held:?}"),
        }
    }
    // Releasing and deleting one never frees or changes the others.
    assert_eq!(
        store
            .release(&keys[0], "holder-0", tokens[0])
            .await
            .expect("release"),
        ReleaseOutcome::Released
    );
    backend.delete_lock_row(&keys[2]).await;
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i == 1 || *i == 3) {
        let holder = store
            .lock_state(k)
            .await
            .expect("read")
            .and_then(|s| s.holder)
            .expect("still held");
        assert_eq!(
            (holder.id, holder.token),
            (format!("holder-{i}"), tokens[i])
        );
    }
}

/// W7: a deleted lock row is recovered: the lock can be acquired again, with a token greater
/// than every token granted before the deletion.
pub async fn deleted_row_is_recovered(backend: &dyn Backend) {
    let lock = key("w7");
    let timeline = Timeline::new();
    let t = backend.timings();
    let mut members = vec![
        Member::start(backend, &lock, "m0", &timeline).await,
        Member::start(backend, &lock, "m1", &timeline).await,
    ];
    let (leader, old) = wait_for_leader(&members, t.poll_interval + backend.slack()).await;
    backend.delete_lock_row(&lock).await;
    // The holder's next renewal finds no row and steps down; someone is elected again.
    let mut events = members[leader].election.events();
    timeout(t.renew_interval + t.lease + backend.slack(), async {
        while !matches!(
            events.recv().await,
            Ok(LeadershipEvent::Lost { .. }) | Err(_)
        ) {}
    })
    .await
    .expect("the holder notices its row is gone");
    let (_, new) = wait_for_leader(&members, t.lease + t.poll_interval + backend.slack()).await;
    assert!(new > old, "token {new} after {old}");
    for m in &mut members {
        m.stop().await;
    }
    // Deleting the row is outside the protocol: the next grant may come before the old holder's
    // next renewal tells it. Fencing still holds: no token is reused or goes back.
    let violations = crate::timeline::check(&timeline.intervals());
    assert!(
        violations
            .iter()
            .all(|v| matches!(v, crate::timeline::Violation::Overlap { .. })),
        "{violations:#?}"
    );
}

/// W4: a renewal committed in the same instant as a candidate's read does not cause a takeover.
pub async fn renewal_and_read_in_the_same_instant_do_not_take_over(backend: &dyn Backend) {
    let store = backend.member_store().await;
    let other = backend.member_store().await;
    let lock = key("w4");
    let lease = Duration::from_secs(10);
    let AcquireOutcome::Granted { token } = store
        .acquire(&lock, &"holder".into(), lease)
        .await
        .expect("acquire")
    else {
        panic!("a free lock is granted");
    };
    for _ in 0..20 {
        assert_eq!(
            store
                .renew(&lock, "holder", token, lease)
                .await
                .expect("renew"),
            RenewOutcome::Renewed
        );
        let outcome = other
            .acquire(&lock, &"candidate".into(), lease)
            .await
            .expect("acquire");
        assert!(
            matches!(&outcome, AcquireOutcome::Held(h) if h.id == "holder" && h.token == token),
            "{outcome:?}"
        );
    }
}

/// W5: a crash at any point of acquire leaves a lock that can be taken within one lease. The
/// worst point is right after the commit: the grant is recorded but its holder is gone.
pub async fn crash_during_acquire_leaves_a_takeable_lock(backend: &dyn Backend) {
    let lock = key("w5");
    let timeline = Timeline::new();
    let t = backend.timings();
    let mut crashing = Member::start(backend, &lock, "crashing", &timeline).await;
    crashing.faults.set_for(Op::Acquire, Fault::LoseReply);
    // Wait until its first acquire has committed (the row exists), then crash it.
    let store = backend.member_store().await;
    let committed = timeout(t.poll_interval + backend.slack(), async {
        loop {
            if let Ok(Some(state)) = store.lock_state(&lock).await {
                break state;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the lost grant was committed");
    crashing.crash();
    let crashed_at = Instant::now();
    assert_eq!(committed.holder.map(|h| h.id).as_deref(), Some("crashing"));
    let members = vec![Member::start(backend, &lock, "survivor", &timeline).await];
    wait_for_leader(&members, t.lease + t.poll_interval + backend.slack()).await;
    assert!(crashed_at.elapsed() <= t.lease + t.poll_interval + backend.slack());
    timeline.assert_safe();
}

/// Several named locks in one process are independent elections.
pub async fn several_locks_per_process(backend: &dyn Backend) {
    let timeline = Timeline::new();
    let a = vec![Member::start(backend, &LockKey::new("multi", "a"), "p1", &timeline).await];
    let b = vec![Member::start(backend, &LockKey::new("multi", "b"), "p1", &timeline).await];
    let bound = backend.slack() + Duration::from_millis(100);
    let (_, ta) = wait_for_leader(&a, bound).await;
    let (_, tb) = wait_for_leader(&b, bound).await;
    assert!(ta > 0 && tb > 0);
}

/// Events are edge-triggered and ordered: exactly one `Elected` and one `Lost` per term, in
/// order, over several terms, with strictly increasing tokens; `LeaderChanged` follows each.
pub async fn events_come_once_per_term_in_order(backend: &dyn Backend) {
    let lock = key("events");
    let timeline = Timeline::new();
    let faults = FaultyStore::new(backend.member_store().await);
    let election = Election::new(Arc::new(faults), lock.clone(), "solo", backend.timings())
        .expect("valid election settings");
    timeline.record(&election);
    let mut events = election.events();
    let guard = election.spawn();
    let t = backend.timings();
    let first = election.wait_for_term().await.expect("leads").token;
    // Stay leader through several renewals, then resign: the lock is released, and after a
    // lease the member campaigns again and wins a new term.
    sleep(t.renew_interval * 3 + backend.slack()).await;
    assert_eq!(election.token(), Some(first));
    election.resign();
    let second = timeout(t.lease * 2 + t.poll_interval + backend.slack(), async {
        loop {
            match election.wait_for_term().await.expect("leads") {
                term if term.token != first => break term.token,
                _ => sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("a second term");
    guard.shutdown().await.expect("clean stop");
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|e| match e {
            LeadershipEvent::Elected { token, .. } => format!("elected {token}"),
            LeadershipEvent::Lost { token, reason, .. } => format!("lost {token} {reason:?}"),
            LeadershipEvent::LeaderChanged { leader } => {
                format!("leader {:?}", leader.as_ref().map(|l| l.token))
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert!(second > first, "{summary:#?}");
    assert_eq!(
        summary,
        [
            format!("elected {first}"),
            format!("leader Some({first})"),
            format!("lost {first} Released"),
            "leader None".to_owned(),
            format!("elected {second}"),
            format!("leader Some({second})"),
            format!("lost {second} Released"),
            "leader None".to_owned(),
        ]
    );
    timeline.assert_safe();
}

/// A late renewal of an old term is refused even when the same member id (a restarted process,
/// another incarnation) holds a newer term: renewals are conditional on the token, not only on
/// the holder's id, and the new term's lease is left as it was.
pub async fn late_renewal_of_an_old_term_is_refused_for_the_same_member_id(backend: &dyn Backend) {
    let store = backend.member_store().await;
    let lock = key("same-id");
    let short = Duration::from_millis(300);
    let AcquireOutcome::Granted { token: old } = store
        .acquire(&lock, &"pod-a".into(), short)
        .await
        .expect("acquire")
    else {
        panic!("a free lock is granted");
    };
    sleep(short + backend.slack()).await;
    let AcquireOutcome::Granted { token: new } = store
        .acquire(&lock, &"pod-a".into(), Duration::from_secs(30))
        .await
        .expect("acquire")
    else {
        panic!("an expired lock is granted");
    };
    let renewal = store
        .renew(&lock, "pod-a", old, short)
        .await
        .expect("renew");
    assert!(
        matches!(&renewal, RenewOutcome::Lost(LossCause::Deposed { holder: Some(h), token }) if h == "pod-a" && *token == new),
        "{renewal:?}"
    );
    let holder = store
        .lock_state(&lock)
        .await
        .expect("read")
        .and_then(|s| s.holder)
        .expect("held");
    assert_eq!(holder.token, new);
    assert!(
        holder.remaining > Duration::from_secs(20),
        "the old term's renewal changed the new lease: {holder:?}"
    );
}

/// A randomized run: members crash, restart, stop gracefully, and see their store become
/// unreachable, slow, slow to reply or lose replies, at random times, for `steps` steps. The
/// term-overlap checker must find nothing: no token reused or going back, no term beginning
/// before the previous one ended, no `Lost` after its deadline.
pub async fn randomized_faults_never_overlap(backend: &dyn Backend, seed: u64, steps: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lock = key(&format!("random-{seed}"));
    let timeline = Timeline::new();
    let t = backend.timings();
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(Member::start(backend, &lock, &format!("m{i}"), &timeline).await);
    }
    let mut restarts = 0;
    for _ in 0..steps {
        // Half the time the fault hits the leader, where it matters most.
        let leader = members
            .iter()
            .position(|m| m.guard.is_some() && m.election.is_leader());
        let i = match leader {
            Some(l) if rng.random_bool(0.5) => l,
            _ => rng.random_range(0..members.len()),
        };
        match rng.random_range(0..11) {
            0 => members[i].crash(),
            1 => members[i].stop().await,
            10 => {
                // The store's clock jumps. Offsets stay within ±0.45 margins of the members'
                // clock, so no jump, nor any series of jumps, moves it forward by a margin.
                let m = t.safety_margin.mul_f64(rng.random_range(0.0..0.45));
                let skew = if rng.random_bool(0.5) {
                    ClockSkew::Ahead(m)
                } else {
                    ClockSkew::Behind(m)
                };
                backend.skew_store_clock(skew);
            }
            2..=5 => {
                let span =
                    Duration::from_millis(rng.random_range(1..=2 * t.lease.as_millis() as u64));
                let fault = match rng.random_range(0..5) {
                    0 => Fault::Unreachable,
                    1 => Fault::Slow(span),
                    2 => Fault::SlowReply(span),
                    3 => Fault::LoseReply,
                    _ => Fault::None,
                };
                members[i].faults.set(fault);
            }
            _ => members[i].faults.set(Fault::None),
        }
        if members[i].guard.is_none() {
            restarts += 1;
            members[i] =
                Member::start(backend, &lock, &format!("m{i}-{restarts}"), &timeline).await;
        }
        sleep(Duration::from_millis(
            rng.random_range(0..=t.lease.as_millis() as u64),
        ))
        .await;
    }
    for m in &mut members {
        m.faults.set(Fault::None);
    }
    backend.skew_store_clock(ClockSkew::None);
    // With the faults gone, the group elects a leader again.
    wait_for_leader(&members, t.lease * 2 + t.poll_interval + backend.slack()).await;
    for m in &mut members {
        m.stop().await;
    }
    let terms = timeline.intervals().len();
    assert!(
        terms >= steps / 10,
        "seed {seed}: only {terms} terms in {steps} steps: the run did not exercise elections"
    );
    let violations = timeline.violations();
    assert!(
        violations.is_empty(),
        "seed {seed} (replay with this seed): term violations {violations:#?}\nin timeline {:#?}",
        timeline.intervals()
    );
}

/// Defines one test per scenario of the suite.
///
/// `$test` is the test attribute (for example `tokio::test(start_paused = true)`), `$backend` an
/// expression of type `Option<impl Backend>` (`None`: skipped, the harness said why), and
/// `$rounds` the number of handovers in the contention scenarios.
#[macro_export]
macro_rules! conformance_suite {
    (#[$test:meta] backend = $backend:expr, rounds = $rounds:expr) => {
        $crate::conformance_suite!(@scenarios #[$test] $backend;
            single_member_becomes_leader => single_member_becomes_leader;
            two_contenders_share_one_leader => contenders_share_one_leader, 2, $rounds;
            five_contenders_share_one_leader => contenders_share_one_leader, 5, $rounds;
            crashed_leader_is_replaced_within_the_lease => crashed_leader_is_replaced_within_the_lease;
            released_lock_is_taken_within_one_poll => released_lock_is_taken_within_one_poll;
            unreachable_store_steps_down_before_anyone_else_acquires =>
                failing_renewals_step_down_before_anyone_else_acquires, $crate::faults::Fault::Unreachable;
            slow_store_steps_down_before_anyone_else_acquires =>
                failing_renewals_step_down_before_anyone_else_acquires,
                $crate::faults::Fault::Slow(::std::time::Duration::from_secs(30));
            w8_deposed_holder_cannot_renew => deposed_holder_cannot_renew;
            late_renewal_of_an_old_term_is_refused_for_the_same_member_id =>
                late_renewal_of_an_old_term_is_refused_for_the_same_member_id;
            w6_similar_names_never_collide => similar_names_never_collide;
            w7_deleted_row_is_recovered => deleted_row_is_recovered;
            w4_renewal_and_read_in_the_same_instant_do_not_take_over =>
                renewal_and_read_in_the_same_instant_do_not_take_over;
            w5_crash_during_acquire_leaves_a_takeable_lock => crash_during_acquire_leaves_a_takeable_lock;
            several_locks_per_process => several_locks_per_process;
            events_come_once_per_term_in_order => events_come_once_per_term_in_order;
        );
    };
    (@scenarios #[$test:meta] $backend:expr; $($name:ident => $scenario:ident $(, $arg:expr)*;)*) => {
        $(
            #[$test]
            async fn $name() {
                let Some(backend) = $backend else { return };
                $crate::conformance::$scenario(&backend $(, $arg)*).await;
            }
        )*
    };
}
