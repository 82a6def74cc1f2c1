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
//! let timings = ElectionTimings::from_lease(Duration::from_secs(1));
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
//! let leader = members[0].wait_for_any_leader().await?;
//! let leaders = members.iter().filter(|m| m.is_leader()).count();
//! assert_eq!(leaders, 1);
//! println!("{} leads with fencing token {}", leader.id, leader.token);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod election;
pub mod kv;
pub mod membership;
pub mod messaging;
pub mod metrics;
pub mod names;
pub mod peer;
pub mod semaphore;
pub mod storage;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use config::{Config, ConfigError, ElectionTimings, MembershipTimings};
pub use election::{
    Election, ElectionError, ElectionGuard, LeaderInfo, LeadershipEvent, LostReason, Term,
};
pub use kv::{KvError, Log, PutOptions, PutRouting};
pub use membership::{LeaveReason, Member, MembershipEvent};
pub use messaging::{
    BroadcastOptions, BroadcastReply, HandlerError, HandlerResult, Message, MessageHandler,
    MessagingError, PeerStream, Reply, SendOptions, StreamHandler, StreamReceiver, StreamSender,
    StreamSession,
};
pub use metrics::Metrics;
pub use names::{DatabasePath, TableNames};
pub use peer::{GroupSecret, PeerError, PeerOptions, ServerLimits, TlsConfig};
pub use semaphore::{Permit, PermitTimings, Semaphore, SemaphoreError};
pub use storage::StorageOptions;
pub use store::{Candidate, LockKey, MemberRecord, MemoryStore, Store, StoreError};

/// Errors of the [`Hedge`] handle.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The peer transport could not start.
    #[error(transparent)]
    Peer(Arc<PeerError>),
}

impl From<PeerError> for HedgeError {
    fn from(e: PeerError) -> Self {
        HedgeError::Peer(Arc::new(e))
    }
}

/// Builds a [`Hedge`].
#[derive(Debug)]
#[must_use]
pub struct HedgeBuilder {
    config: Config,
    store: Option<Arc<dyn Store>>,
    lock_name: String,
    metrics: Arc<Metrics>,
    storage: StorageOptions,
    #[cfg(feature = "spanner")]
    spanner_options: store::spanner::SpannerOptions,
    peer: Option<PeerOptions>,
    handlers: messaging::Handlers,
}

