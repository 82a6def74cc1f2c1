//! Distributed counting semaphores: [`Semaphore`], from
//! [`Hedge::semaphore`](crate::Hedge::semaphore), and its leased [`Permit`]s.
//!
//! * A semaphore is a row with its limit; each permit held is a row of its own with a **lease**
//!   judged on the store's clock, renewed in the background while its [`Permit`] guard lives,
//!   and released when the guard is dropped or [`Permit::release`]d. A holder that dies stops
//!   renewing, and its permit stops counting `lease` after its last renewal: nothing depends on
//!   a leader pinging holders. A holder is identified by member id, incarnation and permit id,
//!   never by an address.
//! * [`Semaphore::acquire`] is one store transaction per attempt, which counts the unexpired
//!   permits against the limit (see [`crate::store::permits`]). When the semaphore is full it
//!   waits: it is woken at once when a permit of the semaphore is released in this process (or
//!   announced released by another member, see [`ReleaseNotifier`]), and otherwise retries with
//!   jittered exponential backoff up to [`PermitTimings::max_backoff`], and at the moment the
//!   first live permit would expire unless renewed. Dropping the future cancels it.
//!   [`Semaphore::try_acquire`] makes one attempt.
//! * Each permit carries a **fencing token**, strictly greater than every token granted before
//!   for the semaphore. A process may hold several permits.
//! * The holder keeps a local deadline, like a leader: `renewal sent + lease − safety margin`.
//!   [`Permit::is_held`] is a local check against it, and [`Permit::cancelled`] fires when
//!   renewals fail up to the deadline (or the store reports the permit expired or gone), before
//!   any other member can count the permit as free.
//!
//! # Cancellation leaves nothing behind
//!
//! Each attempt runs on a task of its own. If the `acquire` future is dropped while an attempt
//! is in flight, the attempt still finishes: a permit it was granted is wrapped in its guard and
//! dropped at once, which releases it. An attempt whose outcome is unknown (a lost reply, a
//! timeout) is followed by a release of its permit id when the acquire gives up or is dropped.
//! The one remaining case, a commit that outlives the caller's own deadline on the server, is
//! a permit nobody renews: it stops counting after one lease.

pub mod notify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{ConfigError, MAX_LEASE, MIN_SAFETY_MARGIN};
use crate::store::permits::{self, PermitInputError};
use crate::store::{
    Candidate, DefineOutcome, PermitOutcome, PermitRenewal, PermitRequest, ReleaseOutcome,
    SemaphoreKey, SemaphoreState, Store, StoreError,
};

pub use crate::store::permits::MAX_PERMIT_LIMIT;

/// The first pause of a waiting acquire.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// How long a release (on drop, or of an unknown attempt) may take before it is given up; the
/// permit's lease then ends it.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most how long before its deadline a holder whose renewals fail gives the permit up.
const STEP_DOWN_LEAD: Duration = Duration::from_millis(20);
/// A waiter retries this long after the first live permit would expire, so that the store sees
/// it expired.
const EXPIRY_GRACE: Duration = Duration::from_millis(5);

/// Errors of the semaphores.
#[derive(Debug, thiserror::Error)]
pub enum SemaphoreError {
    /// A limit, name or lease hedge refuses.
    #[error(transparent)]
    Input(#[from] PermitInputError),
    /// Invalid permit timings.
    #[error("invalid permit timings: {0}")]
    Timings(#[from] ConfigError),
    /// The semaphore exists with another limit.
    #[error(
        "semaphore {key} exists with limit {existing}, not {requested}: use the same limit \
         everywhere, or another name"
    )]
    LimitMismatch {
        /// The semaphore.
        key: SemaphoreKey,
        /// Its limit.
        existing: u32,
        /// The limit asked for.
        requested: u32,
    },
    /// No semaphore of that name exists in the group.
    #[error("semaphore {key} does not exist: create it with Hedge::semaphore(name, limit)")]
    Unknown {
        /// The semaphore.
        key: SemaphoreKey,
    },
    /// The permit's lease ran out (or it was reclaimed) before it was released: the work done
    /// under it was not protected to the end.
    #[error("permit {permit_id} of {key} was lost before it was released")]
    Lost {
        /// The semaphore.
        key: SemaphoreKey,
        /// The permit.
        permit_id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A task of the semaphore ended abnormally (a panic, or the runtime shutting down).
    #[error("a semaphore task ended abnormally: {0}")]
    Aborted(String),
}

impl SemaphoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SemaphoreError::Store(e) if e.is_transient())
    }
}

