//! hedge: coordination for the pods of a Kubernetes Deployment, with Cloud Spanner as the only
//! shared state.
//!
//! A [`Hedge`] joins a group: it elects a leader with **fencing tokens**, keeps the member's row
//! in the group's membership, and answers [`Hedge::is_leader`] locally, without I/O.
//!
//! * Acquire, renew and release are each one conditional transaction; every grant gets a token
//!   strictly greater than every token before it.
//! * Expiry is judged on Spanner's clock; the holder stops believing it leads at a local
//!   monotonic deadline that always comes before any other member can be granted the lock.
//! * Shutting down (or dropping the [`HedgeGuard`]) releases the lock, so a waiting member takes
//!   over within one poll interval.
//!
//! # Example
//!
//! Three members on the embedded in-memory store (use [`HedgeBuilder::spanner`], or
//! [`Hedge::from_env`] in a pod configured by the operator, for a real group):
//!
//! ```
//! use hedge::{Hedge, MemoryStore, ElectionTimings};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), hedge::HedgeError> {
//! let store = MemoryStore::new();
//! let timings = ElectionTimings::from_lease(Duration::from_millis(500));
//! let mut guards = Vec::new();
//! let mut members = Vec::new();
//! for id in ["a", "b", "c"] {
//!     let member = Hedge::builder("orders")
//!         .member_id(id)
//!         .store(store.clone())
//!         .election_timings(timings)
//!         .build()
//!         .await?;
//!     guards.push(member.spawn());
//!     members.push(member);
//! }
//! // Leader-only work runs under the term's cancellation token.
//! let term = members[0].wait_for_any_leader().await;
//! let leaders = members.iter().filter(|m| m.is_leader()).count();
//! assert_eq!(leaders, 1);
//! println!("{} leads with fencing token {}", term.id, term.token);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod election;
pub mod kv;
pub mod membership;
pub mod names;
pub mod semaphore;
pub mod storage;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, ElectionTimings, MembershipTimings};
pub use election::{
    Election, ElectionError, ElectionGuard, LeaderInfo, LeadershipEvent, LostReason, Term,
};
pub use kv::{KvError, Log, PutOptions, PutRouting};
pub use names::{DatabasePath, TableNames};
pub use semaphore::{Permit, PermitTimings, Semaphore, SemaphoreError};
pub use storage::StorageOptions;
pub use store::{Candidate, LockKey, MemberRecord, MemoryStore, Store, StoreError};

/// Errors of the [`Hedge`] handle.
#[derive(Debug, thiserror::Error)]
pub enum HedgeError {
    /// The configuration is invalid.
    #[error("invalid hedge configuration: {0}")]
    Config(#[from] ConfigError),
    /// Neither a store nor a database was given.
    #[error(
        "no coordination store: call HedgeBuilder::spanner(database) (or set HEDGE_SPANNER_DATABASE), \
         or HedgeBuilder::store(MemoryStore::new()) for a single-process group"
    )]
    NoStore,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The election stopped on an error retrying cannot fix.
    #[error(transparent)]
    Election(#[from] ElectionError),
}

/// Builds a [`Hedge`].
#[derive(Debug)]
#[must_use]
pub struct HedgeBuilder {
    config: Config,
    store: Option<Arc<dyn Store>>,
    lock_name: String,
    storage: StorageOptions,
    #[cfg(feature = "spanner")]
    spanner_options: store::spanner::SpannerOptions,
}

