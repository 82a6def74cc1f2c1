//! The log and semaphore conformance suite: every scenario runs unchanged on every store
//! backend, like the election suite in [`crate::conformance`] (paused time on the memory
//! store; real time, with [`Backend::slack`], on the Spanner emulator).

use std::sync::Arc;
use std::time::Duration;

use hedge::kv::PutForwarder;
use hedge::semaphore::{PermitTimings, Waiters};
use hedge::store::log_rules::{LogInputError, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use hedge::store::permits::PermitInputError;
use hedge::store::{
    AcquireOutcome, Candidate, LockKey, PermitOutcome, PermitRequest, PutMode, PutOutcome,
    PutRequest, ReleaseOutcome, Retention, SemaphoreKey, Store, StoreError,
};
use hedge::{Election, KvError, Log, PutOptions, Semaphore, SemaphoreError, StorageOptions};
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, sleep, timeout};

use crate::conformance::Backend;
use crate::faults::{Fault, FaultyStore};
use crate::permit_timeline::{Held, PermitTimeline};

fn group(name: &str) -> String {
    format!("storage-{name}")
}

/// The log of `group` written by `member` on `store`, whose election (not running) gives the
/// fencing lock.
fn log_on(backend: &dyn Backend, store: Arc<dyn Store>, group: &str, member: &str) -> Log {
    let writer = Candidate::new(member);
    let election = Election::new(
        store.clone(),
        LockKey::new(group, LockKey::LEADER),
        writer.clone(),
        backend.timings(),
    )
    .expect("valid election settings");
    Log::new(store, election, writer, &StorageOptions::default())
}

async fn semaphore_on(
    store: Arc<dyn Store>,
    group: &str,
    name: &str,
    limit: u32,
    member: &str,
    timings: PermitTimings,
    waiters: Waiters,
) -> Semaphore {
    Semaphore::define(
        store,
        SemaphoreKey::new(group, name),
        limit,
        Candidate::new(member),
        timings,
        waiters,
    )
    .await
    .expect("a semaphore")
}

fn values(entries: &[hedge::store::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.value_str().expect("text").to_owned())
        .collect()
}

/// Put and get: versions get increasing sequence numbers in commit order; the latest, the N
/// newest, the oldest and all versions come back as they should, with the writer recorded.
pub async fn log_put_and_get(backend: &dyn Backend) {
    let g = group("put-get");
    let log = log_on(backend, backend.member_store().await, &g, "writer-a");
    assert_eq!(log.get("k").await.expect("get"), None);
    let mut written = Vec::new();
    for value in ["1", "2", "3"] {
        written.push(log.put("k", value).await.expect("put"));
    }
    let seqs: Vec<u64> = written.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(
        written
            .windows(2)
            .all(|w| w[0].committed_at <= w[1].committed_at && w[0].id != w[1].id)
    );
    let latest = log.get("k").await.expect("get").expect("a version");
    assert_eq!(latest, written[2], "get returns what put reported");
    assert_eq!(latest.writer, "writer-a");
    assert_eq!(
        latest.token, None,
        "a member that does not lead records no token"
    );
    assert_eq!(log.get_str("k").await.expect("get").as_deref(), Some("3"));
    assert_eq!(
        values(&log.newest("k", 2).await.expect("newest")),
        ["3", "2"]
    );
    assert_eq!(
        values(&log.newest("k", 10).await.expect("newest")),
        ["3", "2", "1"]
    );
    let oldest = log.oldest("k").await.expect("oldest").expect("a version");
    assert_eq!((oldest.seq, oldest.value_str().expect("text")), (1, "1"));
    assert_eq!(values(&log.all("k").await.expect("all")), ["3", "2", "1"]);
    // Bytes go through untouched; text is a convenience.
    let bytes = log.put("bin", vec![0u8, 255, 10]).await.expect("put");
    assert_eq!(
        log.get("bin").await.expect("get").expect("a version").value,
        [0, 255, 10]
    );
    assert!(matches!(
        log.get_str("bin").await,
        Err(KvError::NotUtf8 { seq, .. }) if seq == bytes.seq
    ));
    // Another group's log is another log.
    let other = log_on(
        backend,
        backend.member_store().await,
        &group("put-get-2"),
        "w",
    );
    assert_eq!(other.get("k").await.expect("get"), None);
}