/// The timings of permits: their lease, how often they are renewed, the holder's safety
/// margin, and how long a waiting acquire pauses at most between attempts.
///
/// Defaults (from a 5 s lease): renew every 1 s, margin 700 ms, backoff at most 750 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermitTimings {
    /// The permit lease: a dead holder's permit stops counting this long after its last
    /// renewal.
    pub lease: Duration,
    /// The renewal interval, below `lease − safety_margin`.
    pub renew_interval: Duration,
    /// The holder stops trusting a permit this long before its lease would end.
    pub safety_margin: Duration,
    /// The longest pause of a waiting acquire between two attempts.
    pub max_backoff: Duration,
}

impl Default for PermitTimings {
    fn default() -> Self {
        Self::from_lease(Duration::from_secs(5))
    }
}

impl PermitTimings {
    /// Timings scaled from a lease as the election's are: renew every lease/5, margin
    /// lease/10 + 200 ms (at most lease/4), backoff at most 3/20 of the lease.
    pub fn from_lease(lease: Duration) -> Self {
        let e = crate::config::ElectionTimings::from_lease(lease);
        Self {
            lease,
            renew_interval: e.renew_interval,
            safety_margin: e.safety_margin,
            max_backoff: e.poll_interval,
        }
    }

    /// Checks every rule; the error says which setting to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("permit lease", self.lease),
            ("permit renew interval", self.renew_interval),
            ("permit safety margin", self.safety_margin),
            ("permit backoff", self.max_backoff),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.lease > MAX_LEASE {
            return Err(ConfigError::OutOfRange {
                name: "permit lease",
                value: self.lease,
                bound: "at most",
                limit: MAX_LEASE,
                why: "a crashed holder would keep its permit for that long",
            });
        }
        if self.safety_margin < MIN_SAFETY_MARGIN {
            return Err(ConfigError::OutOfRange {
                name: "permit safety margin",
                value: self.safety_margin,
                bound: "at least",
                limit: MIN_SAFETY_MARGIN,
                why: "the holder must give the permit up before its lease ends on the store",
            });
        }
        let holding = self.lease.saturating_sub(self.safety_margin);
        if self.renew_interval >= holding {
            return Err(ConfigError::Order {
                smaller: "permit renew interval",
                smaller_value: self.renew_interval,
                larger: "permit lease minus safety margin",
                larger_value: holding,
            });
        }
        Ok(())
    }

    /// How long the holder may count on a grant or renewal sent now.
    pub fn holding_time(&self) -> Duration {
        self.lease.saturating_sub(self.safety_margin)
    }
}

/// Announces this member's released permits to the other members, whose transport then calls
/// [`Hedge::wake_semaphore_waiters`](crate::Hedge::wake_semaphore_waiters): the hook the peer
/// transport implements (see [`notify`], installed when the transport is on). It must not
/// block (send in the background).
pub trait ReleaseNotifier: Send + Sync + std::fmt::Debug + 'static {
    /// A permit of `key` was released by this member.
    fn permit_released(&self, key: &SemaphoreKey);
}

/// The waiters of one process (one [`Hedge`](crate::Hedge) and its clones): woken at once when
/// a permit of their semaphore is released here, or announced released by another member.
#[derive(Clone, Debug, Default)]
pub struct Waiters {
    notifies: Arc<Mutex<HashMap<SemaphoreKey, Arc<Notify>>>>,
    notifier: Option<Arc<dyn ReleaseNotifier>>,
}

impl Waiters {
    /// Waiters that announce this process's releases through `notifier`, if any.
    pub fn new(notifier: Option<Arc<dyn ReleaseNotifier>>) -> Self {
        Self {
            notifies: Arc::default(),
            notifier,
        }
    }

