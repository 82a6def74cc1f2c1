//! A store wrapper that injects faults: an unreachable store, a slow one, or one that loses its
//! replies after doing the work (a crash between commit and reply).
//!
//! It wraps any backend, so the same fault scenarios run on the memory store and on Spanner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hedge::store::{
    AcquireOutcome, Candidate, DefineOutcome, LockKey, LockState, LogEntry, LogQuery,
    MemberHeartbeat, MemberRecord, PermitOutcome, PermitRenewal, PermitRequest, PutOutcome,
    PutRequest, ReleaseOutcome, RenewOutcome, Retention, SemaphoreKey, SemaphoreState, Store,
    StoreError, StoreResult,
};

/// What the wrapper does to each operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    #[default]
    None,
    /// Fail every operation at once, as an unreachable store would.
    Unreachable,
    /// Hold every request this long before it reaches the store (a slow network or store).
    Slow(Duration),
    /// Do the operation, then report it failed: the reply is lost after the commit.
    LoseReply,
    /// Do the operation at once, but deliver its reply this much later.
    SlowReply(Duration),
}

/// A store whose operations suffer the current [`Fault`].
#[derive(Clone, Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fault: Arc<Mutex<Fault>>,
}

impl FaultyStore {
    /// Wraps `inner`, passing everything through until [`FaultyStore::set`] says otherwise.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fault: Arc::default(),
        }
    }

    /// Changes the fault for every operation from now on (operations in flight keep theirs).
    pub fn set(&self, fault: Fault) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    fn current(&self) -> Fault {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn apply<T>(&self, op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match self.current() {
            Fault::None => op.await,
            Fault::Unreachable => Err(unreachable()),
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                op.await
            }
            Fault::LoseReply => {
                op.await?;
                Err(unreachable())
            }
            Fault::SlowReply(delay) => {
                let reply = op.await;
                tokio::time::sleep(delay).await;
                reply
            }
        }
    }
}

fn unreachable() -> StoreError {
    StoreError::Unavailable {
        message: "injected fault".into(),
        source: None,
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn acquire(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        self.apply(self.inner.acquire(key, candidate, lease)).await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        self.apply(self.inner.renew(key, holder, token, lease))
            .await
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.apply(self.inner.release(key, holder, token)).await
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.apply(self.inner.lock_state(key)).await
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        self.apply(self.inner.heartbeat_member(group, member)).await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.apply(self.inner.remove_member(group, id)).await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        self.apply(self.inner.list_members(group)).await
    }

    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome> {
        self.apply(self.inner.put(group, request)).await
    }

    async fn read_log(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        self.apply(self.inner.read_log(group, key, query)).await
    }

    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        self.apply(self.inner.list_log_keys(group, prefix, start_after, limit))
            .await
    }

    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64> {
        self.apply(self.inner.trim_log(group, key, retention)).await
    }

    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome> {
        self.apply(self.inner.define_semaphore(key, limit)).await
    }

    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        self.apply(self.inner.semaphore_state(key)).await
    }

    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        self.apply(self.inner.acquire_permit(key, request)).await
    }

    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        self.apply(self.inner.renew_permit(key, permit_id, token, lease))
            .await
    }

    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        self.apply(self.inner.release_permit(key, permit_id)).await
    }
}