/// Two versions with the same commit timestamp: "latest" is still the greatest sequence
/// number, never ambiguous, and the next put continues after them.
pub async fn log_same_commit_timestamp(backend: &dyn Backend) {
    let g = group("tie");
    let log = log_on(backend, backend.member_store().await, &g, "w");
    log.put("k", "before").await.expect("put");
    backend.write_tied_versions(&g, "k", &["x", "y", "z"]).await;
    let all = log.all("k").await.expect("all");
    assert_eq!(values(&all), ["z", "y", "x", "before"]);
    let tied = &all[..3];
    assert!(
        tied.iter().all(|e| e.committed_at == tied[0].committed_at),
        "the three versions share one commit timestamp: {tied:#?}"
    );
    let latest = log.get("k").await.expect("get").expect("a version");
    assert_eq!((latest.seq, latest.value_str().expect("text")), (4, "z"));
    let next = log.put("k", "after").await.expect("put");
    assert_eq!(next.seq, 5);
    assert_eq!(
        log.get_str("k").await.expect("get").as_deref(),
        Some("after")
    );
}

/// Overwrite in place (hedge's NoAppend): the key keeps exactly the new version, under a fresh
/// sequence number; appends after it add versions again.
pub async fn log_overwrite_in_place(backend: &dyn Backend) {
    let g = group("overwrite");
    let log = log_on(backend, backend.member_store().await, &g, "w");
    log.put("k", "a1").await.expect("put");
    log.put("k", "a2").await.expect("put");
    let b = log
        .put_with("k", "b", PutOptions::overwrite())
        .await
        .expect("overwrite");
    assert_eq!(b.seq, 3);
    assert_eq!(log.all("k").await.expect("all"), std::slice::from_ref(&b));
    log.put("k", "c").await.expect("put");
    assert_eq!(values(&log.all("k").await.expect("all")), ["c", "b"]);
    let d = log
        .put_with("k", "d", PutOptions::overwrite())
        .await
        .expect("overwrite");
    assert_eq!(d.seq, 5);
    assert_eq!(log.all("k").await.expect("all"), [d]);
    // Overwriting a key that never existed writes its first version.
    let first = log
        .put_with("fresh", "v", PutOptions::overwrite())
        .await
        .expect("overwrite");
    assert_eq!(first.seq, 1);
}

/// Listing by prefix: exactly the keys that start with the prefix (bound as a parameter, so
/// `%` and `_` are plain characters), in byte order, paged, without other groups' keys or keys
/// that have no version left.
pub async fn log_prefix_listing(backend: &dyn Backend) {
    let g = group("list");
    let store = backend.member_store().await;
    let log = log_on(backend, store.clone(), &g, "w");
    for key in [
        "app/b", "app/a", "app_x", "apq", "app/c/d", "other", "a%b", "a_b", "axb", "empty",
    ] {
        log.put(key, "v").await.expect("put");
    }
    log_on(backend, store, &group("list-2"), "w")
        .put("app/z", "v")
        .await
        .expect("put");
    assert_eq!(
        log.list_keys("app/").await.expect("list"),
        ["app/a", "app/b", "app/c/d"]
    );
    assert_eq!(log.list_keys("a_").await.expect("list"), ["a_b"]);
    assert_eq!(log.list_keys("a%").await.expect("list"), ["a%b"]);
    assert_eq!(
        log.list_keys_page("app", None, 2).await.expect("page"),
        ["app/a", "app/b"]
    );
    assert_eq!(
        log.list_keys_page("app", Some("app/b"), 2)
            .await
            .expect("page"),
        ["app/c/d", "app_x"]
    );
    assert!(log.list_keys("nothing").await.expect("list").is_empty());
    // A key whose versions were all trimmed is not listed.
    sleep(Duration::from_millis(5)).await;
    assert_eq!(
        log.trim("empty", Retention::MaxAge(Duration::ZERO))
            .await
            .expect("trim"),
        1
    );
    assert_eq!(
        log.list_keys("").await.expect("list"),
        [
            "a%b", "a_b", "app/a", "app/b", "app/c/d", "app_x", "apq", "axb", "other"
        ]
    );
}

