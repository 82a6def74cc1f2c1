//! The lease loop of one named lock: acquire, renew, release; the local deadline; leadership
//! events.
//!
//! # The contract
//!
//! * Acquire, renew and release are each one conditional atomic step of the [`Store`]; every
//!   grant carries a fresh fencing token, strictly greater than every token before it.
//! * The holder keeps a **local deadline** on a monotonic clock, taken *before* each renewal is
//!   sent: `sent + lease − safety_margin`. [`Election::is_leader`] compares the clock with it
//!   (no I/O). The store counts the lease from the commit, which comes after the send, so the
//!   holder always stops believing before any other member can be granted the lock.
//! * When renewals keep failing, the loop steps down at the deadline at the latest: it cancels
//!   the term's [`CancellationToken`] and publishes [`LeadershipEvent::Lost`].
//! * Events are edge-triggered and ordered: one `Elected` and one `Lost` per term.
//! * Stopping the loop (its cancellation token, or dropping the [`ElectionGuard`]) releases the
//!   lock, so a waiting candidate takes over within one poll interval, not a lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, ElectionTimings, validate_name};
use crate::store::lease::LossCause;
use crate::store::{
    AcquireOutcome, Candidate, LockHolder, LockKey, RenewOutcome, Store, StoreError,
};

/// How many events a slow [`Election::events`] subscriber may fall behind before it sees
/// `Lagged`.
const EVENT_BUFFER: usize = 256;

/// The longest a release on shutdown may take before the loop gives up on it (the lease then
/// expires by itself).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most how long before its deadline a holder whose renewals fail steps down.
const STEP_DOWN_LEAD: Duration = Duration::from_millis(20);

/// Errors of an election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The timings or names are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The election's task panicked or was aborted.
    #[error("the election task ended abnormally: {0}")]
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
}

/// The current leader as this member knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's member id.
    pub id: String,
    /// The fencing token of the leader's term.
    pub token: u64,
}

/// Why a term ended for this member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// This member released the lock (shutdown, drop, or [`ElectionGuard::shutdown`]).
    Released,
    /// No renewal succeeded before the local deadline (the store was unreachable or too slow).
    DeadlinePassed,
    /// The store reported the lease expired before the renewal arrived.
    Expired,
    /// Another member holds the lock now (or the lock's row was released or deleted).
    Deposed {
        /// The new holder, if known.
        holder: Option<String>,
    },
}

/// A leadership transition. Per term, exactly one `Elected` and one `Lost`, in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeadershipEvent {
    /// The loop has not decided anything yet.
    Started,
    /// This member became leader under `token`.
    Elected {
        /// The term's fencing token.
        token: u64,
        /// When `is_leader()` became true, on the monotonic clock.
        since: Instant,
    },
    /// This member's term `token` ended.
    Lost {
        /// The term's fencing token.
        token: u64,
        /// Why.
        reason: LostReason,
        /// When `is_leader()` turned false, on the monotonic clock (before the deadline, unless
        /// the process was paused past it).
        at: Instant,
    },
    /// The leader this member knows of changed (`None`: the lock is free or unknown).
    LeaderChanged {
        /// The new leader.
        leader: Option<LeaderInfo>,
    },
}

/// A term this member leads: its fencing token and a cancellation token that is cancelled when
/// the term ends, *before* its deadline passes. Leader-only work should run under it.
#[derive(Clone, Debug)]
pub struct Term {
    /// The fencing token.
    pub token: u64,
    /// When the term began here, on the monotonic clock.
    pub since: Instant,
    /// Cancelled when the term ends.
    pub cancelled: CancellationToken,
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
    /// The clock origin of `deadline_nanos`.
    origin: Instant,
    /// The token of the term this member leads, 0 when it leads none.
    leading_token: AtomicU64,
    /// The term's local deadline, in nanoseconds after `origin`.
    deadline_nanos: AtomicU64,
    state: watch::Sender<View>,
    latest_event: watch::Sender<LeadershipEvent>,
    events: broadcast::Sender<LeadershipEvent>,
}

/// What the loop publishes for queries: the term this member leads and the leader it knows.
#[derive(Clone, Debug, Default)]
struct View {
    term: Option<Term>,
    leader: Option<LeaderInfo>,
}