    /// Wakes every waiting acquire of `key` in this process (they retry at once).
    pub fn wake(&self, key: &SemaphoreKey) {
        if let Some(notify) = self.map().get(key) {
            notify.notify_waiters();
        }
    }

    fn notify(&self, key: &SemaphoreKey) -> Arc<Notify> {
        self.map().entry(key.clone()).or_default().clone()
    }

    /// After a release here: wake the local waiters, announce it to the others.
    fn released(&self, key: &SemaphoreKey) {
        self.wake(key);
        if let Some(notifier) = &self.notifier {
            notifier.permit_released(key);
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SemaphoreKey, Arc<Notify>>> {
        // A poisoned map only means a panic elsewhere; the map itself is always consistent.
        self.notifies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle on one semaphore of a group, for one member. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Semaphore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn Store>,
    key: SemaphoreKey,
    limit: u32,
    holder: Candidate,
    timings: PermitTimings,
    waiters: Waiters,
}

/// What one acquire attempt found.
enum Attempt {
    Granted(Permit),
    Full { next_expiry: Option<Duration> },
}

impl Semaphore {
    /// Creates semaphore `key` with `limit` if it does not exist (one transaction), and
    /// returns a handle for `holder`. An existing semaphore with another limit is
    /// [`SemaphoreError::LimitMismatch`]; a limit of zero is [`PermitInputError::ZeroLimit`].
    pub async fn define(
        store: Arc<dyn Store>,
        key: SemaphoreKey,
        limit: u32,
        holder: Candidate,
        timings: PermitTimings,
        waiters: Waiters,
    ) -> Result<Self, SemaphoreError> {
        permits::validate_key(&key)?;
        permits::validate_limit(limit)?;
        timings.validate()?;
        match store.define_semaphore(&key, limit).await? {
            DefineOutcome::Created | DefineOutcome::Exists => {}
            DefineOutcome::LimitMismatch { existing } => {
                return Err(SemaphoreError::LimitMismatch {
                    key,
                    existing,
                    requested: limit,
                });
            }
        }
        Ok(Self::handle(store, key, limit, holder, timings, waiters))
    }

    /// A handle on the existing semaphore `key`, with the limit it was created with;
    /// [`SemaphoreError::Unknown`] when there is none.
    pub async fn open(
        store: Arc<dyn Store>,
        key: SemaphoreKey,
        holder: Candidate,
        timings: PermitTimings,
        waiters: Waiters,
    ) -> Result<Self, SemaphoreError> {
        permits::validate_key(&key)?;
        timings.validate()?;
        let Some(state) = store.semaphore_state(&key).await? else {
            return Err(SemaphoreError::Unknown { key });
        };
        Ok(Self::handle(
            store,
            key,
            state.limit,
            holder,
            timings,
            waiters,
        ))
    }

    fn handle(
        store: Arc<dyn Store>,
        key: SemaphoreKey,
        limit: u32,
        holder: Candidate,
        timings: PermitTimings,
        waiters: Waiters,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                key,
                limit,
                holder,
                timings,
                waiters,
            }),
        }
    }

    /// The semaphore.
    pub fn key(&self) -> &SemaphoreKey {
        &self.shared.key
    }

    /// Its limit.
    pub fn limit(&self) -> u32 {
        self.shared.limit
    }

    /// The permit timings of this handle.
    pub fn timings(&self) -> PermitTimings {
        self.shared.timings
    }

    /// The semaphore's live permits (one strong read).
    pub async fn state(&self) -> Result<SemaphoreState, SemaphoreError> {
        match self.shared.store.semaphore_state(&self.shared.key).await? {
            Some(state) => Ok(state),
            None => Err(SemaphoreError::Unknown {
                key: self.shared.key.clone(),
            }),
        }
    }

