//! The in-process store: one critical section per operation, on tokio's clock.
//!
//! It backs the unit tests and simulations (with paused tokio time every timeout is exact and
//! instant) and the local demo. Several members share one `MemoryStore` by cloning it.
//!
//! A store whose operations take no time cannot catch a deadline computed from the reply, so
//! the memory store can be given what the real one has:
//!
//! * [`Latency`]: every operation waits `request` before its critical section (the request's
//!   trip to the store) and `reply` after it (the reply's trip back). The state changes at the
//!   moment a real commit would, in between.
//! * [`ClockSkew`]: the store's clock runs ahead of or behind the members' clock, and can jump
//!   at any moment, as a server's clock may. Leases and ages are judged on the store's clock
//!   only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::lease::{
    self, AcquireDecision, AcquireOutcome, ObservedLock, ReleaseOutcome, RenewOutcome,
};
use super::log_rules::{
    self, LogEntry, LogOrder, LogQuery, PutDecision, PutObservation, PutOutcome, PutRequest,
    Retention,
};
use super::permits::{
    self, DefineDecision, DefineOutcome, ObservedPermit, ObservedSemaphore, PermitDecision,
    PermitOutcome, PermitRenewal, PermitRequest, SemaphoreKey, SemaphoreState,
};
use super::{
    Candidate, LockKey, LockState, MemberHeartbeat, MemberRecord, Store, StoreError, StoreResult,
};

/// How long each operation of a [`MemoryStore`] takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// From the call to the critical section (the request's way to the store).
    pub request: Duration,
    /// From the critical section to the return (the reply's way back).
    pub reply: Duration,
}

/// Where the store's clock stands relative to the members' (tokio's) clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockSkew {
    /// The same clock.
    #[default]
    None,
    /// The store's clock reads this much later than the members'.
    Ahead(Duration),
    /// The store's clock reads this much earlier than the members'.
    Behind(Duration),
}

/// The in-process store. Clones share the same state.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    /// The store's clock starts here; `SystemTime` values are `wall_origin` plus elapsed time.
    origin: Instant,
    wall_origin: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    locks: BTreeMap<LockKey, LockRow>,
    /// The greatest token ever granted per lock, kept when a row is deleted: the store's clock
    /// (the token floor) may stand still under paused time, so it alone cannot keep tokens
    /// increasing.
    high_water: BTreeMap<LockKey, u64>,
    members: BTreeMap<(String, String), MemberRow>,
    /// The log, by (group, key).
    log: BTreeMap<(String, String), KeyLog>,
    semaphores: BTreeMap<SemaphoreKey, SemaphoreRow>,
    latency: Latency,
    skew: ClockSkew,
}

/// One log key: its last sequence number (kept when versions are trimmed) and its versions.
#[derive(Clone, Debug, Default)]
struct KeyLog {
    last_seq: u64,
    versions: BTreeMap<u64, LogRow>,
}

#[derive(Clone, Debug)]
struct LogRow {
    entry: LogEntry,
    committed: Instant,
}

#[derive(Clone, Debug)]
struct SemaphoreRow {
    limit: u32,
    last_token: u64,
    permits: BTreeMap<String, PermitRow>,
}

#[derive(Clone, Debug)]
struct PermitRow {
    holder: String,
    holder_incarnation: String,
    token: u64,
    lease: Duration,
    heartbeat: Instant,
}

#[derive(Clone, Debug)]
struct LockRow {
    holder: Option<String>,
    holder_incarnation: Option<String>,
    token: u64,
    lease: Duration,
    heartbeat: Instant,
    granted_at: Instant,
}