/// The loop's private state of the term it leads.
struct ActiveTerm {
    token: u64,
    deadline: Instant,
    last_renew_sent: Instant,
    cancelled: CancellationToken,
}

impl Election {
    /// An election of `key` for `member_id`. It does nothing until [`Election::run`] or
    /// [`Election::spawn`].
    pub fn new(
        store: Arc<dyn Store>,
        key: LockKey,
        member: impl Into<Candidate>,
        timings: ElectionTimings,
    ) -> Result<Self, ElectionError> {
        let candidate = member.into();
        timings.validate()?;
        validate_name("member id", &candidate.id)?;
        validate_name("group name", &key.group)?;
        validate_name("lock name", &key.name)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            shared: Arc::new(Shared {
                key,
                candidate,
                timings,
                store,
                origin: Instant::now(),
                leading_token: AtomicU64::new(0),
                deadline_nanos: AtomicU64::new(0),
                state: watch::Sender::new(View::default()),
                latest_event: watch::Sender::new(LeadershipEvent::Started),
                events,
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

    /// The timings.
    pub fn timings(&self) -> ElectionTimings {
        self.shared.timings
    }

    /// Whether this member leads now: a local check of the term's deadline, no I/O.
    pub fn is_leader(&self) -> bool {
        self.token().is_some()
    }

    /// The fencing token of the term this member leads now, if it leads.
    pub fn token(&self) -> Option<u64> {
        let token = self.shared.leading_token.load(Ordering::Acquire);
        if token == 0 {
            return None;
        }
        let deadline = self.shared.deadline_nanos.load(Ordering::Acquire);
        (self.shared.elapsed_nanos() < deadline).then_some(token)
    }

    /// The leader as this member knows it: itself while it leads, otherwise the holder seen by
    /// its last acquire attempt (at most one poll interval old).
    pub fn leader(&self) -> Option<LeaderInfo> {
        if let Some(token) = self.token() {
            return Some(LeaderInfo {
                id: self.shared.candidate.id.clone(),
                token,
            });
        }
        self.shared.state.borrow().leader.clone()
    }

    /// The local deadline of the term this member leads, or of the last term it led: the
    /// instant `is_leader()` turns false unless a renewal succeeds first.
    pub fn deadline(&self) -> Option<Instant> {
        let nanos = self.shared.deadline_nanos.load(Ordering::Acquire);
        (nanos > 0).then(|| self.shared.origin + Duration::from_nanos(nanos))
    }

    /// The term this member leads now, with its cancellation token.
    pub fn term(&self) -> Option<Term> {
        let token = self.token()?;
        self.shared
            .state
            .borrow()
            .term
            .clone()
            .filter(|t| t.token == token)
    }

    /// Waits until this member leads, and returns the term.
    pub async fn wait_for_term(&self) -> Term {
        let mut state = self.shared.state.subscribe();
        loop {
            if let Some(term) = self.term() {
                return term;
            }
            if state.changed().await.is_err() {
                // The sender lives in `shared`, which `self` keeps alive: this cannot happen,
                // but waiting forever is the right answer if it ever did.
                std::future::pending::<()>().await;
            }
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

    /// Runs the election until `shutdown` is cancelled, then releases the lock if it is held.
    ///
    /// Transient store errors are retried; an error that retrying cannot fix (a missing table,
    /// a database that does not exist) ends the loop with that error, after stepping down.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ElectionError> {
        let shared = &self.shared;
        info!(lock = %shared.key, member = %shared.candidate.id, "election started");
        let mut term: Option<ActiveTerm> = None;
        let result = loop {
            let step = match term.take() {
                None => shared.campaign(&shutdown).await,
                Some(active) => shared.hold(active, &shutdown).await,
            };
            match step {
                Ok(Some(next)) => term = next.into_term(),
                Ok(None) => break Ok(()),
                Err(source) => {
                    break Err(ElectionError::Store {
                        key: shared.key.clone(),
                        source,
                    });
                }
            }
        };
        if let Some(active) = term {
            shared.release(active).await;
        }
        info!(lock = %shared.key, member = %shared.candidate.id, "election stopped");
        result
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

/// What one step of the loop leads to.
enum Next {
    Follow,
    Lead(ActiveTerm),
}

impl Next {
    fn into_term(self) -> Option<ActiveTerm> {
        match self {
            Next::Follow => None,
            Next::Lead(t) => Some(t),
        }
    }
}

impl Shared {
    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.origin)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn publish(&self, event: LeadershipEvent) {
        debug!(lock = %self.key, member = %self.candidate.id, ?event, "leadership event");
        // No subscriber is not an error: events are for whoever listens.
        let _ = self.events.send(event.clone());
        self.latest_event.send_replace(event);
    }

    fn observe_leader(&self, leader: Option<LeaderInfo>) {
        let changed = self.state.send_if_modified(|view| {
            if view.leader == leader {
                return false;
            }
            view.leader.clone_from(&leader);
            true
        });
        if changed {
            self.publish(LeadershipEvent::LeaderChanged { leader });
        }
    }

    /// One acquire attempt, then a wait of one (jittered) poll interval.
    async fn campaign(&self, shutdown: &CancellationToken) -> Result<Option<Next>, StoreError> {
        let t = self.timings;
        let sent = Instant::now();
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            r = timeout(t.lease, self.store.acquire(&self.key, &self.candidate, t.lease)) => r,
        };
        match attempt {
            Ok(Ok(AcquireOutcome::Granted { token })) => {
                let deadline = sent + t.holding_time();
                if Instant::now() < deadline {
                    return Ok(Some(Next::Lead(self.become_leader(token, sent, deadline))));
                }
                // The grant arrived too late to be used safely: give it back at once.
                warn!(lock = %self.key, token, "grant arrived after its deadline; releasing it");
                let _ = timeout(
                    RELEASE_TIMEOUT,
                    self.store.release(&self.key, &self.candidate.id, token),
                )
                .await;
            }
            Ok(Ok(AcquireOutcome::Held(LockHolder { id, token, .. }))) => {
                self.observe_leader(Some(LeaderInfo { id, token }));
            }
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => warn!(lock = %self.key, error = %e, "acquire failed; retrying"),
            Err(_) => warn!(lock = %self.key, "acquire timed out after {:?}; retrying", t.lease),
        }
        tokio::select! {
            () = shutdown.cancelled() => Ok(None),
            () = sleep(jittered(t.poll_interval)) => Ok(Some(Next::Follow)),
        }
    }

    fn become_leader(&self, token: u64, sent: Instant, deadline: Instant) -> ActiveTerm {
        let cancelled = CancellationToken::new();
        let since = Instant::now();
        // Deadline first, then the token: a reader that sees the token sees its deadline.
        self.deadline_nanos
            .store(self.nanos_at(deadline), Ordering::Release);
        self.leading_token.store(token, Ordering::Release);
        let me = LeaderInfo {
            id: self.candidate.id.clone(),
            token,
        };
        self.state.send_modify(|view| {
            view.term = Some(Term {
                token,
                since,
                cancelled: cancelled.clone(),
            });
            view.leader = Some(me.clone());
        });
        info!(lock = %self.key, member = %self.candidate.id, token, "elected");
        self.publish(LeadershipEvent::Elected { token, since });
        self.publish(LeadershipEvent::LeaderChanged { leader: Some(me) });
        ActiveTerm {
            token,
            deadline,
            last_renew_sent: sent,
            cancelled,
        }
    }

    /// Steps down: first `is_leader()` turns false, then leader-only work is cancelled, then the
    /// event goes out.
    fn step_down(&self, term: &ActiveTerm, reason: LostReason, leader: Option<LeaderInfo>) {
        self.leading_token.store(0, Ordering::Release);
        let at = Instant::now();
        term.cancelled.cancel();
        self.state.send_modify(|view| view.term = None);
        match &reason {
            LostReason::Released => info!(lock = %self.key, token = term.token, "released"),
            other => {
                warn!(lock = %self.key, token = term.token, reason = ?other, "lost leadership")
            }
        }
        self.publish(LeadershipEvent::Lost {
            token: term.token,
            reason,
            at,
        });
        self.observe_leader(leader);
    }

    /// Waits for the next renewal time and renews, stepping down at the deadline at the latest.
    async fn hold(
        &self,
        mut term: ActiveTerm,
        shutdown: &CancellationToken,
    ) -> Result<Option<Next>, StoreError> {
        let t = self.timings;
        let step_down = step_down_at(term.deadline, t);
        tokio::select! {
            // Biased: after a pause (GC, SIGSTOP) several branches are ready at once, and the
            // deadline must win over a renewal.
            biased;
            () = shutdown.cancelled() => {
                self.release(term).await;
                return Ok(None);
            }
            () = sleep_until(step_down) => {
                self.step_down(&term, LostReason::DeadlinePassed, None);
                return Ok(Some(Next::Follow));
            }
            () = sleep_until(term.last_renew_sent + t.renew_interval) => {}
        }
        let sent = Instant::now();
        if sent >= step_down {
            self.step_down(&term, LostReason::DeadlinePassed, None);
            return Ok(Some(Next::Follow));
        }
        let renewal = tokio::select! {
            () = shutdown.cancelled() => {
                self.release(term).await;
                return Ok(None);
            }
            r = timeout_at(step_down_at(term.deadline, t), self.store.renew(&self.key, &self.candidate.id, term.token, t.lease)) => r,
        };
        match renewal {
            Ok(Ok(RenewOutcome::Renewed)) => {
                term.deadline = term.deadline.max(sent + t.holding_time());
                term.last_renew_sent = sent;
                self.deadline_nanos
                    .store(self.nanos_at(term.deadline), Ordering::Release);
                Ok(Some(Next::Lead(term)))
            }
            Ok(Ok(RenewOutcome::Lost(cause))) => {
                let (reason, leader) = match cause {
                    LossCause::Expired => (LostReason::Expired, None),
                    LossCause::Released => (LostReason::Deposed { holder: None }, None),
                    LossCause::Deposed { holder, token } => (
                        LostReason::Deposed {
                            holder: holder.clone(),
                        },
                        holder.map(|id| LeaderInfo { id, token }),
                    ),
                };
                self.step_down(&term, reason, leader);
                Ok(Some(Next::Follow))
            }
            Ok(Err(e)) if !e.is_transient() => {
                self.step_down(&term, LostReason::DeadlinePassed, None);
                Err(e)
            }
            Ok(Err(e)) => {
                warn!(lock = %self.key, error = %e, "renewal failed; retrying before the deadline");
                // Retry sooner than a full interval: the deadline is what matters now.
                term.last_renew_sent = sent.max(Instant::now() - t.renew_interval / 2);
                Ok(Some(Next::Lead(term)))
            }
            Err(_) => {
                self.step_down(&term, LostReason::DeadlinePassed, None);
                Ok(Some(Next::Follow))
            }
        }
    }

    /// Gives the lock back (best effort, bounded) and steps down.
    async fn release(&self, term: ActiveTerm) {
        // Step down before the release is sent: the lock may be granted to someone else as soon
        // as the release commits.
        self.step_down(&term, LostReason::Released, None);
        match timeout(
            RELEASE_TIMEOUT,
            self.store
                .release(&self.key, &self.candidate.id, term.token),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(lock = %self.key, error = %e, "release failed; the lease will expire")
            }
            Err(_) => warn!(lock = %self.key, "release timed out; the lease will expire"),
        }
    }
}

/// When the loop steps down at the latest: a little before the deadline, so that the `Lost`
/// event and the term's cancellation are out before `is_leader()` turns false by itself.
fn step_down_at(deadline: Instant, timings: ElectionTimings) -> Instant {
    let lead = (timings.safety_margin / 4).min(STEP_DOWN_LEAD);
    deadline.checked_sub(lead).unwrap_or(deadline)
}

/// A poll interval with jitter, uniformly in [¾, 1] of it: candidates spread out, and a waiting
/// candidate still tries within one interval.
fn jittered(interval: Duration) -> Duration {
    let factor = rand::rng().random_range(0.75..=1.0);
    interval.mul_f64(factor)
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
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(ElectionError::Aborted(e.to_string()))),
            None => Ok(()),
        }
    }

    /// Stops the loop abruptly, as a crash would: nothing is released and the lease expires by
    /// itself. For tests and demonstrations.
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
