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

/// The operations of the [`Store`] trait, to aim a fault at one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `acquire`.
    Acquire,
    /// `renew`.
    Renew,
    /// `release`.
    Release,
    /// `lock_state`.
    ReadLock,
    /// `heartbeat_member`, `remove_member`, `list_members`.
    Members,
    /// The log: `put`, `read_log`, `list_log_keys`, `trim_log`.
    Log,
    /// The semaphores: `define_semaphore`, `semaphore_state` and the permit operations.
    Semaphores,
}

/// A store whose operations suffer the current [`Fault`].
#[derive(Clone, Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fault: Arc<Mutex<Faults>>,
}

/// The fault for every operation, and overrides for some.
#[derive(Clone, Debug, Default)]
struct Faults {
    all: Fault,
    only: std::collections::HashMap<Op, Fault>,
}

impl FaultyStore {
    /// Wraps `inner`, passing everything through until [`FaultyStore::set`] says otherwise.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fault: Arc::default(),
        }
    }

    /// Changes the fault for every operation from now on (operations in flight keep theirs),
    /// and clears the faults aimed at single operations.
    pub fn set(&self, fault: Fault) {
        let mut faults = self.faults();
        faults.all = fault;
        faults.only.clear();
    }

    /// Changes the fault of one operation from now on.
    pub fn set_for(&self, op: Op, fault: Fault) {
        self.faults().only.insert(op, fault);
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self, op: Op) -> Fault {
        let faults = self.faults();
        faults.only.get(&op).copied().unwrap_or(faults.all)
    }

    async fn apply<T>(&self, kind: Op, op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match self.current(kind) {
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
        self.apply(Op::Acquire, self.inner.acquire(key, candidate, lease))
            .await
    }

    async fn renew(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        self.apply(Op::Renew, self.inner.renew(key, holder, token, lease))
            .await
    }

    async fn release(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        self.apply(Op::Release, self.inner.release(key, holder, token))
            .await
    }

    async fn lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        self.apply(Op::ReadLock, self.inner.lock_state(key)).await
    }

    async fn heartbeat_member(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        self.apply(Op::Members, self.inner.heartbeat_member(group, member))
            .await
    }

    async fn remove_member(&self, group: &str, id: &str) -> StoreResult<()> {
        self.apply(Op::Members, self.inner.remove_member(group, id))
            .await
    }

    async fn list_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        self.apply(Op::Members, self.inner.list_members(group))
            .await
    }

    async fn put(&self, group: &str, request: &PutRequest) -> StoreResult<PutOutcome> {
        self.apply(Op::Log, self.inner.put(group, request)).await
    }

    async fn read_log(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        self.apply(Op::Log, self.inner.read_log(group, key, query))
            .await
    }

    async fn list_log_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        self.apply(
            Op::Log,
            self.inner.list_log_keys(group, prefix, start_after, limit),
        )
        .await
    }

    async fn trim_log(&self, group: &str, key: &str, retention: Retention) -> StoreResult<u64> {
        self.apply(Op::Log, self.inner.trim_log(group, key, retention))
            .await
    }

    async fn define_semaphore(&self, key: &SemaphoreKey, limit: u32) -> StoreResult<DefineOutcome> {
        self.apply(Op::Semaphores, self.inner.define_semaphore(key, limit))
            .await
    }

    async fn semaphore_state(&self, key: &SemaphoreKey) -> StoreResult<Option<SemaphoreState>> {
        self.apply(Op::Semaphores, self.inner.semaphore_state(key))
            .await
    }

    async fn acquire_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        self.apply(Op::Semaphores, self.inner.acquire_permit(key, request))
            .await
    }

    async fn renew_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        self.apply(
            Op::Semaphores,
            self.inner.renew_permit(key, permit_id, token, lease),
        )
        .await
    }

    async fn release_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        self.apply(Op::Semaphores, self.inner.release_permit(key, permit_id))
            .await
    }
}
