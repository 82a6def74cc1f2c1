//! The lease loop of one named lock: acquire, renew, release; the local deadline; leadership
//! events.
//!
//! # The contract
//!
//! * Acquire, renew and release are each one conditional atomic step of the [`Store`]; every
//!   grant carries a fresh fencing token, strictly greater than every token before it.
//! * The holder keeps a **local deadline**, taken *before* each renewal is sent:
//!   `sent + lease − safety_margin`, on a monotonic clock that also counts suspended time
//!   (see `clock.rs`). [`Election::is_leader`] compares the clock with it (no I/O). The store
//!   counts the lease from the commit, which comes after the send, so the holder always stops
//!   believing before any other member can be granted the lock.
//! * A failed renewal is retried before the step-down; when none succeeds, the loop steps down a
//!   quarter of the margin before the deadline: it cancels the term's [`CancellationToken`] and
//!   publishes [`LeadershipEvent::Lost`].
//! * **A term always ends visibly.** However the loop stops (shutdown, an error, an aborted
//!   task, its future dropped by a caller's timeout or a losing `select!` branch, a panicking
//!   store), the term's cancellation fires and exactly one `Lost` is published.
//! * Events are edge-triggered and ordered: one `Elected` and one `Lost` per term.
//! * Stopping the loop (its cancellation token, or dropping the [`ElectionGuard`]) releases the
//!   lock, so a waiting candidate takes over within one poll interval, not a lease.
//! * An error retrying cannot fix stops the loop loudly: logged at error level, published as
//!   [`LeadershipEvent::Stopped`], returned by [`Election::run`], and by every waiting call.
//! * One loop per lock and member incarnation: a second one is refused
//!   ([`ElectionError::AlreadyRunning`]).
//!
//! # Candidates
//!
//! A candidate reads the lock with a strong read first and opens a read-write transaction only
//! when the lock looks free, so polls never lock the row the holder renews. When the lock is
//! held, it tries again when the lease it saw runs out (on the store's clock), or after one
//! poll interval if that comes first: a crashed leader is replaced about one lease after its
//! last renewal.

mod claim;
pub(crate) mod clock;
mod events;
mod run;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use events::{LeaderInfo, LeadershipEvent, LostReason, Term};

use crate::config::{ConfigError, ElectionTimings, validate_name};
use crate::metrics::{LockLabels, Metrics};
use crate::store::{Candidate, LockKey, Store, StoreError};
use clock::LeaderClock;

/// How many events a slow [`Election::events`] subscriber may fall behind before it sees
/// `Lagged`.
const EVENT_BUFFER: usize = 256;

/// Errors of an election. Cheap to clone: waiting calls and events all carry the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ElectionError {
    /// The timings or names are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The election's task panicked or was aborted, or its future was dropped.
    #[error("the election loop ended abnormally: {0}")]
    Aborted(String),
    /// The store failed in a way that retrying cannot fix (a missing table, a bad database).
    #[error("the election of lock {key} stopped: {source}")]
    Store {
        /// The lock.
        key: LockKey,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Another loop already runs this lock for this member (the same incarnation).
    #[error(
        "an election loop for lock {key} already runs for member {member} in this process: \
         share it (Hedge::lock returns the same election for the same name) instead of \
         running a second"
    )]
    AlreadyRunning {
        /// The lock.
        key: LockKey,
        /// The member id.
        member: String,
    },
    /// The loop was shut down; nothing more will happen until it runs again.
    #[error("the election of lock {0} is shut down")]
    Shutdown(LockKey),
}

/// Where the loop is.
#[derive(Clone, Debug)]
enum Status {
    /// Never run.
    NotStarted,
    /// Running.
    Running,
    /// Stopped: cleanly (`None`) or on an error.
    Stopped(Option<ElectionError>),
}

/// One named lock's election. Cheap to clone; clones share the state.
#[derive(Clone, Debug)]
pub struct Election {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    key: LockKey,
    candidate: Candidate,
    timings: ElectionTimings,
    store: Arc<dyn Store>,
    clock: LeaderClock,
    state: watch::Sender<View>,
    status: watch::Sender<Status>,
    latest_event: watch::Sender<LeadershipEvent>,
    events: broadcast::Sender<LeadershipEvent>,
    /// Wakes a waiting candidate at once (a peer said the lock was released).
    nudge: Notify,
    /// The token of the last term whose release the store confirmed (0: none yet), so the
    /// peers can be told the lock is free only once it is.
    released: watch::Sender<u64>,
    /// Asks the holder to release its term...
    resign: Notify,
    /// ...the one with this token (a request for an ended term must not end the next one).
    resign_token: AtomicU64,
    metrics: Arc<Metrics>,
    labels: LockLabels,
}