impl HedgeBuilder {
    /// Starts from a configuration (for example [`Config::from_env`]).
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            store: None,
            lock_name: LockKey::LEADER.to_owned(),
            storage: StorageOptions::default(),
            #[cfg(feature = "spanner")]
            spanner_options: store::spanner::SpannerOptions::default(),
        }
    }

    /// Uses this store (a [`MemoryStore`] shared by clones, or any [`Store`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses this shared store.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses the Spanner database at `database` (`projects/P/instances/I/databases/D`).
    #[cfg(feature = "spanner")]
    pub fn spanner(mut self, database: DatabasePath) -> Self {
        self.config.database = Some(database);
        self
    }

    /// Options for the Spanner connection (an emulator endpoint, for instance).
    #[cfg(feature = "spanner")]
    pub fn spanner_options(mut self, options: store::spanner::SpannerOptions) -> Self {
        self.spanner_options = options;
        self
    }

    /// This member's id; by default the pod name, or a generated id outside Kubernetes.
    pub fn member_id(mut self, id: impl Into<String>) -> Self {
        self.config.member_id = id.into();
        self
    }

    /// The name of the group's leader lock (default [`LockKey::LEADER`]).
    pub fn lock_name(mut self, name: impl Into<String>) -> Self {
        self.lock_name = name.into();
        self
    }

    /// The table names.
    pub fn tables(mut self, tables: TableNames) -> Self {
        self.config.tables = tables;
        self
    }

    /// The election timings.
    pub fn election_timings(mut self, timings: ElectionTimings) -> Self {
        self.config.election = timings;
        self
    }

    /// The membership timings.
    pub fn membership_timings(mut self, timings: MembershipTimings) -> Self {
        self.config.membership = timings;
        self
    }

    /// This member's peer address (`ip:port`), recorded in its member row.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.config.address = Some(address.into());
        self
    }

    /// Options of the log and the semaphores: put routing and retries, permit timings, and the
    /// peer transport's hooks.
    pub fn storage(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// Validates the configuration and connects to the store.
    pub async fn build(self) -> Result<Hedge, HedgeError> {
        self.config.validate()?;
        self.storage.permit_timings.validate()?;
        let store = match (self.store, &self.config.database) {
            (Some(store), _) => store,
            #[cfg(feature = "spanner")]
            (None, Some(db)) => Arc::new(
                store::SpannerStore::connect(db, self.config.tables.clone(), &self.spanner_options)
                    .await?,
            ),
            _ => return Err(HedgeError::NoStore),
        };
        let key = LockKey::new(self.config.group.clone(), self.lock_name);
        let candidate = Candidate::new(self.config.member_id.clone());
        let election = Election::new(store.clone(), key, candidate.clone(), self.config.election)?;
        Ok(Hedge {
            inner: Arc::new(Inner {
                config: self.config,
                store,
                candidate,
                election,
                waiters: semaphore::Waiters::new(self.storage.release_notifier.clone()),
                storage: self.storage,
            }),
        })
    }
}

/// A member of a hedge group. Cheap to clone; clones share the member.
#[derive(Clone, Debug)]
pub struct Hedge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    /// This member's id and the incarnation of this process.
    candidate: Candidate,
    election: Election,
    storage: StorageOptions,
    /// This process's semaphore waiters, woken when a permit is released.
    waiters: semaphore::Waiters,
}

impl Hedge {
    /// A builder for a member of `group`.
    pub fn builder(group: impl Into<String>) -> HedgeBuilder {
        HedgeBuilder::from_config(Config::new(group))
    }

    /// A member configured from the environment the operator sets up (the group's ConfigMap
    /// and Secret, and the downward API), on Spanner.
    pub async fn from_env() -> Result<Self, HedgeError> {
        HedgeBuilder::from_config(Config::from_env()?).build().await
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.inner.config.group
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.inner.config.member_id
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The group's leader election.
    pub fn election(&self) -> &Election {
        &self.inner.election
    }

    /// Another named lock of this group, for this member, with the same timings. Run it with
    /// [`Election::spawn`] or [`Election::run`].
    pub fn lock(&self, name: &str) -> Result<Election, HedgeError> {
        Ok(Election::new(
            self.inner.store.clone(),
            LockKey::new(self.group(), name),
            self.inner.candidate.clone(),
            self.inner.config.election,
        )?)
    }

    /// Whether this member leads the group now (a local check, no I/O).
    pub fn is_leader(&self) -> bool {
        self.inner.election.is_leader()
    }

    /// The fencing token of the term this member leads now.
    pub fn token(&self) -> Option<u64> {
        self.inner.election.token()
    }

    /// The leader as this member knows it.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.election.leader()
    }

    /// The term this member leads now, with its cancellation token.
    pub fn term(&self) -> Option<Term> {
        self.inner.election.term()
    }

    /// Waits until this member leads.
    pub async fn wait_for_term(&self) -> Term {
        self.inner.election.wait_for_term().await
    }