#[derive(Clone, Debug)]
struct MemberRow {
    incarnation: String,
    address: Option<String>,
    ttl: Duration,
    heartbeat: Instant,
    joined_at: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store whose clock starts now, with no latency and no skew.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            origin: Instant::now(),
            wall_origin: SystemTime::now(),
        }
    }

    /// Makes every operation from now on take `latency`.
    pub fn set_latency(&self, latency: Latency) {
        self.state().latency = latency;
    }

    /// Moves the store's clock relative to the members' clock from now on (a jump, if it was
    /// elsewhere before). Rows keep the times they were written at, so a jump ahead makes every
    /// lease look older at once.
    pub fn set_clock_skew(&self, skew: ClockSkew) {
        self.state().skew = skew;
    }

    /// Deletes a lock row, as a person (or a clean-up gone wrong) might: for recovery tests.
    pub fn delete_lock_row(&self, key: &LockKey) {
        self.state().locks.remove(key);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-operation; every operation
        // leaves the maps consistent before it can panic, so the state is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `op` as one atomic step: after the request latency, in one critical section at the
    /// store's current time, and returns its result after the reply latency.
    async fn step<T>(&self, op: impl FnOnce(&mut State, Instant) -> T) -> T {
        let request = self.state().latency.request;
        if !request.is_zero() {
            tokio::time::sleep(request).await;
        }
        let (result, reply) = {
            let mut state = self.state();
            let now = store_clock(Instant::now(), state.skew);
            let result = op(&mut state, now);
            (result, state.latency.reply)
        };
        if !reply.is_zero() {
            tokio::time::sleep(reply).await;
        }
        result
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.wall_origin + at.saturating_duration_since(self.origin)
    }

    fn unix_micros(&self, now: Instant) -> u64 {
        let since_epoch = self
            .wall(now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
    }

    fn observe(&self, row: &LockRow, now: Instant) -> ObservedLock {
        ObservedLock {
            holder: row.holder.clone(),
            holder_incarnation: row.holder_incarnation.clone(),
            token: row.token,
            lease: row.lease,
            age: now.saturating_duration_since(row.heartbeat),
            granted_at: self.wall(row.granted_at),
        }
    }
}

fn observe_permits(row: &SemaphoreRow, now: Instant) -> Vec<ObservedPermit> {
    row.permits
        .iter()
        .map(|(id, p)| ObservedPermit {
            permit_id: id.clone(),
            holder: p.holder.clone(),
            holder_incarnation: p.holder_incarnation.clone(),
            token: p.token,
            lease: p.lease,
            age: now.saturating_duration_since(p.heartbeat),
        })
        .collect()
}

fn memory_corrupt(key: impl std::fmt::Display, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table: "memory".into(),
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// The store's clock at the members' instant `at`.
fn store_clock(at: Instant, skew: ClockSkew) -> Instant {
    match skew {
        ClockSkew::None => at,
        ClockSkew::Ahead(d) => at + d,
        ClockSkew::Behind(d) => at.checked_sub(d).unwrap_or(at),
    }
}

fn exhausted(key: &LockKey, e: lease::TokensExhausted) -> StoreError {
    StoreError::Corrupt {
        table: "memory".into(),
        key: key.to_string(),
        message: e.to_string(),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.step(|state, now| {
            let observed = state.locks.get(key).map(|r| self.observe(r, now));
            let high_water = state.high_water.get(key).copied();
            let previous = observed.as_ref().map(|o| o.token).max(high_water);
            let floor = self.unix_micros(now);
            let decision = match lease::decide_acquire(observed.as_ref(), floor) {
                Ok(AcquireDecision::Grant { .. }) => {
                    lease::next_token(previous, floor).map(|token| AcquireDecision::Grant { token })
                }
                other => other,
            };
            match decision.map_err(|e| exhausted(key, e))? {
                AcquireDecision::Held(holder) => Ok(AcquireOutcome::Held(holder)),
                AcquireDecision::Grant { token } => {
                    state.high_water.insert(key.clone(), token);
                    state.locks.insert(
                        key.clone(),
                        LockRow {
                            holder: Some(candidate.id.clone()),
                            holder_incarnation: Some(candidate.incarnation.clone()),
                            token,
                            lease,
                            heartbeat: now,
                            granted_at: now,
                        },
                    );
                    Ok(AcquireOutcome::Granted { token })
                }
            }
        })
        .await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        self.step(|state, now| {
            let observed = state.locks.get(key).map(|r| self.observe(r, now));
            match lease::decide_renew(observed.as_ref(), holder, token) {
                Err(cause) => Ok(RenewOutcome::Lost(cause)),
                Ok(()) => {
                    if let Some(row) = state.locks.get_mut(key) {
                        row.heartbeat = now;
                        row.lease = lease;
                    }
                    Ok(RenewOutcome::Renewed)
                }
            }
        })
        .await
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.step(|state, now| {
            let observed = state.locks.get(key).map(|r| self.observe(r, now));
            if !lease::decide_release(observed.as_ref(), holder, token) {
                return Ok(ReleaseOutcome::NotHolder);
            }
            if let Some(row) = state.locks.get_mut(key) {
                row.holder = None;
                row.holder_incarnation = None;
                row.heartbeat = now;
            }
            Ok(ReleaseOutcome::Released)
        })
        .await
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.step(|state, now| {
            Ok(state.locks.get(key).map(|row| {
                let observed = self.observe(row, now);
                LockState {
                    holder: observed.live_holder(),
                    last_token: observed.token,
                }
            }))
        })
        .await
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        self.step(|state, now| {
            let key = (group.to_owned(), member.id.clone());
            let continuing = |row: &MemberRow| {
                now.saturating_duration_since(row.heartbeat) < row.ttl
                    && row.incarnation == member.incarnation
            };
            let joined_at = match state.members.get(&key) {
                Some(row) if continuing(row) => row.joined_at,
                _ => now,
            };
            state.members.insert(
                key,
                MemberRow {
                    incarnation: member.incarnation.clone(),
                    address: member.address.clone(),
                    ttl: member.ttl,
                    heartbeat: now,
                    joined_at,
                },
            );
            Ok(())
        })
        .await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.step(|state, _| {
            state.members.remove(&(group.to_owned(), id.to_owned()));
            Ok(())
        })
        .await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        self.step(|state, now| {
            Ok(state
                .members
                .iter()
                .filter(|((g, _), row)| {
                    g == group && now.saturating_duration_since(row.heartbeat) < row.ttl
                })
                .map(|((_, id), row)| MemberRecord {
                    id: id.clone(),
                    incarnation: Some(row.incarnation.clone()),
                    address: row.address.clone(),
                    joined_at: self.wall(row.joined_at),
                })
                .collect())
        })
        .await
    }

    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome> {
        request.validate()?;
        self.step(|state, now| {
            let map_key = (group.to_owned(), request.key.clone());
            let key_log = state.log.get(&map_key);
            let replay = request.request_id.as_ref().and_then(|id| {
                key_log?
                    .versions
                    .values()
                    .find(|row| row.entry.request_id.as_ref() == Some(id))
                    .map(|row| row.entry.clone())
            });
            let lock = request.fence.as_ref().and_then(|name| {
                let row = state.locks.get(&LockKey::new(group, name.as_str()))?;
                Some(self.observe(row, now))
            });
            let observed = PutObservation {
                last_seq: key_log.map(|k| k.last_seq),
                replay,
                lock,
            };
            let decision = log_rules::decide_put(request, &observed)
                .map_err(|e| memory_corrupt(format!("{group}/{}", request.key), e))?;
            match decision {
                PutDecision::Replay(entry) => Ok(PutOutcome::Replayed(entry)),
                PutDecision::Fenced { current } => Ok(PutOutcome::Fenced { current }),
                PutDecision::Write { seq, replace_all } => {
                    let entry = LogEntry {
                        key: request.key.clone(),
                        seq,
                        id: uuid::Uuid::new_v4().to_string(),
                        value: request.value.clone(),
                        writer: request.writer.id.clone(),
                        writer_incarnation: request.writer.incarnation.clone(),
                        token: request.token,
                        request_id: request.request_id.clone(),
                        committed_at: self.wall(now),
                    };
                    let key_log = state.log.entry(map_key).or_default();
                    if replace_all {
                        key_log.versions.clear();
                    }
                    key_log.last_seq = seq;
                    key_log.versions.insert(
                        seq,
                        LogRow {
                            entry: entry.clone(),
                            committed: now,
                        },
                    );
                    Ok(PutOutcome::Written(entry))
                }
            }
        })
        .await
    }

    async fn read_log(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        log_rules::validate_key(key)?;
        query.validate()?;
        self.step(|state, _| {
            let Some(key_log) = state.log.get(&(group.to_owned(), key.to_owned())) else {
                return Ok(Vec::new());
            };
            let limit = query
                .limit
                .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
            let rows = key_log.versions.values();
            let entries: Vec<LogEntry> = match query.order {
                LogOrder::NewestFirst => rows.rev().take(limit).map(|r| r.entry.clone()).collect(),
                LogOrder::OldestFirst => rows.take(limit).map(|r| r.entry.clone()).collect(),
            };
            Ok(entries)
        })
        .await
    }

    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        log_rules::validate_prefix(prefix)?;
        log_rules::validate_list_limit(limit)?;
        self.step(|state, _| {
            let from = (group.to_owned(), prefix.to_owned());
            Ok(state
                .log
                .range(from..)
                .take_while(|((g, k), _)| g == group && k.starts_with(prefix))
                .filter(|((_, k), key_log)| {
                    start_after.is_none_or(|after| k.as_str() > after)
                        && !key_log.versions.is_empty()
                })
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|((_, k), _)| k.clone())
                .collect())
        })
        .await
    }

    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64> {
        log_rules::validate_key(key)?;
        retention.validate()?;
        self.step(|state, now| {
            let Some(key_log) = state.log.get_mut(&(group.to_owned(), key.to_owned())) else {
                return Ok(0);
            };
            let newest_first: Vec<(u64, Duration)> = key_log
                .versions
                .iter()
                .rev()
                .map(|(seq, row)| (*seq, now.saturating_duration_since(row.committed)))
                .collect();
            let Some(cut) = log_rules::trim_cut(retention, &newest_first) else {
                return Ok(0);
            };
            let kept = key_log.versions.split_off(&(cut + 1));
            let dropped = key_log.versions.len();
            key_log.versions = kept;
            Ok(u64::try_from(dropped).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome> {
        permits::validate_key(key)?;
        permits::validate_limit(limit)?;
        self.step(|state, _| {
            let existing = state.semaphores.get(key).map(|row| row.limit);
            match permits::decide_define(existing, limit) {
                DefineDecision::Report(outcome) => Ok(outcome),
                DefineDecision::Create => {
                    state.semaphores.insert(
                        key.clone(),
                        SemaphoreRow {
                            limit,
                            last_token: 0,
                            permits: BTreeMap::new(),
                        },
                    );
                    Ok(DefineOutcome::Created)
                }
            }
        })
        .await
    }

    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        permits::validate_key(key)?;
        self.step(|state, now| {
            Ok(state.semaphores.get(key).map(|row| SemaphoreState {
                limit: row.limit,
                last_token: row.last_token,
                holders: permits::live_holders(&observe_permits(row, now)),
            }))
        })
        .await
    }

    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        permits::validate_key(key)?;
        request.validate()?;
        self.step(|state, now| {
            let floor = self.unix_micros(now);
            let row = state.semaphores.get_mut(key);
            let observed = row.as_ref().map(|r| {
                (
                    ObservedSemaphore {
                        limit: r.limit,
                        last_token: r.last_token,
                    },
                    observe_permits(r, now),
                )
            });
            let (semaphore, seen) = match observed {
                Some((s, p)) => (Some(s), p),
                None => (None, Vec::new()),
            };
            let decision = permits::decide_acquire(semaphore, &seen, &request.permit_id, floor)
                .map_err(|e| memory_corrupt(key, e))?;
            match (decision, row) {
                (PermitDecision::Report(outcome), _) => Ok(outcome),
                (PermitDecision::Grant { token, reclaim }, Some(row)) => {
                    for id in reclaim {
                        row.permits.remove(&id);
                    }
                    row.last_token = token;
                    row.permits.insert(
                        request.permit_id.clone(),
                        PermitRow {
                            holder: request.holder.id.clone(),
                            holder_incarnation: request.holder.incarnation.clone(),
                            token,
                            lease: request.lease,
                            heartbeat: now,
                        },
                    );
                    Ok(PermitOutcome::Granted { token })
                }
                (PermitDecision::Grant { .. }, None) => Ok(PermitOutcome::UnknownSemaphore),
            }
        })
        .await
    }

    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        permits::validate_key(key)?;
        permits::validate_permit_id(permit_id)?;
        permits::validate_lease(lease)?;
        self.step(|state, now| {
            let Some(row) = state.semaphores.get_mut(key) else {
                return Ok(PermitRenewal::Gone);
            };
            let observed = observe_permits(row, now)
                .into_iter()
                .find(|p| p.permit_id == permit_id);
            let outcome = permits::decide_renew(observed.as_ref(), token);
            if outcome == PermitRenewal::Renewed
                && let Some(permit) = row.permits.get_mut(permit_id)
            {
                permit.heartbeat = now;
                permit.lease = lease;
            }
            Ok(outcome)
        })
        .await
    }

    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        permits::validate_key(key)?;
        permits::validate_permit_id(permit_id)?;
        self.step(|state, _| {
            let removed = state
                .semaphores
                .get_mut(key)
                .and_then(|row| row.permits.remove(permit_id));
            Ok(match removed {
                Some(_) => ReleaseOutcome::Released,
                None => ReleaseOutcome::NotHolder,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, incarnation: &str) -> MemberHeartbeat {
        MemberHeartbeat {
            id: id.into(),
            incarnation: incarnation.into(),
            address: Some("10.0.0.1:7946".into()),
            ttl: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_expire_on_the_store_clock() {
        let store = MemoryStore::new();
        store.heartbeat_member("g", &beat("a", "1")).await.unwrap();
        assert_eq!(store.list_members("g").await.unwrap().len(), 1);
        assert!(store.list_members("other").await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.list_members("g").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_incarnation_is_a_new_membership() {
        let store = MemoryStore::new();
        store.heartbeat_member("g", &beat("a", "1")).await.unwrap();
        let first = store.list_members("g").await.unwrap()[0].clone();
        tokio::time::advance(Duration::from_millis(500)).await;
        store.heartbeat_member("g", &beat("a", "1")).await.unwrap();
        assert_eq!(
            store.list_members("g").await.unwrap()[0].joined_at,
            first.joined_at
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        store.heartbeat_member("g", &beat("a", "2")).await.unwrap();
        let again = store.list_members("g").await.unwrap()[0].clone();
        assert_eq!(again.incarnation.as_deref(), Some("2"));
        assert!(again.joined_at > first.joined_at);
    }

    #[tokio::test(start_paused = true)]
    async fn store_errors_are_never_returned_by_memory() {
        // The memory store has no I/O: every operation on an empty store succeeds.
        let store = MemoryStore::new();
        let key = LockKey::new("g", "l");
        assert!(store.lock_state(&key).await.unwrap().is_none());
        assert_eq!(
            store.release(&key, "a", 1).await.unwrap(),
            ReleaseOutcome::NotHolder
        );
        assert!(matches!(
            store.renew(&key, "a", 1, Duration::from_secs(1)).await,
            Ok(RenewOutcome::Lost(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_ends_exactly_at_its_length_on_the_store_clock() {
        let store = MemoryStore::new();
        let key = LockKey::new("g", "l");
        let lease = Duration::from_secs(1);
        let a = Candidate::new("a");
        let b = Candidate::new("b");
        assert!(matches!(
            store.acquire(&key, &a, lease).await.unwrap(),
            AcquireOutcome::Granted { .. }
        ));
        tokio::time::advance(lease - Duration::from_nanos(1)).await;
        assert!(matches!(
            store.acquire(&key, &b, lease).await.unwrap(),
            AcquireOutcome::Held(h) if h.id == "a" && h.remaining == Duration::from_nanos(1)
        ));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(matches!(
            store.acquire(&key, &b, lease).await.unwrap(),
            AcquireOutcome::Granted { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_surrounds_the_commit() {
        let store = MemoryStore::new();
        store.set_latency(Latency {
            request: Duration::from_millis(100),
            reply: Duration::from_millis(300),
        });
        let key = LockKey::new("g", "l");
        let started = Instant::now();
        let granted = store
            .acquire(&key, &Candidate::new("a"), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(granted, AcquireOutcome::Granted { .. }));
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        // The lease counts from the commit, 300 ms before the reply arrived.
        store.set_latency(Latency::default());
        let held = store
            .lock_state(&key)
            .await
            .unwrap()
            .unwrap()
            .holder
            .unwrap();
        assert_eq!(held.remaining, Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_jump_ahead_ages_every_lease() {
        let store = MemoryStore::new();
        let key = LockKey::new("g", "l");
        store
            .acquire(&key, &Candidate::new("a"), Duration::from_secs(1))
            .await
            .unwrap();
        store.set_clock_skew(ClockSkew::Ahead(Duration::from_millis(600)));
        let held = store
            .lock_state(&key)
            .await
            .unwrap()
            .unwrap()
            .holder
            .unwrap();
        assert_eq!(held.remaining, Duration::from_millis(400));
        store.set_clock_skew(ClockSkew::Ahead(Duration::from_secs(1)));
        assert!(
            store
                .lock_state(&key)
                .await
                .unwrap()
                .unwrap()
                .holder
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_keep_increasing_after_a_deleted_row_while_the_clock_stands_still() {
        let store = MemoryStore::new();
        let key = LockKey::new("g", "l");
        let lease = Duration::from_secs(1);
        let mut last = 0;
        for _ in 0..3 {
            let AcquireOutcome::Granted { token } = store
                .acquire(&key, &Candidate::new("a"), lease)
                .await
                .unwrap()
            else {
                panic!("the lock is free");
            };
            assert!(token > last, "{token} after {last}");
            last = token;
            store.delete_lock_row(&key);
        }
    }
}