/// What the loop publishes for queries: the term this member leads and the leader it knows.
#[derive(Clone, Debug, Default)]
struct View {
    term: Option<TermState>,
    leader: Option<LeaderInfo>,
}

/// The term this member leads, as queries see it.
#[derive(Clone, Debug)]
struct TermState {
    token: u64,
    since: Instant,
    /// The election's own token; users get children of it.
    cancelled: CancellationToken,
}

impl Election {
    /// An election of `key` for `member` (a member id, which gets a fresh incarnation, or a
    /// [`Candidate`]). It does nothing until [`Election::run`] or [`Election::spawn`].
    pub fn new(
        store: Arc<dyn Store>,
        key: LockKey,
        member: impl Into<Candidate>,
        timings: ElectionTimings,
    ) -> Result<Self, ElectionError> {
        Self::with_metrics(store, key, member, timings, Metrics::new())
    }

    /// Like [`Election::new`], counting into `metrics` (see [`crate::metrics`]).
    pub fn with_metrics(
        store: Arc<dyn Store>,
        key: LockKey,
        member: impl Into<Candidate>,
        timings: ElectionTimings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ElectionError> {
        let candidate = member.into();
        timings.validate()?;
        validate_name("member id", &candidate.id)?;
        validate_name("group name", &key.group)?;
        validate_name("lock name", &key.name)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let labels = LockLabels {
            group: key.group.clone(),
            lock: key.name.clone(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                key,
                candidate,
                timings,
                store,
                clock: LeaderClock::new(clock::boot_nanos),
                state: watch::Sender::new(View::default()),
                status: watch::Sender::new(Status::NotStarted),
                latest_event: watch::Sender::new(LeadershipEvent::Started),
                events,
                nudge: Notify::new(),
                released: watch::Sender::new(0),
                resign: Notify::new(),
                resign_token: AtomicU64::new(0),
                metrics,
                labels,
            }),
        })
    }

    /// The lock this election is for.
    pub fn key(&self) -> &LockKey {
        &self.shared.key
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.shared.candidate.id
    }

    /// This member's id and the incarnation of this process.
    pub fn candidate(&self) -> &Candidate {
        &self.shared.candidate
    }

    /// The timings.
    pub fn timings(&self) -> ElectionTimings {
        self.shared.timings
    }

    /// The metrics this election counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// How many renewals the store answered `Expired` while the local deadline was still
    /// ahead (see [`LostReason::Expired`]); must stay 0.
    pub fn margin_violations(&self) -> u64 {
        self.shared
            .metrics
            .margin_violations
            .get_or_create(&self.shared.labels)
            .get()
    }

    /// Whether this member leads now: a local check of the term's deadline, no I/O.
    pub fn is_leader(&self) -> bool {
        self.token().is_some()
    }

    /// The fencing token of the term this member leads now, if it leads.
    pub fn token(&self) -> Option<u64> {
        self.shared.clock.token()
    }

    /// The leader as this member knows it: itself while it leads, otherwise the holder seen by
    /// its last read of the lock (at most one poll interval old), or `None` when the lock is
    /// free, unknown, or held by an earlier incarnation of this same member id.
    pub fn leader(&self) -> Option<LeaderInfo> {
        if let Some(token) = self.token() {
            return Some(LeaderInfo {
                id: self.shared.candidate.id.clone(),
                token,
            });
        }
        self.shared
            .state
            .borrow()
            .leader
            .clone()
            .filter(|l| l.id != self.shared.candidate.id)
    }

    /// The local deadline of the term this member leads, or of the last term it led: the
    /// instant `is_leader()` turns false unless a renewal succeeds first.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.clock.last_deadline()
    }

    /// The term this member leads now. Its cancellation token is a new child of the term's own
    /// token: it fires when the term ends, and cancelling it stops only the caller's work.
    pub fn term(&self) -> Option<Term> {
        let token = self.token()?;
        let view = self.shared.state.borrow();
        let term = view.term.as_ref().filter(|t| t.token == token)?;
        Some(Term {
            token,
            since: term.since,
            cancelled: term.cancelled.child_token(),
        })
    }

    /// Waits until this member leads, and returns the term; or the error that stopped the
    /// loop ([`ElectionError::Shutdown`] after a clean shutdown). Before the loop first runs it
    /// waits for it.
    pub async fn wait_for_term(&self) -> Result<Term, ElectionError> {
        self.wait_until(|e| e.term()).await
    }

    /// Waits until this member knows of a leader (itself or another), or the loop stops.
    pub async fn wait_for_leader(&self) -> Result<LeaderInfo, ElectionError> {
        self.wait_until(|e| e.leader()).await
    }

    async fn wait_until<T>(&self, found: impl Fn(&Self) -> Option<T>) -> Result<T, ElectionError> {
        let mut state = self.shared.state.subscribe();
        let mut status = self.shared.status.subscribe();
        loop {
            if let Some(value) = found(self) {
                return Ok(value);
            }
            if let Some(error) = self.stopped() {
                return Err(error);
            }
            // Both senders live in `shared`, which `self` keeps alive: neither closes.
            tokio::select! {
                _ = state.changed() => {}
                _ = status.changed() => {}
            }
        }
    }

    /// Why the loop stopped, if it has: its error, or [`ElectionError::Shutdown`] after a
    /// clean shutdown.
    pub fn stopped(&self) -> Option<ElectionError> {
        match &*self.shared.status.borrow() {
            Status::NotStarted | Status::Running => None,
            Status::Stopped(Some(e)) => Some(e.clone()),
            Status::Stopped(None) => Some(ElectionError::Shutdown(self.shared.key.clone())),
        }
    }

    /// The latest leadership event, as a `watch` channel: edge-triggered (a new value per
    /// transition) and ordered, but a slow reader sees only the newest one. Use
    /// [`Election::events`] to see every transition.
    pub fn watch(&self) -> watch::Receiver<LeadershipEvent> {
        self.shared.latest_event.subscribe()
    }

    /// Every leadership event from now on, in order.
    pub fn events(&self) -> broadcast::Receiver<LeadershipEvent> {
        self.shared.events.subscribe()
    }

    /// Makes a waiting candidate try to acquire at once instead of at its next poll (for
    /// example when a peer says the leader released the lock).
    pub fn nudge(&self) {
        self.shared.nudge.notify_one();
    }

    /// The token of the last term this member released, once the store confirmed the release
    /// (0 before any): a release announced from here is one a nudged candidate finds done.
    pub(crate) fn released(&self) -> watch::Receiver<u64> {
        self.shared.released.subscribe()
    }

    /// Records a leader learned from a peer (an election announcement, or a "not leader"
    /// reply): [`Election::leader`] reports it unless this member already knows a newer one.
    /// Only the known-leader view changes; the lock and this member's own term are untouched.
    pub(crate) fn learn_leader(&self, leader: LeaderInfo) {
        let newer = self
            .shared
            .state
            .borrow()
            .leader
            .as_ref()
            .is_none_or(|known| leader.token > known.token);
        if newer {
            self.shared.observe_leader(Some(leader));
        }
    }

    /// Records that `id` released its term `token`, as the member announced: the known leader
    /// is cleared if it is that term.
    pub(crate) fn learn_release(&self, id: &str, token: u64) {
        let released = self
            .shared
            .state
            .borrow()
            .leader
            .as_ref()
            .is_some_and(|known| known.id == id && known.token <= token);
        if released {
            self.shared.observe_leader(None);
        }
    }

    /// Gives up the term this member leads, if any: the loop releases the lock at once (the
    /// term ends with [`LostReason::Released`]) and waits one lease before campaigning again,
    /// so that another member takes over. Returns at once.
    pub fn resign(&self) {
        if let Some(token) = self.token() {
            self.shared.resign_token.store(token, Ordering::Release);
            self.shared.resign.notify_one();
        }
    }

    /// Runs the election on a new task; dropping the guard stops it and releases the lock.
    pub fn spawn(&self) -> ElectionGuard {
        let shutdown = CancellationToken::new();
        let election = self.clone();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { election.run(token).await });
        ElectionGuard {
            shutdown,
            task: Some(task),
        }
    }
}

/// A running election. Dropping it stops the loop, which then releases the lock (when the
/// runtime lets it run); [`ElectionGuard::shutdown`] does the same and waits for it.
#[derive(Debug)]
pub struct ElectionGuard {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ElectionError>>>,
}

impl ElectionGuard {
    /// Stops the loop, waits until the lock is released, and returns how the loop ended.
    pub async fn shutdown(mut self) -> Result<(), ElectionError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits until the loop ends by itself (an error retrying cannot fix), and returns why.
    pub async fn wait(mut self) -> Result<(), ElectionError> {
        self.join().await
    }

    async fn join(&mut self) -> Result<(), ElectionError> {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(ElectionError::Aborted(e.to_string()))),
            None => Ok(()),
        }
    }

    /// Stops the loop abruptly, as a crash would: nothing is released and the lease expires by
    /// itself (the term still ends visibly here). For tests and demonstrations.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether the loop has ended (stopped, or failed on an error retrying cannot fix).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for ElectionGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