/// Trimming: to the N newest, and by age on the store's clock; sequence numbers are never
/// reused afterwards.
pub async fn log_trimming(backend: &dyn Backend) {
    let g = group("trim");
    let log = log_on(backend, backend.member_store().await, &g, "w");
    for value in ["1", "2", "3", "4", "5"] {
        log.put("k", value).await.expect("put");
    }
    assert_eq!(
        log.trim("k", Retention::KeepNewest(2)).await.expect("trim"),
        3
    );
    assert_eq!(values(&log.all("k").await.expect("all")), ["5", "4"]);
    assert_eq!(
        log.trim("k", Retention::KeepNewest(2)).await.expect("trim"),
        0
    );
    assert_eq!(
        log.trim("nosuch", Retention::KeepNewest(1))
            .await
            .expect("trim"),
        0
    );
    // By age: the two old versions go, the fresh one stays.
    let age = Duration::from_secs(1);
    sleep(age + backend.slack()).await;
    let fresh = log.put("k", "6").await.expect("put");
    assert_eq!(fresh.seq, 6);
    assert_eq!(
        log.trim("k", Retention::MaxAge(age)).await.expect("trim"),
        2
    );
    assert_eq!(log.all("k").await.expect("all"), [fresh]);
    // Everything may go; the next version still gets a new sequence number.
    sleep(Duration::from_millis(5)).await;
    assert_eq!(
        log.trim("k", Retention::MaxAge(Duration::ZERO))
            .await
            .expect("trim"),
        1
    );
    assert_eq!(log.get("k").await.expect("get"), None);
    assert_eq!(log.put("k", "7").await.expect("put").seq, 7);
}

/// A retried put with the same idempotency key appends once and returns the original version;
/// a put whose reply is lost is retried by the log itself, and written once.
pub async fn retried_put_appends_once(backend: &dyn Backend) {
    let g = group("idempotent");
    let faulty = FaultyStore::new(backend.member_store().await);
    let log = log_on(backend, Arc::new(faulty.clone()), &g, "w");
    let first = log
        .put_with("k", "v", PutOptions::default().idempotency_key("req-1"))
        .await
        .expect("put");
    let again = log
        .put_with("k", "v", PutOptions::default().idempotency_key("req-1"))
        .await
        .expect("retry");
    assert_eq!(again, first, "the original version comes back");
    assert_eq!(log.all("k").await.expect("all").len(), 1);
    // The same idempotency key on another log key is another request.
    log.put_with("k2", "v", PutOptions::default().idempotency_key("req-1"))
        .await
        .expect("put");
    assert_eq!(log.all("k2").await.expect("all").len(), 1);

    // The store commits, then the reply is lost: the log retries with the same request id.
    faulty.set(Fault::LoseReply);
    let healer = {
        let faulty = faulty.clone();
        tokio::spawn(async move {
            sleep(Duration::from_millis(120)).await;
            faulty.set(Fault::None);
        })
    };
    let lost = log
        .put("k", "lost-reply")
        .await
        .expect("written despite lost replies");
    healer.await.expect("healer");
    let all = log.all("k").await.expect("all");
    assert_eq!(values(&all), ["lost-reply", "v"], "written exactly once");
    assert_eq!(all[0], lost);

    // At the store level: the second attempt with the same request id writes nothing.
    let request = PutRequest {
        key: "k3".into(),
        value: b"v".to_vec(),
        writer: Candidate::new("w"),
        token: None,
        mode: PutMode::Append,
        request_id: Some("req-3".into()),
        fence: None,
    };
    faulty.set(Fault::LoseReply);
    assert!(faulty.put(&g, &request).await.is_err(), "the reply is lost");
    faulty.set(Fault::None);
    let replayed = faulty.put(&g, &request).await.expect("retry");
    assert!(
        matches!(&replayed, PutOutcome::Replayed(e) if e.seq == 1),
        "{replayed:?}"
    );
}

/// A put fenced on a deposed leader's token is refused, checked against the lock row in the
/// put's own transaction; the new leader's fenced put is written.
pub async fn fenced_put_after_leader_change_is_rejected(backend: &dyn Backend) {
    let g = group("fenced");
    let store = backend.member_store().await;
    let log = log_on(backend, store.clone(), &g, "w");
    let lock = LockKey::new(&g, LockKey::LEADER);
    let short = Duration::from_millis(300);
    let AcquireOutcome::Granted { token: old } = store
        .acquire(&lock, &"old".into(), short)
        .await
        .expect("acquire")
    else {
        panic!("a free lock is granted");
    };
    let by_old = log
        .put_fenced("k", "by-old", old)
        .await
        .expect("fenced put");
    assert_eq!(by_old.token, Some(old));
    sleep(short + backend.slack()).await;
    let AcquireOutcome::Granted { token: new } = store
        .acquire(&lock, &"new".into(), Duration::from_secs(30))
        .await
        .expect("acquire")
    else {
        panic!("an expired lock is granted");
    };
    let refused = log.put_fenced("k", "late", old).await;
    assert!(
        matches!(&refused, Err(KvError::Fenced { token, current: Some(c), .. }) if *token == old && *c == new),
        "{refused:?}"
    );
    let by_new = log
        .put_fenced("k", "by-new", new)
        .await
        .expect("fenced put");
    assert_eq!(by_new.token, Some(new));
    assert_eq!(
        values(&log.all("k").await.expect("all")),
        ["by-new", "by-old"]
    );
    // A released lock fences every token.
    assert_eq!(
        store.release(&lock, "new", new).await.expect("release"),
        ReleaseOutcome::Released
    );
    assert!(matches!(
        log.put_fenced("k", "after-release", new).await,
        Err(KvError::Fenced { current: None, .. })
    ));
    assert_eq!(log.all("k").await.expect("all").len(), 2);
}