    /// Waits for a permit (see the module docs). Transient store errors are retried;
    /// [`SemaphoreError::Unknown`] ends the wait if the semaphore is deleted. Cancel it by
    /// dropping the future (for example with `tokio::time::timeout` or `select!`).
    pub async fn acquire(&self) -> Result<Permit, SemaphoreError> {
        let shared = &self.shared;
        let mut pending = Pending::new(shared.clone());
        let notify = shared.waiters.notify(&shared.key);
        let mut backoff = MIN_BACKOFF;
        loop {
            // Registered before the attempt: a release between the attempt and the wait is
            // not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.attempt(&mut pending).await {
                Ok(Attempt::Granted(permit)) => return Ok(permit),
                Ok(Attempt::Full { next_expiry }) => {
                    let wait = jittered(backoff);
                    next_expiry.map_or(wait, |e| wait.min(e + EXPIRY_GRACE))
                }
                Err(e) if e.is_transient() => {
                    warn!(semaphore = %shared.key, error = %e, "acquire failed; retrying");
                    jittered(backoff)
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                () = &mut notified => backoff = MIN_BACKOFF,
                () = sleep(wait) => backoff = (backoff * 2).min(shared.timings.max_backoff),
            }
        }
    }

    /// One attempt: a permit, or `None` when the semaphore is full.
    pub async fn try_acquire(&self) -> Result<Option<Permit>, SemaphoreError> {
        let mut pending = Pending::new(self.shared.clone());
        match self.attempt(&mut pending).await? {
            Attempt::Granted(permit) => Ok(Some(permit)),
            Attempt::Full { .. } => Ok(None),
        }
    }

    /// Runs one attempt on a task of its own (see the module docs on cancellation).
    async fn attempt(&self, pending: &mut Pending) -> Result<Attempt, SemaphoreError> {
        let (reply, receive) = oneshot::channel();
        let shared = self.shared.clone();
        let permit_id = pending.permit_id.clone();
        tokio::spawn(async move {
            let result = attempt_once(&shared, &permit_id).await;
            if let Err(unsent) = reply.send(result) {
                // The acquire was dropped meanwhile. A granted permit's guard is dropped with
                // `unsent`, which releases it; an unknown outcome is released by id.
                if matches!(&unsent, Err(e) if e.is_transient()) {
                    release_by_id(&shared, &permit_id).await;
                }
            }
        });
        let result = receive
            .await
            .unwrap_or_else(|e| Err(SemaphoreError::Aborted(e.to_string())));
        match &result {
            Ok(_) => pending.maybe_held = false,
            Err(e) if e.is_transient() => pending.maybe_held = true,
            Err(_) => {}
        }
        result
    }
}

/// One acquire transaction, and the guard of the permit it grants.
async fn attempt_once(shared: &Arc<Shared>, permit_id: &str) -> Result<Attempt, SemaphoreError> {
    let t = shared.timings;
    let request = PermitRequest {
        permit_id: permit_id.to_owned(),
        holder: shared.holder.clone(),
        lease: t.lease,
    };
    let sent = Instant::now();
    let outcome = timeout(t.lease, shared.store.acquire_permit(&shared.key, &request)).await;
    match outcome {
        Err(_) => Err(StoreError::Timeout(t.lease).into()),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(PermitOutcome::UnknownSemaphore)) => Err(SemaphoreError::Unknown {
            key: shared.key.clone(),
        }),
        Ok(Ok(PermitOutcome::Full { next_expiry, .. })) => Ok(Attempt::Full { next_expiry }),
        Ok(Ok(PermitOutcome::Granted { token })) => {
            let deadline = sent + t.holding_time();
            if Instant::now() >= deadline {
                // The grant arrived too late to be used safely: give it back.
                warn!(semaphore = %shared.key, token, "permit granted after its deadline; releasing it");
                release_by_id(shared, permit_id).await;
                return Err(StoreError::Timeout(t.holding_time()).into());
            }
            Ok(Attempt::Granted(Permit::start(
                shared.clone(),
                permit_id,
                token,
                sent,
                deadline,
            )))
        }
    }
}