    /// Waits until this member knows of a leader (itself or another).
    pub async fn wait_for_any_leader(&self) -> LeaderInfo {
        let mut events = self.inner.election.watch();
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            if events.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The latest leadership event (see [`Election::watch`]).
    pub fn watch(&self) -> watch::Receiver<LeadershipEvent> {
        self.inner.election.watch()
    }

    /// Every leadership event from now on (see [`Election::events`]).
    pub fn events(&self) -> broadcast::Receiver<LeadershipEvent> {
        self.inner.election.events()
    }

    /// The group's append-only key/value log, written as this member (see [`kv`]).
    pub fn log(&self) -> Log {
        Log::new(
            self.inner.store.clone(),
            self.inner.election.clone(),
            self.inner.candidate.clone(),
            &self.inner.storage,
        )
    }

    /// The semaphore `name` of the group with `limit` permits, created if it does not exist
    /// (see [`semaphore`]). An existing semaphore with another limit is
    /// [`SemaphoreError::LimitMismatch`].
    pub async fn semaphore(&self, name: &str, limit: u32) -> Result<Semaphore, SemaphoreError> {
        Semaphore::define(
            self.inner.store.clone(),
            store::SemaphoreKey::new(self.group(), name),
            limit,
            self.inner.candidate.clone(),
            self.inner.storage.permit_timings,
            self.inner.waiters.clone(),
        )
        .await
    }

    /// The existing semaphore `name` of the group, with its limit;
    /// [`SemaphoreError::Unknown`] when there is none.
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, SemaphoreError> {
        Semaphore::open(
            self.inner.store.clone(),
            store::SemaphoreKey::new(self.group(), name),
            self.inner.candidate.clone(),
            self.inner.storage.permit_timings,
            self.inner.waiters.clone(),
        )
        .await
    }

    /// Wakes this member's waiting acquires of semaphore `name` at once: for the peer
    /// transport, when another member announces a release (see
    /// [`semaphore::ReleaseNotifier`]).
    pub fn wake_semaphore_waiters(&self, name: &str) {
        self.inner
            .waiters
            .wake(&store::SemaphoreKey::new(self.group(), name));
    }

    /// The group's live members, read from the store.
    pub async fn members(&self) -> Result<Vec<MemberRecord>, HedgeError> {
        Ok(self.inner.store.list_members(self.group()).await?)
    }

    /// Runs the member (election and membership heartbeats) until `shutdown` is cancelled, then
    /// releases the lock and leaves the group.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), HedgeError> {
        let config = &self.inner.config;
        let heartbeat = store::MemberHeartbeat {
            id: config.member_id.clone(),
            incarnation: self.inner.candidate.incarnation.clone(),
            address: config.address.clone(),
            ttl: config.membership.ttl,
        };
        let stop = shutdown.child_token();
        let members = membership::run_heartbeats(
            self.inner.store.clone(),
            config.group.clone(),
            heartbeat,
            config.membership,
            stop.clone(),
        );
        let election = self.inner.election.run(stop.clone());
        // Either loop failing for good stops the other: a member is all or nothing.
        let (members, election) = tokio::join!(
            async {
                let r = members.await;
                stop.cancel();
                r
            },
            async {
                let r = election.await;
                stop.cancel();
                r
            }
        );
        election?;
        members?;
        Ok(())
    }

    /// Runs the member on a new task; dropping the guard stops it (releasing the lock).
    pub fn spawn(&self) -> HedgeGuard {
        let shutdown = CancellationToken::new();
        let member = self.clone();
        let token = shutdown.clone();
        HedgeGuard {
            shutdown,
            task: Some(tokio::spawn(async move { member.run(token).await })),
        }
    }
}

/// A running member. Dropping it stops the member, which releases the lock and leaves the group.
#[derive(Debug)]
pub struct HedgeGuard {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), HedgeError>>>,
}

impl HedgeGuard {
    /// Stops the member and waits (at most `limit`) until it released the lock and left.
    pub async fn shutdown(mut self, limit: Duration) -> Result<(), HedgeError> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ElectionError::Aborted(e.to_string()).into()),
            // Still releasing after `limit`: the lease will expire by itself.
            Err(_) => Ok(()),
        }
    }

    /// Stops the member abruptly, as a crash would: nothing is released, the lease expires.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether the member has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for HedgeGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