/// At least eight members, each with a store of its own (separate clients on Spanner, as
/// separate pods), contend for a semaphore of limit 3; the checker over the timeline of held
/// permits never sees more than three at once, and sees three.
pub async fn semaphore_limit_holds_under_contention(backend: &dyn Backend, rounds: usize) {
    const LIMIT: u32 = 3;
    const MEMBERS: usize = 8;
    let g = group("contention");
    let timeline = PermitTimeline::new();
    let timings = backend.permit_timings();
    let mut tasks = Vec::new();
    for m in 0..MEMBERS {
        let store = backend.member_store().await;
        let semaphore = semaphore_on(
            store,
            &g,
            "pool",
            LIMIT,
            &format!("m{m}"),
            timings,
            Waiters::default(),
        )
        .await;
        let timeline = timeline.clone();
        let slack = backend.slack();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(m as u64);
            for _ in 0..rounds {
                let permit = timeout(Duration::from_secs(120), semaphore.acquire())
                    .await
                    .expect("a permit within two minutes")
                    .expect("acquire");
                let start = Instant::now();
                // Holding dominates the store's latency, so that overlapping holds would
                // show in the recorded intervals.
                let hold = slack.max(Duration::from_millis(20))
                    + Duration::from_millis(rng.random_range(0..50));
                sleep(hold).await;
                assert!(permit.is_held());
                let end = Instant::now();
                timeline.record(Held {
                    holder: format!("m{m}"),
                    token: permit.token(),
                    start,
                    end,
                });
                permit.release().await.expect("release");
            }
        }));
    }
    // An observer reads the semaphore meanwhile: never more than three live permits.
    let observer = {
        let store = backend.member_store().await;
        let key = SemaphoreKey::new(&g, "pool");
        tokio::spawn(async move {
            loop {
                let state = store.semaphore_state(&key).await.expect("state");
                let live = state.map_or(0, |s| s.holders.len());
                assert!(live <= LIMIT as usize, "{live} live permits");
                sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for task in tasks {
        task.await.expect("member task");
    }
    assert!(
        !observer.is_finished(),
        "the observer saw more than the limit"
    );
    observer.abort();
    let held = timeline.held();
    assert_eq!(held.len(), MEMBERS * rounds);
    let mut tokens: Vec<u64> = held.iter().map(|h| h.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), held.len(), "every permit has its own token");
    let most = timeline.max_overlap();
    assert!(most <= LIMIT as usize, "{most} permits held at once");
    assert_eq!(most, LIMIT as usize, "the run never filled the semaphore");
}

/// A holder that crashes (its renewals stop, nothing is released) loses its permit one lease
/// after its last renewal, and a waiter gets it then, not before.
pub async fn crashed_holder_loses_its_permit_after_the_lease(backend: &dyn Backend) {
    let g = group("crash");
    let timings = backend.permit_timings();
    let holder = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "holder",
        timings,
        Waiters::default(),
    )
    .await;
    let waiter = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "waiter",
        timings,
        Waiters::default(),
    )
    .await;
    let held = holder.acquire().await.expect("acquire");
    let old_token = held.token();
    let waiting = tokio::spawn(async move {
        let permit = waiter.acquire().await.expect("acquire");
        (Instant::now(), permit)
    });
    // Let a few renewals happen, then crash.
    sleep(timings.renew_interval * 2 + timings.renew_interval / 2).await;
    assert!(
        !waiting.is_finished(),
        "the waiter must wait while the holder renews"
    );
    held.abort();
    let crashed_at = Instant::now();
    let (got_at, permit) = timeout(timings.lease * 3, waiting)
        .await
        .expect("the waiter gets the permit")
        .expect("waiter task");
    let after = got_at - crashed_at;
    assert!(
        after
            >= timings
                .lease
                .saturating_sub(timings.renew_interval + backend.slack()),
        "the crashed permit stopped counting too early: {after:?}"
    );
    assert!(
        after <= timings.lease + backend.slack(),
        "reclaimed after {after:?}, lease {:?}",
        timings.lease
    );
    assert!(permit.token() > old_token);
    permit.release().await.expect("release");
}