impl HedgeBuilder {
    /// Starts from a configuration (for example [`Config::from_env`]).
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            store: None,
            lock_name: LockKey::LEADER.to_owned(),
            metrics: Metrics::new(),
            storage: StorageOptions::default(),
            #[cfg(feature = "spanner")]
            spanner_options: store::spanner::SpannerOptions::default(),
            peer: None,
            handlers: messaging::Handlers::default(),
        }
    }

    /// Turns on the peer transport (messaging and pushed membership) with these options.
    pub fn peer(mut self, options: PeerOptions) -> Self {
        self.peer = Some(options);
        self
    }

    /// The handler of [`Hedge::send`] messages; it runs only on the leader, under its term.
    pub fn on_send(mut self, handler: impl MessageHandler) -> Self {
        self.handlers.send = Some(Arc::new(handler));
        self
    }

    /// The handler of [`Hedge::broadcast`] messages; it runs on every member.
    pub fn on_broadcast(mut self, handler: impl MessageHandler) -> Self {
        self.handlers.broadcast = Some(Arc::new(handler));
        self
    }

    /// The handler of streams opened with [`Hedge::stream_to_leader`]; it runs only on the
    /// leader, and the stream is closed when the term ends.
    pub fn on_leader_stream(mut self, handler: impl StreamHandler) -> Self {
        self.handlers.leader_stream = Some(Arc::new(handler));
        self
    }

    /// The handler of streams opened with [`Hedge::stream_broadcast`]; it runs on every member.
    pub fn on_broadcast_stream(mut self, handler: impl StreamHandler) -> Self {
        self.handlers.broadcast_stream = Some(Arc::new(handler));
        self
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

    /// Registers the member's metrics on `registry` (serve it on the application's
    /// `/metrics`); see [`metrics`] for what is counted.
    pub fn metrics(self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics.register(registry);
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

    /// Validates the configuration, connects to the store, and binds the peer port.
    pub async fn build(mut self) -> Result<Hedge, HedgeError> {
        self.config.validate()?;
        self.storage.permit_timings.validate()?;
        let store = match (self.store, &self.config.database) {
            (Some(store), _) => store,
            #[cfg(feature = "spanner")]
            (None, Some(db)) => {
                // The group's emulator (HEDGE_SPANNER_EMULATOR_HOST), unless the builder's own
                // options name one.
                let mut options = self.spanner_options.clone();
                if options.emulator_host.is_none() {
                    options.emulator_host = self.config.spanner_emulator_host.clone();
                }
                Arc::new(
                    store::SpannerStore::connect(db, self.config.tables.clone(), &options).await?,
                )
            }
            _ => return Err(HedgeError::NoStore),
        };
        let key = LockKey::new(self.config.group.clone(), self.lock_name);
        let candidate = Candidate::new(self.config.member_id.clone());
        let election = Election::with_metrics(
            store.clone(),
            key,
            candidate.clone(),
            self.config.election,
            self.metrics.clone(),
        )?;
        let mut transport = None;
        let mut peers = None;
        let mut max_body_bytes = ServerLimits::default().max_body_bytes;
        if let Some(mut options) = self.peer {
            if options.advertise.is_none() {
                options.advertise = self.config.address.clone();
            }
            let (tls_server, tls_client) = match &options.tls {
                Some(tls) => {
                    let (s, c) = tls.load()?;
                    (Some(s), Some(c))
                }
                None => (None, None),
            };
            let server = peer::PeerServer::bind(options.listen, tls_server, options.limits).await?;
            self.config.address = Some(options.advertised_address(server.local_addr())?);
            let auth = peer::Authenticator::new(
                self.config.group.clone(),
                self.config.member_id.clone(),
                &options.secret,
            );
            max_body_bytes = options.limits.max_body_bytes;
            peers = Some(peer::PeerClient::new(
                auth.clone(),
                tls_client,
                max_body_bytes,
                options.limits.keep_alive,
            ));
            transport = Some((server, auth));
        }
        let me = Member {
            id: self.config.member_id.clone(),
            incarnation: candidate.incarnation.clone(),
            address: self.config.address.clone(),
        };
        let view = Arc::new(membership::MemberView::new(self.config.membership.ttl));
        view.join(me.clone());
        let node = Arc::new(messaging::Node::new(
            self.config.group.clone(),
            me,
            election.clone(),
            view,
            peers,
            self.handlers,
            max_body_bytes,
            self.metrics.clone(),
        ));
        // The peer transport forwards puts to the leader and announces releases, unless the
        // application installed its own hooks.
        let mut storage = self.storage;
        if node.peers.is_some() {
            if storage.forwarder.is_none() {
                storage.forwarder = Some(Arc::new(kv::forward::PeerForwarder::new(node.clone())));
            }
            if storage.release_notifier.is_none() {
                storage.release_notifier = Some(Arc::new(
                    semaphore::notify::PeerReleaseNotifier::new(node.clone()),
                ));
            }
        }
        Ok(Hedge {
            inner: Arc::new(Inner {
                config: self.config,
                store,
                candidate,
                election,
                node,
                transport: Mutex::new(transport),
                locks: Mutex::default(),
                metrics: self.metrics,
                waiters: semaphore::Waiters::new(storage.release_notifier.clone()),
                storage,
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
    node: Arc<messaging::Node>,
    /// The bound peer server, until `run` starts serving it.
    transport: Mutex<Option<(peer::PeerServer, peer::Authenticator)>>,
    /// The other named locks handed out, so that one name always gives the same election.
    locks: Mutex<HashMap<String, Election>>,
    metrics: Arc<Metrics>,
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
    ///
    /// The peer transport is on when a group secret is configured (`HEDGE_GROUP_SECRET` or
    /// `HEDGE_GROUP_SECRET_FILE`, see [`PeerOptions::from_vars`]).
    pub async fn from_env() -> Result<Self, HedgeError> {
        let get = |name: &str| std::env::var(name).ok();
        let mut builder = HedgeBuilder::from_config(Config::from_env()?);
        if get(peer::auth::ENV_GROUP_SECRET).is_some()
            || get(peer::auth::ENV_GROUP_SECRET_FILE).is_some()
        {
            builder = builder.peer(PeerOptions::from_vars(get)?);
        }
        builder.build().await
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
    /// [`Election::spawn`] or [`Election::run`]. The same name always gives the same election
    /// (the group's own lock name gives [`Hedge::election`]): one loop per lock and member.
    pub fn lock(&self, name: &str) -> Result<Election, HedgeError> {
        if name == self.inner.election.key().name {
            return Ok(self.inner.election.clone());
        }
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(election) = locks.get(name) {
            return Ok(election.clone());
        }
        let election = Election::with_metrics(
            self.inner.store.clone(),
            LockKey::new(self.group(), name),
            self.inner.candidate.clone(),
            self.inner.config.election,
            self.inner.metrics.clone(),
        )?;
        locks.insert(name.to_owned(), election.clone());
        Ok(election)
    }

    /// The metrics this member counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
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

    /// Waits until this member leads; or returns the error that stopped the member.
    pub async fn wait_for_term(&self) -> Result<Term, ElectionError> {
        self.inner.election.wait_for_term().await
    }

    /// Waits until this member knows of a leader (itself or another); or returns the error
    /// that stopped the member.
    pub async fn wait_for_any_leader(&self) -> Result<LeaderInfo, ElectionError> {
        self.inner.election.wait_for_leader().await
    }

    /// Gives up leadership, if this member leads: the lock is released at once and this member
    /// waits one lease before campaigning again (see [`Election::resign`]).
    pub fn resign(&self) {
        self.inner.election.resign();
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

    /// This process's incarnation (fresh for every start).
    pub fn incarnation(&self) -> &str {
        &self.inner.node.me.incarnation
    }

    /// The address other members reach this one at, when the peer transport is on.
    pub fn peer_address(&self) -> Option<&str> {
        self.inner.config.address.as_deref()
    }

    /// The group's members as this member knows them (a cached view, no I/O; this member
    /// included), ordered by id.
    pub fn members(&self) -> Vec<Member> {
        self.inner.node.view.members().to_vec()
    }

    /// The cached member view as a watch channel.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.inner.node.view.watch()
    }

    /// Every membership change from now on: who joined, who left and why.
    pub fn membership(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.node.view.events()
    }

    /// The group's live members, read from the store now.
    pub async fn members_from_store(&self) -> Result<Vec<MemberRecord>, HedgeError> {
        Ok(self.inner.store.list_members(self.group()).await?)
    }

    /// Sends `message` to the leader's send handler and returns its reply (see
    /// [`messaging`] for the delivery rules).
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<Bytes, MessagingError> {
        Ok(self
            .send_with(message, SendOptions::default())
            .await?
            .payload)
    }

    /// Sends with options; the reply names the leader and its token.
    pub async fn send_with(
        &self,
        message: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<Reply, MessagingError> {
        self.inner.node.send(message.into(), options).await
    }

    /// Delivers `message` to every member's broadcast handler (see [`BroadcastOptions`]) and
    /// returns every reply or error by member id.
    pub async fn broadcast(
        &self,
        message: impl Into<Bytes>,
        options: BroadcastOptions,
    ) -> BTreeMap<String, Result<Bytes, MessagingError>> {
        self.inner.node.broadcast(message.into(), options).await
    }

    /// Like [`Hedge::broadcast`], yielding each member's result as it arrives.
    pub fn broadcast_stream(
        &self,
        message: impl Into<Bytes>,
        options: BroadcastOptions,
    ) -> impl futures::Stream<Item = BroadcastReply> + Send + 'static {
        self.inner.node.broadcast_stream(message.into(), options)
    }

    /// Opens a bidirectional stream to the leader's stream handler, waiting (at most the
    /// default send timeout) for a leader.
    pub async fn stream_to_leader(&self) -> Result<PeerStream, MessagingError> {
        self.inner
            .node
            .stream_to_leader(messaging::DEFAULT_SEND_TIMEOUT)
            .await
    }

    /// Opens a bidirectional stream to every member's broadcast stream handler.
    pub async fn stream_broadcast(
        &self,
        options: BroadcastOptions,
    ) -> BTreeMap<String, Result<PeerStream, MessagingError>> {
        self.inner.node.stream_broadcast(options).await
    }

    /// Runs the member (peer server, election, membership heartbeats and view) until
    /// `shutdown` is cancelled, then releases the lock, tells the members, leaves the group, and
    /// stops the peer server (in-flight requests get the shutdown grace to finish).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), HedgeError> {
        let config = &self.inner.config;
        let node = self.inner.node.clone();
        let heartbeat = store::MemberHeartbeat {
            id: config.member_id.clone(),
            incarnation: self.inner.candidate.incarnation.clone(),
            address: config.address.clone(),
            ttl: config.membership.ttl,
        };
        let transport = self
            .inner
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let server_stop = CancellationToken::new();
        // If this future is dropped (the task aborted: a crash), the server dies with it,
        // abruptly, as the process would.
        let mut server = AbortOnDrop(transport.map(|(server, auth)| {
            tokio::spawn(server.serve(self.router(), auth, server_stop.clone()))
        }));
        let stop = shutdown.child_token();
        let members = membership::run_member(
            self.inner.store.clone(),
            config.group.clone(),
            heartbeat,
            config.membership,
            Some(node.clone()),
            stop.clone(),
        );
        let events = self.inner.election.events();
        let election_done = CancellationToken::new();
        // The election stops after the member's sends in flight have drained (a graceful
        // handover cuts no handler off), or at once when the membership loop failed.
        let election_stop = CancellationToken::new();
        let drain = {
            let (node, stop, election_stop) = (node.clone(), stop.clone(), election_stop.clone());
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = election_stop.cancelled() => return,
                }
                // Asked to stop (not stopping because the membership loop failed).
                if shutdown.is_cancelled() {
                    node.drain(DRAIN_TIMEOUT).await;
                }
                election_stop.cancel();
            }
        };
        let election = self.inner.election.run(election_stop.clone());
        // Either loop failing for good stops the other: a member is all or nothing.
        let (members, election, (), ()) = tokio::join!(
            async {
                let r = members.await;
                stop.cancel();
                r
            },
            async {
                let r = election.await;
                stop.cancel();
                election_done.cancel();
                r
            },
            announce_leadership(node.clone(), events, election_done.clone()),
            drain,
        );
        server_stop.cancel();
        if let Some(server) = server.0.take()
            && let Err(e) = server.await
        {
            debug!(error = %e, "the peer server task ended abnormally");
        }
        election?;
        members?;
        Ok(())
    }

    /// Every route this member serves: messaging's, forwarded puts, release announcements.
    fn router(&self) -> peer::Router {
        let router = self.inner.node.router();
        let router = kv::forward::route(router, self.log(), self.inner.node.clone());
        semaphore::notify::route(router, self.inner.waiters.clone(), self.group().to_owned())
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

/// Aborts the task when dropped.
struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Pushes this member's elections and releases to the others (fast handover). A release is
/// announced once the store confirmed it, so a nudged candidate finds the lock free.
async fn announce_leadership(
    node: Arc<messaging::Node>,
    mut events: broadcast::Receiver<LeadershipEvent>,
    election_done: CancellationToken,
) {
    let mut released = node.election.released();
    let announce_release = |token: u64| {
        let node = node.clone();
        async move {
            let release = messaging::announce::Announcement::Released {
                id: node.me.id.clone(),
                token,
            };
            node.announce(release, ANNOUNCE_TIMEOUT).await;
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(LeadershipEvent::Elected { token, .. }) => {
                    let node = node.clone();
                    // On its own task: announcing must not hold up the next event.
                    tokio::spawn(async move {
                        let elected = messaging::announce::Announcement::Elected {
                            id: node.me.id.clone(),
                            token,
                            address: node.me.address.clone(),
                        };
                        node.announce(elected, ANNOUNCE_TIMEOUT).await;
                    });
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = released.changed() => {
                if changed.is_err() {
                    break;
                }
                let token = *released.borrow_and_update();
                announce_release(token).await;
            }
            () = election_done.cancelled() => break,
        }
    }
    // The release on shutdown is stored just before the loop ends.
    if released.has_changed().unwrap_or(false) {
        let token = *released.borrow_and_update();
        announce_release(token).await;
    }
}

/// How long a stopping leader waits for its sends in flight before it releases its term.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an announcement to the other members may take at most.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(500);

/// A running member. Dropping it stops the member, which releases the lock and leaves the group.
///
/// A member stops by itself only on an error retrying cannot fix (a missing table, a database
/// that does not exist): [`HedgeGuard::wait`] returns it. A pod should then exit non-zero, so
/// that Kubernetes restarts it and the failure is visible:
///
/// ```no_run
/// # async fn serve(member: hedge::Hedge) {
/// let guard = member.spawn();
/// if let Err(e) = guard.wait().await {
///     eprintln!("hedge stopped: {e}");
///     std::process::exit(1);
/// }
/// # }
/// ```
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

    /// Waits until the member stops by itself, and returns why (the error retrying cannot
    /// fix); never returns while the member runs normally.
    pub async fn wait(mut self) -> Result<(), HedgeError> {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(ElectionError::Aborted(e.to_string()).into())),
            None => Ok(()),
        }
    }

    /// Stops the member abruptly, as a crash would: nothing is released, the lease expires.
    /// (In this process the term still ends visibly: its cancellation fires.)
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

/// The README's Rust examples, compiled and run as doctests (the crate's front page must not
/// show code that does not build).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