/// Releases permit `permit_id` (best effort, bounded) and wakes the waiters.
async fn release_by_id(shared: &Shared, permit_id: &str) {
    match timeout(
        RELEASE_TIMEOUT,
        shared.store.release_permit(&shared.key, permit_id),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(semaphore = %shared.key, permit_id, error = %e, "release failed; the permit lease will end it")
        }
        Err(_) => {
            warn!(semaphore = %shared.key, permit_id, "release timed out; the permit lease will end it")
        }
    }
    shared.waiters.released(&shared.key);
}

/// The permit id of one acquire, kept across its attempts, and whether an attempt may have
/// been granted without our knowing (a lost reply): then it is released when the acquire ends
/// without a permit.
struct Pending {
    shared: Arc<Shared>,
    permit_id: String,
    maybe_held: bool,
}

impl Pending {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            permit_id: uuid::Uuid::new_v4().simple().to_string(),
            maybe_held: false,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.maybe_held {
            return;
        }
        let (shared, permit_id) = (self.shared.clone(), self.permit_id.clone());
        // Without a runtime (the process is ending) the permit's lease ends it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release_by_id(&shared, &permit_id).await });
        }
    }
}

/// A permit held: renewed in the background until the guard is dropped or
/// [`Permit::release`]d, which frees its slot at once.
#[derive(Debug)]
pub struct Permit {
    state: Arc<PermitState>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<ReleaseOutcome, StoreError>>>,
}

#[derive(Debug)]
struct PermitState {
    key: SemaphoreKey,
    permit_id: String,
    token: u64,
    /// The clock origin of `deadline_nanos`.
    origin: Instant,
    deadline_nanos: AtomicU64,
    lost: AtomicBool,
    cancelled: CancellationToken,
}

impl PermitState {
    fn deadline(&self) -> Instant {
        self.origin + Duration::from_nanos(self.deadline_nanos.load(Ordering::Acquire))
    }

    fn extend(&self, deadline: Instant) {
        let nanos = u64::try_from(deadline.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        self.deadline_nanos.fetch_max(nanos, Ordering::AcqRel);
    }

    /// The permit can no longer be trusted: `is_held()` turns false, then the work under it is
    /// cancelled.
    fn lose(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            warn!(semaphore = %self.key, permit = self.permit_id, token = self.token, why, "permit lost");
        }
        self.cancelled.cancel();
    }
}

impl Permit {
    fn start(
        shared: Arc<Shared>,
        permit_id: &str,
        token: u64,
        sent: Instant,
        deadline: Instant,
    ) -> Self {
        let origin = sent;
        let state = Arc::new(PermitState {
            key: shared.key.clone(),
            permit_id: permit_id.to_owned(),
            token,
            origin,
            deadline_nanos: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            cancelled: CancellationToken::new(),
        });
        state.extend(deadline);
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(shared, state.clone(), sent, stop.clone()));
        Self {
            state,
            stop,
            task: Some(task),
        }
    }

    /// The permit's fencing token: greater than every token granted before for the semaphore.
    pub fn token(&self) -> u64 {
        self.state.token
    }

    /// The permit's id.
    pub fn id(&self) -> &str {
        &self.state.permit_id
    }

    /// The semaphore.
    pub fn key(&self) -> &SemaphoreKey {
        &self.state.key
    }

    /// Whether the permit may be trusted now: a local check of its deadline, no I/O.
    pub fn is_held(&self) -> bool {
        !self.state.cancelled.is_cancelled() && Instant::now() < self.state.deadline()
    }

    /// The local deadline: `is_held()` turns false here unless a renewal succeeds first.
    pub fn deadline(&self) -> Instant {
        self.state.deadline()
    }

    /// Cancelled when the permit ends: lost (renewals failed up to the deadline, or the store
    /// reports it expired or gone), released, or dropped. Run the work it protects under it.
    pub fn cancelled(&self) -> CancellationToken {
        self.state.cancelled.clone()
    }

    /// Releases the permit and waits for the release to commit. [`SemaphoreError::Lost`] when
    /// the permit had been lost before (its work was not protected to the end).
    pub async fn release(mut self) -> Result<(), SemaphoreError> {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let outcome = task
            .await
            .map_err(|e| SemaphoreError::Aborted(e.to_string()))?;
        let lost = SemaphoreError::Lost {
            key: self.state.key.clone(),
            permit_id: self.state.permit_id.clone(),
        };
        if self.state.lost.load(Ordering::Acquire) {
            return Err(lost);
        }
        match outcome? {
            ReleaseOutcome::Released => Ok(()),
            ReleaseOutcome::NotHolder => Err(lost),
        }
    }

    /// Stops renewing abruptly, as a crash would: nothing is released, and the permit stops
    /// counting one lease after its last renewal. For tests and demonstrations.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.state.lose("aborted");
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The renewal task releases the permit (when the runtime lets it run; otherwise the
        // lease ends it).
        self.stop.cancel();
    }
}