/// A released permit wakes a waiting acquirer of the same process at once (not at its next
/// backoff); the transport's hook wakes another process's waiter the same way.
pub async fn released_permit_wakes_a_waiter_promptly(backend: &dyn Backend) {
    let g = group("wake");
    // A long backoff: without a wake-up the waiter would sleep for seconds.
    let timings = PermitTimings {
        max_backoff: Duration::from_secs(20),
        ..PermitTimings::from_lease(Duration::from_secs(30))
    };
    let store = backend.member_store().await;
    let waiters = Waiters::default();
    let first = semaphore_on(store.clone(), &g, "one", 1, "a", timings, waiters.clone()).await;
    let second = semaphore_on(store, &g, "one", 1, "b", timings, waiters).await;
    let held = first.acquire().await.expect("acquire");
    let waiting = {
        let second = second.clone();
        tokio::spawn(async move {
            let permit = second.acquire().await.expect("acquire");
            (Instant::now(), permit)
        })
    };
    // Long enough for the waiter's backoff to have grown to seconds.
    sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished());
    let released_at = Instant::now();
    held.release().await.expect("release");
    let (got_at, permit) = waiting.await.expect("waiter task");
    assert!(
        got_at - released_at <= backend.slack(),
        "woken after {:?}",
        got_at - released_at
    );

    // Another process (its own store and waiters): woken by the transport's hook.
    let remote_waiters = Waiters::default();
    let remote = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "remote",
        timings,
        remote_waiters.clone(),
    )
    .await;
    let waiting = tokio::spawn(async move {
        let permit = remote.acquire().await.expect("acquire");
        (Instant::now(), permit)
    });
    sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished());
    let released_at = Instant::now();
    permit.release().await.expect("release");
    // What the peer transport does when the releasing member announces it.
    remote_waiters.wake(&SemaphoreKey::new(&g, "one"));
    let (got_at, permit) = waiting.await.expect("waiter task");
    assert!(
        got_at - released_at <= backend.slack(),
        "woken after {:?}",
        got_at - released_at
    );
    permit.release().await.expect("release");
}

