//! The in-process store: one critical section per operation, on tokio's monotonic clock.
//!
//! It backs the unit tests and simulations (with paused tokio time every timeout is exact and
//! instant) and the local demo. Several members share one `MemoryStore` by cloning it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::lease::{
    self, AcquireDecision, AcquireOutcome, ObservedLock, ReleaseOutcome, RenewOutcome,
};
use super::{LockKey, LockState, MemberHeartbeat, MemberRecord, Store, StoreResult};

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
    members: BTreeMap<(String, String), MemberRow>,
}

#[derive(Clone, Debug)]
struct LockRow {
    holder: Option<String>,
    token: u64,
    lease: Duration,
    heartbeat: Instant,
    granted_at: Instant,
}

#[derive(Clone, Debug)]
struct MemberRow {
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
    /// An empty store whose clock starts now.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            origin: Instant::now(),
            wall_origin: SystemTime::now(),
        }
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
            token: row.token,
            lease: row.lease,
            age: now.saturating_duration_since(row.heartbeat),
            granted_at: self.wall(row.granted_at),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &str,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        let now = Instant::now();
        let mut state = self.state();
        let observed = state.locks.get(key).map(|r| self.observe(r, now));
        match lease::decide_acquire(observed.as_ref(), self.unix_micros(now)) {
            AcquireDecision::Held(holder) => Ok(AcquireOutcome::Held(holder)),
            AcquireDecision::Grant { token } => {
                state.locks.insert(
                    key.clone(),
                    LockRow {
                        holder: Some(candidate.to_owned()),
                        token,
                        lease,
                        heartbeat: now,
                        granted_at: now,
                    },
                );
                Ok(AcquireOutcome::Granted { token })
            }
        }
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        let now = Instant::now();
        let mut state = self.state();
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
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        let now = Instant::now();
        let mut state = self.state();
        let observed = state.locks.get(key).map(|r| self.observe(r, now));
        if !lease::decide_release(observed.as_ref(), holder, token) {
            return Ok(ReleaseOutcome::NotHolder);
        }
        if let Some(row) = state.locks.get_mut(key) {
            row.holder = None;
            row.heartbeat = now;
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        let now = Instant::now();
        let state = self.state();
        Ok(state.locks.get(key).map(|row| {
            let observed = self.observe(row, now);
            LockState {
                holder: observed.live_holder(),
                last_token: observed.token,
            }
        }))
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let key = (group.to_owned(), member.id.clone());
        let alive = |row: &MemberRow| now.saturating_duration_since(row.heartbeat) < row.ttl;
        let joined_at = match state.members.get(&key) {
            Some(row) if alive(row) => row.joined_at,
            _ => now,
        };
        state.members.insert(
            key,
            MemberRow {
                address: member.address.clone(),
                ttl: member.ttl,
                heartbeat: now,
                joined_at,
            },
        );
        Ok(())
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.state()
            .members
            .remove(&(group.to_owned(), id.to_owned()));
        Ok(())
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        let now = Instant::now();
        let state = self.state();
        Ok(state
            .members
            .iter()
            .filter(|((g, _), row)| {
                g == group && now.saturating_duration_since(row.heartbeat) < row.ttl
            })
            .map(|((_, id), row)| MemberRecord {
                id: id.clone(),
                address: row.address.clone(),
                joined_at: self.wall(row.joined_at),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn members_expire_on_the_store_clock() {
        let store = MemoryStore::new();
        let hb = MemberHeartbeat {
            id: "a".into(),
            address: Some("10.0.0.1:7946".into()),
            ttl: Duration::from_secs(2),
        };
        store.heartbeat_member("g", &hb).await.unwrap();
        assert_eq!(store.list_members("g").await.unwrap().len(), 1);
        assert!(store.list_members("other").await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.list_members("g").await.unwrap().is_empty());
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
}