/// Renews the permit until `stop`, then releases it.
async fn keep(
    shared: Arc<Shared>,
    state: Arc<PermitState>,
    mut last_sent: Instant,
    stop: CancellationToken,
) -> Result<ReleaseOutcome, StoreError> {
    let t = shared.timings;
    loop {
        let deadline = state.deadline();
        let give_up = deadline
            .checked_sub((t.safety_margin / 4).min(STEP_DOWN_LEAD))
            .unwrap_or(deadline);
        tokio::select! {
            // Biased: after a pause, the deadline wins over a renewal.
            biased;
            () = stop.cancelled() => break,
            () = sleep_until(give_up) => {
                state.lose("no renewal succeeded before the deadline");
                break;
            }
            () = sleep_until(last_sent + t.renew_interval) => {}
        }
        let sent = Instant::now();
        if sent >= give_up {
            state.lose("no renewal succeeded before the deadline");
            break;
        }
        let renewal = tokio::select! {
            () = stop.cancelled() => break,
            r = timeout_at(give_up, shared.store.renew_permit(&shared.key, &state.permit_id, state.token, t.lease)) => r,
        };
        match renewal {
            Ok(Ok(PermitRenewal::Renewed)) => {
                state.extend(sent + t.holding_time());
                last_sent = sent;
            }
            Ok(Ok(PermitRenewal::Expired)) => {
                state.lose("the store reports the permit expired");
                break;
            }
            Ok(Ok(PermitRenewal::Gone)) => {
                state.lose("the store no longer has the permit");
                break;
            }
            Ok(Err(e)) if !e.is_transient() => {
                state.lose("the store refused the renewal");
                warn!(semaphore = %shared.key, error = %e, "permit renewal failed for good");
                break;
            }
            Ok(Err(e)) => {
                debug!(semaphore = %shared.key, error = %e, "permit renewal failed; retrying before the deadline");
                // Retry sooner than a full interval: the deadline is what matters now.
                last_sent = sent.max(
                    Instant::now()
                        .checked_sub(t.renew_interval / 2)
                        .unwrap_or(sent),
                );
            }
            Err(_) => {
                state.lose("the renewal did not finish before the deadline");
                break;
            }
        }
    }
    // The work under the permit stops before its slot can go to someone else.
    state.cancelled.cancel();
    stop.cancelled().await;
    let released = timeout(
        RELEASE_TIMEOUT,
        shared.store.release_permit(&shared.key, &state.permit_id),
    )
    .await;
    shared.waiters.released(&shared.key);
    match released {
        Ok(outcome) => outcome,
        Err(_) => Err(StoreError::Timeout(RELEASE_TIMEOUT)),
    }
}

/// A backoff with jitter, uniformly in [¾, 1] of it.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::rng().random_range(0.75..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timings_are_valid_and_scale_from_the_lease() {
        let t = PermitTimings::default();
        t.validate().unwrap();
        assert_eq!(t.renew_interval, Duration::from_secs(1));
        assert_eq!(t.holding_time(), Duration::from_millis(4300));
        let bad = PermitTimings {
            renew_interval: Duration::from_secs(5),
            ..t
        };
        assert!(bad.validate().is_err());
        assert!(
            PermitTimings {
                max_backoff: Duration::ZERO,
                ..t
            }
            .validate()
            .is_err()
        );
    }
}