/// A cancelled acquire leaves no permit behind: neither while waiting, nor when it is
/// cancelled after its grant committed and before the reply arrived.
pub async fn cancelled_acquire_leaves_no_permit(backend: &dyn Backend) {
    let g = group("cancel");
    let timings = backend.permit_timings();
    let key = SemaphoreKey::new(&g, "one");
    let observer = backend.member_store().await;
    let holder = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "holder",
        timings,
        Waiters::default(),
    )
    .await;
    let held = holder.acquire().await.expect("acquire");
    // Cancelled while waiting.
    let waiter = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "waiter",
        timings,
        Waiters::default(),
    )
    .await;
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire().await }
    });
    sleep(timings.max_backoff * 2).await;
    waiting.abort();
    assert!(waiting.await.is_err(), "the acquire was cancelled");
    held.release().await.expect("release");
    let state = observer
        .semaphore_state(&key)
        .await
        .expect("state")
        .expect("exists");
    assert!(state.holders.is_empty(), "{state:?}");

    // Cancelled after its grant committed, before the reply came back.
    let delay = backend.slack() * 2 + Duration::from_millis(200);
    let slow = FaultyStore::new(backend.member_store().await);
    slow.set(Fault::SlowReply(delay));
    let slow_waiter = semaphore_on(
        Arc::new(slow.clone()),
        &g,
        "one",
        1,
        "slow",
        timings,
        Waiters::default(),
    )
    .await;
    let acquiring = tokio::spawn(async move { slow_waiter.acquire().await });
    // The grant commits at once; its reply is on its way.
    let committed = timeout(delay, async {
        loop {
            let state = observer.semaphore_state(&key).await.expect("state");
            if state.is_some_and(|s| s.holders.len() == 1) {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(committed.is_ok(), "the grant committed before its reply");
    acquiring.abort();
    assert!(acquiring.await.is_err(), "the acquire was cancelled");
    slow.set(Fault::None);
    // The attempt finishes on its own task, finds nobody to hand the permit to, and
    // releases it.
    let released = timeout(delay * 3 + backend.slack(), async {
        loop {
            let state = observer.semaphore_state(&key).await.expect("state");
            if state.is_some_and(|s| s.holders.is_empty()) {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        released.is_ok(),
        "the cancelled acquire's permit was released"
    );
    let next = holder.try_acquire().await.expect("try");
    assert!(next.is_some(), "the slot is free");
}

/// A permit is renewed in the background while held: it outlives its lease, keeps its slot,
/// and is released on drop.
pub async fn held_permit_is_renewed_and_released_on_drop(backend: &dyn Backend) {
    let g = group("renew");
    let timings = backend.permit_timings();
    let a = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "a",
        timings,
        Waiters::default(),
    )
    .await;
    let b = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "b",
        timings,
        Waiters::default(),
    )
    .await;
    let permit = a.acquire().await.expect("acquire");
    for _ in 0..3 {
        sleep(timings.lease).await;
        assert!(permit.is_held());
        assert!(b.try_acquire().await.expect("try").is_none(), "still held");
    }
    drop(permit);
    let got = timeout(backend.slack() + Duration::from_millis(100), async {
        loop {
            if let Some(p) = b.try_acquire().await.expect("try") {
                break p;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("dropping the guard released the permit");
    got.release().await.expect("release");
}

/// A holder whose store becomes unreachable gives its permit up (cancelled, not held) before
/// its local deadline, and nobody else gets the permit before that deadline.
pub async fn unreachable_holder_gives_up_before_anyone_else_acquires(backend: &dyn Backend) {
    let g = group("unreachable");
    let timings = backend.permit_timings();
    let faulty = FaultyStore::new(backend.member_store().await);
    let holder = semaphore_on(
        Arc::new(faulty.clone()),
        &g,
        "one",
        1,
        "holder",
        timings,
        Waiters::default(),
    )
    .await;
    let waiter = semaphore_on(
        backend.member_store().await,
        &g,
        "one",
        1,
        "waiter",
        timings,
        Waiters::default(),
    )
    .await;
    let permit = holder.acquire().await.expect("acquire");
    let waiting = tokio::spawn(async move {
        let p = waiter.acquire().await.expect("acquire");
        (Instant::now(), p)
    });
    sleep(timings.renew_interval / 2).await;
    faulty.set(Fault::Unreachable);
    let cancelled = permit.cancelled();
    timeout(timings.lease + backend.slack(), cancelled.cancelled())
        .await
        .expect("the holder gives the permit up");
    let gave_up_at = Instant::now();
    let deadline = permit.deadline();
    assert!(gave_up_at <= deadline, "gave up after its deadline");
    assert!(!permit.is_held());
    let (got_at, other) = timeout(timings.lease * 2 + backend.slack(), waiting)
        .await
        .expect("the waiter gets the permit")
        .expect("waiter task");
    assert!(
        got_at >= deadline,
        "the permit was granted again before the holder's deadline"
    );
    assert!(matches!(
        permit.release().await,
        Err(SemaphoreError::Lost { .. })
    ));
    faulty.set(Fault::None);
    other.release().await.expect("release");
}

/// A semaphore stays usable whatever its history (hedge's Go deletes it once it has been full
/// and drained); one process may hold several permits; tokens keep increasing.
pub async fn semaphore_survives_any_history(backend: &dyn Backend) {
    let g = group("history");
    let timings = backend.permit_timings();
    let sem = semaphore_on(
        backend.member_store().await,
        &g,
        "two",
        2,
        "p",
        timings,
        Waiters::default(),
    )
    .await;
    let mut last = 0;
    for _ in 0..3 {
        let a = sem.try_acquire().await.expect("try").expect("free");
        let b = sem.try_acquire().await.expect("try").expect("free");
        assert!(a.token() > last && b.token() > a.token());
        last = b.token();
        assert!(sem.try_acquire().await.expect("try").is_none(), "full");
        assert_eq!(sem.state().await.expect("state").holders.len(), 2);
        a.release().await.expect("release");
        b.release().await.expect("release");
        assert!(sem.state().await.expect("state").holders.is_empty());
    }
    // Opening it by name later still works, with its limit.
    let reopened = Semaphore::open(
        backend.member_store().await,
        SemaphoreKey::new(&g, "two"),
        Candidate::new("q"),
        timings,
        Waiters::default(),
    )
    .await
    .expect("open");
    assert_eq!(reopened.limit(), 2);
}

/// Bad input gets a typed error and writes nothing.
pub async fn bad_input_is_a_typed_error(backend: &dyn Backend) {
    let g = group("bad-input");
    let store = backend.member_store().await;
    let log = log_on(backend, store.clone(), &g, "w");
    let cases: Vec<(&str, Result<hedge::store::LogEntry, KvError>)> = vec![
        ("empty key", log.put("", "v").await),
        (
            "long key",
            log.put(&"k".repeat(MAX_KEY_BYTES + 1), "v").await,
        ),
        ("control", log.put("a\nb", "v").await),
        ("empty value", log.put("k", "").await),
        (
            "large value",
            log.put("k", vec![0u8; MAX_VALUE_BYTES + 1]).await,
        ),
        (
            "empty idempotency key",
            log.put_with("k", "v", PutOptions::default().idempotency_key(""))
                .await,
        ),
    ];
    for (what, result) in cases {
        assert!(
            matches!(result, Err(KvError::Input(_))),
            "{what}: {result:?}"
        );
    }
    assert!(matches!(
        log.get("").await,
        Err(KvError::Input(LogInputError::EmptyKey))
    ));
    assert!(matches!(
        log.newest("k", 0).await,
        Err(KvError::Input(LogInputError::Zero { .. }))
    ));
    assert!(matches!(
        log.trim("k", Retention::KeepNewest(0)).await,
        Err(KvError::Input(LogInputError::Zero { .. }))
    ));
    assert!(matches!(
        log.list_keys_page("", None, 0).await,
        Err(KvError::Input(LogInputError::Zero { .. }))
    ));
    assert!(
        log.list_keys("").await.expect("list").is_empty(),
        "nothing written"
    );
    // The store refuses bad input too, whoever calls it.
    let request = PutRequest {
        key: String::new(),
        value: b"v".to_vec(),
        writer: Candidate::new("w"),
        token: None,
        mode: PutMode::Append,
        request_id: None,
        fence: None,
    };
    assert!(matches!(
        store.put(&g, &request).await,
        Err(StoreError::InvalidRequest { .. })
    ));

    let timings = backend.permit_timings();
    let define = |name: &'static str, limit: u32| {
        Semaphore::define(
            store.clone(),
            SemaphoreKey::new(&g, name),
            limit,
            Candidate::new("w"),
            timings,
            Waiters::default(),
        )
    };
    assert!(matches!(
        define("zero", 0).await,
        Err(SemaphoreError::Input(PermitInputError::ZeroLimit))
    ));
    assert!(matches!(
        define("huge", hedge::semaphore::MAX_PERMIT_LIMIT + 1).await,
        Err(SemaphoreError::Input(
            PermitInputError::LimitTooLarge { .. }
        ))
    ));
    assert!(matches!(
        define("bad name", 1).await,
        Err(SemaphoreError::Input(PermitInputError::Name(_)))
    ));
    define("three", 3).await.expect("define");
    define("three", 3).await.expect("the same limit again");
    assert!(matches!(
        define("three", 4).await,
        Err(SemaphoreError::LimitMismatch {
            existing: 3,
            requested: 4,
            ..
        })
    ));
    let unknown = Semaphore::open(
        store.clone(),
        SemaphoreKey::new(&g, "nosuch"),
        Candidate::new("w"),
        timings,
        Waiters::default(),
    )
    .await;
    assert!(matches!(unknown, Err(SemaphoreError::Unknown { .. })));
    let request = PermitRequest {
        permit_id: "p".into(),
        holder: Candidate::new("w"),
        lease: timings.lease,
    };
    assert_eq!(
        store
            .acquire_permit(&SemaphoreKey::new(&g, "nosuch"), &request)
            .await
            .expect("acquire"),
        PermitOutcome::UnknownSemaphore
    );
    assert_eq!(
        store
            .semaphore_state(&SemaphoreKey::new(&g, "zero"))
            .await
            .expect("state"),
        None,
        "a refused definition writes nothing"
    );
}

/// The largest value allowed is written and read back whole.
pub async fn largest_value_round_trips(backend: &dyn Backend) {
    let g = group("large");
    let log = log_on(backend, backend.member_store().await, &g, "w");
    let value: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    let written = log.put("big", value.clone()).await.expect("put");
    assert_eq!(written.value.len(), MAX_VALUE_BYTES);
    let read = log.get("big").await.expect("get").expect("a version");
    assert!(read.value == value, "the value came back whole");
}

/// A follower's put routed through the leader uses the transport's forwarder; when forwarding
/// fails it is written directly, once.
pub async fn forwarded_put_falls_back_to_a_direct_write_once(backend: &dyn Backend) {
    #[derive(Debug)]
    struct Failing(Arc<dyn Store>);
    #[async_trait::async_trait]
    impl PutForwarder for Failing {
        async fn forward(
            &self,
            group: &str,
            request: &PutRequest,
            _deadline: tokio::time::Instant,
        ) -> Result<PutOutcome, hedge::kv::ForwardError> {
            // The leader wrote it, but the reply never came back.
            self.0.put(group, request).await.expect("leader writes");
            Err(hedge::kv::ForwardError("connection reset".into()))
        }
    }
    let g = group("forward");
    let store = backend.member_store().await;
    let options = StorageOptions {
        put_routing: hedge::PutRouting::ViaLeader,
        forwarder: Some(Arc::new(Failing(store.clone()))),
        ..StorageOptions::default()
    };
    // The follower knows a leader: another member holds the lock.
    let lock = LockKey::new(&g, LockKey::LEADER);
    store
        .acquire(&lock, &"leader".into(), Duration::from_secs(60))
        .await
        .expect("acquire");
    let election = Election::new(
        store.clone(),
        lock,
        Candidate::new("follower"),
        backend.timings(),
    )
    .expect("election");
    let guard = election.spawn();
    let known = timeout(
        backend.timings().poll_interval * 2 + backend.slack(),
        async {
            loop {
                if election.leader().is_some() {
                    break;
                }
                sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    assert!(known.is_ok(), "the follower learns the leader");
    let follower_log = Log::new(
        store.clone(),
        election.clone(),
        Candidate::new("follower"),
        &options,
    );
    let entry = follower_log.put("k", "v").await.expect("put");
    assert_eq!(follower_log.all("k").await.expect("all"), [entry]);
    guard.shutdown().await.expect("stop");
}

/// Defines one test per scenario of the storage suite.
///
/// `$test` is the test attribute, `$backend` an expression of type `Option<impl Backend>`
/// (`None`: skipped), and `$rounds` the number of acquisitions per member in the contention
/// scenario.
#[macro_export]
macro_rules! storage_conformance_suite {
    (#[$test:meta] backend = $backend:expr, rounds = $rounds:expr) => {
        $crate::storage_conformance_suite!(@scenarios #[$test] $backend;
            log_put_and_get => log_put_and_get;
            log_same_commit_timestamp => log_same_commit_timestamp;
            log_overwrite_in_place => log_overwrite_in_place;
            log_prefix_listing => log_prefix_listing;
            log_trimming => log_trimming;
            retried_put_appends_once => retried_put_appends_once;
            fenced_put_after_leader_change_is_rejected => fenced_put_after_leader_change_is_rejected;
            forwarded_put_falls_back_to_a_direct_write_once =>
                forwarded_put_falls_back_to_a_direct_write_once;
            largest_value_round_trips => largest_value_round_trips;
            semaphore_limit_holds_under_contention =>
                semaphore_limit_holds_under_contention, $rounds;
            crashed_holder_loses_its_permit_after_the_lease =>
                crashed_holder_loses_its_permit_after_the_lease;
            released_permit_wakes_a_waiter_promptly => released_permit_wakes_a_waiter_promptly;
            cancelled_acquire_leaves_no_permit => cancelled_acquire_leaves_no_permit;
            held_permit_is_renewed_and_released_on_drop =>
                held_permit_is_renewed_and_released_on_drop;
            unreachable_holder_gives_up_before_anyone_else_acquires =>
                unreachable_holder_gives_up_before_anyone_else_acquires;
            semaphore_survives_any_history => semaphore_survives_any_history;
            bad_input_is_a_typed_error => bad_input_is_a_typed_error;
        );
    };
    (@scenarios #[$test:meta] $backend:expr; $($name:ident => $scenario:ident $(, $arg:expr)*;)*) => {
        $(
            #[$test]
            async fn $name() {
                let Some(backend) = $backend else { return };
                $crate::conformance_storage::$scenario(&backend $(, $arg)*).await;
            }
        )*
    };
}
