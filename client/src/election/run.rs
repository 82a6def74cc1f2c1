//! The loop itself: campaign while following, hold while leading, and the term that always
//! ends visibly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::claim::Claim;
use super::{ElectionError, LeaderInfo, LeadershipEvent, LostReason, Shared, Status, TermState};
use crate::metrics::{LossLabels, TransitionLabels};
use crate::store::lease::LossCause;
use crate::store::{
    AcquireOutcome, LockHolder, LockState, ReleaseOutcome, RenewOutcome, StoreError,
};

/// The longest a release may take before the loop gives up on it (the lease then expires by
/// itself).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a lease it saw run out a candidate tries again: enough for the store's clock
/// to be past it, whatever rounding.
const EXPIRY_SLACK: Duration = Duration::from_millis(1);

/// What the loop does next.
enum Phase {
    /// Campaign (read, and acquire if free) at `wake_at`, or earlier when nudged.
    Follow { wake_at: Instant },
    /// Hold the term.
    Lead(ActiveTerm),
    /// Stop (shutdown).
    Stop,
}

/// What retrying can do about a store error.
enum Retry {
    /// Retry later (with backoff).
    Later,
    /// A row is unreadable: report it; the store overwrites it at the next grant.
    Row,
    /// Nothing: stop the loop.
    Never,
}

fn classify(e: &StoreError) -> Retry {
    match e {
        StoreError::Corrupt { .. } => Retry::Row,
        e if e.is_transient() => Retry::Later,
        _ => Retry::Never,
    }
}

impl super::Election {
    /// Runs the election until `shutdown` is cancelled, then releases the lock if it is held.
    ///
    /// Transient store errors are retried; an error that retrying cannot fix (a missing table,
    /// a database that does not exist) ends the loop with that error, after stepping down. It
    /// is logged at error level and published as [`LeadershipEvent::Stopped`]: a pod should
    /// exit non-zero so that Kubernetes restarts it and the failure is visible.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ElectionError> {
        let _claim = Claim::take(&self.shared.key, &self.shared.candidate)?;
        let shared = self.shared.clone();
        let running = RunningStatus::start(&shared);
        info!(lock = %shared.key, member = %shared.candidate.id, "election started");
        let mut phase = Phase::Follow {
            wake_at: Instant::now(),
        };
        let result = loop {
            let next = match phase {
                Phase::Follow { wake_at } => shared.campaign(wake_at, &shutdown).await,
                Phase::Lead(term) => shared.hold(term, &shutdown).await,
                Phase::Stop => break Ok(()),
            };
            match next {
                Ok(next) => phase = next,
                Err(e) => break Err(e),
            }
        };
        match &result {
            Ok(()) => info!(lock = %shared.key, member = %shared.candidate.id, "election stopped"),
            Err(e) => {
                error!(lock = %shared.key, member = %shared.candidate.id, error = %e,
                    "election stopped on an error retrying cannot fix");
                shared.publish(LeadershipEvent::Stopped { error: e.clone() });
            }
        }
        running.finish(result.clone().err());
        result
    }
}

/// Keeps [`Status`] right however `run` ends: a dropped or aborted future leaves the status
/// `Stopped` with an error, never `Running` forever.
struct RunningStatus {
    shared: Arc<Shared>,
    finished: bool,
}

impl RunningStatus {
    fn start(shared: &Arc<Shared>) -> Self {
        shared.status.send_replace(Status::Running);
        Self {
            shared: shared.clone(),
            finished: false,
        }
    }

    fn finish(mut self, error: Option<ElectionError>) {
        self.finished = true;
        self.shared.status.send_replace(Status::Stopped(error));
    }
}

impl Drop for RunningStatus {
    fn drop(&mut self) {
        if !self.finished {
            self.shared
                .status
                .send_replace(Status::Stopped(Some(ElectionError::Aborted(
                    "the election loop stopped without finishing: its task was aborted, its \
                     future dropped, or the store panicked"
                        .into(),
                ))));
        }
    }
}

/// The term this member leads, as the loop holds it. Dropping it ends the term: whatever
/// stops the loop, the term's cancellation fires and exactly one `Lost` is published.
struct ActiveTerm {
    shared: Arc<Shared>,
    token: u64,
    deadline: Instant,
    next_renewal: Instant,
    cancelled: CancellationToken,
    ended: bool,
}

impl ActiveTerm {
    /// Moves the deadline later (never earlier) after a successful renewal.
    fn extend(&mut self, deadline: Instant) {
        if deadline > self.deadline {
            self.deadline = deadline;
            self.shared.clock.set_deadline(deadline);
        }
    }

    /// Ends the term now.
    fn end(mut self, reason: LostReason, leader: Option<LeaderInfo>) {
        self.finish(reason, leader);
    }

    fn finish(&mut self, reason: LostReason, leader: Option<LeaderInfo>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.shared
            .step_down(self.token, self.deadline, &self.cancelled, reason, leader);
    }
}

impl Drop for ActiveTerm {
    fn drop(&mut self) {
        self.finish(LostReason::Stopped, None);
    }
}

/// When the loop steps down at the latest: a quarter of the margin before the deadline, so
/// that the `Lost` event and the term's cancellation are out before `is_leader()` turns false
/// by itself.
fn step_down_at(deadline: Instant, shared: &Shared) -> Instant {
    deadline
        .checked_sub(shared.timings.step_down_lead())
        .unwrap_or(deadline)
}

/// A poll interval with jitter, uniformly in [¾, 1] of it: candidates spread out, and a waiting
/// candidate still tries within one interval.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.75..=1.0))
}

impl Shared {
    fn publish(&self, event: LeadershipEvent) {
        debug!(lock = %self.key, member = %self.candidate.id, ?event, "leadership event");
        // No subscriber is not an error: events are for whoever listens.
        let _ = self.events.send(event.clone());
        self.latest_event.send_replace(event);
    }

    /// Whether `holder` is this very process (our id and incarnation).
    fn is_mine(&self, holder: &LockHolder) -> bool {
        holder.id == self.candidate.id
            && holder.incarnation.as_deref() == Some(self.candidate.incarnation.as_str())
    }

    /// Records the leader seen in the store. An earlier incarnation of this member id is not
    /// reported as a leader: `LeaderChanged` never names this member while it does not lead.
    pub(super) fn observe_leader(&self, leader: Option<LeaderInfo>) {
        let leader = leader.filter(|l| l.id != self.candidate.id || self.clock.token().is_some());
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

    /// Runs one store operation, recording its latency and error.
    async fn timed<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = op.await;
        self.metrics.observe_store(
            &self.key.group,
            operation,
            started.elapsed(),
            result.as_ref().err(),
        );
        result
    }

    fn log_retry(&self, operation: &str, e: &StoreError) {
        match e {
            StoreError::PermissionDenied { .. } => {
                error!(lock = %self.key, operation, error = %e, "access denied; retrying")
            }
            StoreError::Corrupt { .. } => {
                error!(lock = %self.key, operation, error = %e, "unreadable lock row; retrying")
            }
            _ => warn!(lock = %self.key, operation, error = %e, "store error; retrying"),
        }
    }

    fn fatal(&self, e: StoreError) -> ElectionError {
        ElectionError::Store {
            key: self.key.clone(),
            source: e,
        }
    }

    /// When a follower tries next, having seen `remaining` of a live holder's lease: when that
    /// lease runs out, or after one (jittered) poll interval if that comes first.
    fn next_try(&self, remaining: Option<Duration>) -> Instant {
        let poll = jittered(self.timings.poll_interval);
        let wait = match remaining {
            // A little jitter so that the candidates do not all open a transaction at the
            // same instant.
            Some(r) => poll.min(r + EXPIRY_SLACK + jittered(self.timings.poll_interval / 50)),
            None => poll,
        };
        Instant::now() + wait
    }

    /// Gives back a term this member does not lead (a grant whose reply was lost or came too
    /// late, a renewal that committed after the step-down). Conditional on (holder, token), so
    /// it can never free anyone else's lease.
    async fn give_back(&self, token: u64) {
        let release = self.store.release(&self.key, &self.candidate.id, token);
        match timeout(RELEASE_TIMEOUT, self.timed("release", release)).await {
            Ok(Ok(outcome)) => {
                debug!(lock = %self.key, token, ?outcome, "gave back a term this member does not lead")
            }
            Ok(Err(e)) => self.log_retry("release", &e),
            Err(_) => warn!(lock = %self.key, token, "giving back a term timed out"),
        }
    }

    /// One campaign step: a strong read, and an acquire only if the lock looks free.
    async fn campaign(
        self: &Arc<Self>,
        wake_at: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Phase, ElectionError> {
        let t = self.timings;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Phase::Stop),
            () = self.nudge.notified() => {}
            () = sleep_until(wake_at) => {}
        }
        // Read first: a poll must not lock the row the holder renews.
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Phase::Stop),
            r = timeout(t.lease, self.timed("read_lock", self.store.lock_state(&self.key))) => r,
        };
        match read {
            Ok(Ok(Some(LockState {
                holder: Some(holder),
                ..
            }))) => return Ok(self.found_holder(holder).await),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => match classify(&e) {
                Retry::Never => return Err(self.fatal(e)),
                // The store decides what to do with an unreadable row at the acquire.
                Retry::Row => self.log_retry("read_lock", &e),
                Retry::Later => {
                    self.log_retry("read_lock", &e);
                    return Ok(Phase::Follow {
                        wake_at: self.next_try(None),
                    });
                }
            },
            Err(_) => {
                warn!(lock = %self.key, "reading the lock timed out after {:?}; retrying", t.lease);
                return Ok(Phase::Follow {
                    wake_at: self.next_try(None),
                });
            }
        }
        // The lock looks free: one conditional transaction decides.
        let sent = Instant::now();
        let deadline = sent + t.holding_time();
        let usable_until = step_down_at(deadline, self);
        let acquire = self.timed(
            "acquire",
            self.store.acquire(&self.key, &self.candidate, t.lease),
        );
        let attempt = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Phase::Stop),
            r = timeout_at(usable_until, acquire) => r,
        };
        match attempt {
            Ok(Ok(AcquireOutcome::Granted { token })) => {
                if Instant::now() < usable_until {
                    return Ok(Phase::Lead(self.become_leader(token, sent, deadline)));
                }
                // Too late to be used safely: give it back at once instead of blocking the lock
                // for a lease.
                warn!(lock = %self.key, token, "grant arrived after its step-down time; giving it back");
                self.give_back(token).await;
                // Back off: a member whose grants come too late must not take the lock from
                // the others again and again.
                Ok(Phase::Follow {
                    wake_at: self.next_try(None),
                })
            }
            Ok(Ok(AcquireOutcome::Held(holder))) => Ok(self.found_holder(holder).await),
            Ok(Err(e)) => match classify(&e) {
                Retry::Never => Err(self.fatal(e)),
                Retry::Row | Retry::Later => {
                    self.log_retry("acquire", &e);
                    Ok(Phase::Follow {
                        wake_at: self.next_try(None),
                    })
                }
            },
            Err(_) => {
                // The acquire may have committed: the next read finds out, and gives back a
                // grant of ours it finds.
                warn!(lock = %self.key, "acquire timed out; its outcome is unknown");
                Ok(Phase::Follow {
                    wake_at: Instant::now(),
                })
            }
        }
    }

    /// A live holder was found: ours to give back, or someone else's to wait for.
    async fn found_holder(&self, holder: LockHolder) -> Phase {
        if self.is_mine(&holder) {
            // This process holds a term it does not lead: a grant whose reply was lost, or a
            // renewal that committed after the step-down. Give it back, and back off for a poll
            // so that a member whose replies keep getting lost does not take the lock from the
            // others again and again.
            self.give_back(holder.token).await;
            return Phase::Follow {
                wake_at: self.next_try(None),
            };
        }
        let remaining = holder.remaining;
        self.observe_leader(Some(LeaderInfo {
            id: holder.id,
            token: holder.token,
        }));
        Phase::Follow {
            wake_at: self.next_try(Some(remaining)),
        }
    }

    fn become_leader(self: &Arc<Self>, token: u64, sent: Instant, deadline: Instant) -> ActiveTerm {
        let cancelled = CancellationToken::new();
        self.clock.lead(token, deadline);
        let since = Instant::now();
        self.state.send_modify(|view| {
            view.term = Some(TermState {
                token,
                since,
                cancelled: cancelled.clone(),
            });
        });
        let labels = &self.labels;
        self.metrics.is_leader.get_or_create(labels).set(1);
        self.metrics
            .fencing_token
            .get_or_create(labels)
            .set(i64::try_from(token).unwrap_or(i64::MAX));
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                group: labels.group.clone(),
                lock: labels.lock.clone(),
                event: "elected",
            })
            .inc();
        info!(lock = %self.key, member = %self.candidate.id, token, "elected");
        self.publish(LeadershipEvent::Elected {
            token,
            since,
            deadline,
        });
        self.observe_leader(Some(LeaderInfo {
            id: self.candidate.id.clone(),
            token,
        }));
        ActiveTerm {
            shared: self.clone(),
            token,
            deadline,
            next_renewal: sent + self.timings.renew_interval,
            cancelled,
            ended: false,
        }
    }

    /// Steps down: first `is_leader()` turns false, then leader-only work is cancelled, then
    /// the events go out.
    fn step_down(
        &self,
        token: u64,
        deadline: Instant,
        cancelled: &CancellationToken,
        reason: LostReason,
        leader: Option<LeaderInfo>,
    ) {
        self.clock.clear();
        let at = Instant::now();
        cancelled.cancel();
        self.state.send_modify(|view| view.term = None);
        let labels = &self.labels;
        self.metrics.is_leader.get_or_create(labels).set(0);
        self.metrics.fencing_token.get_or_create(labels).set(0);
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                group: labels.group.clone(),
                lock: labels.lock.clone(),
                event: "lost",
            })
            .inc();
        self.metrics
            .lost
            .get_or_create(&LossLabels {
                group: labels.group.clone(),
                lock: labels.lock.clone(),
                reason: reason_label(&reason),
            })
            .inc();
        match &reason {
            LostReason::Released => info!(lock = %self.key, token, "released"),
            LostReason::Expired | LostReason::Failed { .. } | LostReason::Stopped => {
                error!(lock = %self.key, token, reason = ?reason, "lost leadership")
            }
            other => warn!(lock = %self.key, token, reason = ?other, "lost leadership"),
        }
        self.publish(LeadershipEvent::Lost {
            token,
            reason,
            at,
            deadline,
        });
        self.observe_leader(leader);
    }

    /// Waits for the next renewal time and renews, stepping down before the deadline at the
    /// latest.
    async fn hold(
        &self,
        mut term: ActiveTerm,
        shutdown: &CancellationToken,
    ) -> Result<Phase, ElectionError> {
        let t = self.timings;
        let step_down = step_down_at(term.deadline, self);
        tokio::select! {
            // Biased: after a pause (GC, SIGSTOP) several branches are ready at once, and the
            // deadline must win over a renewal.
            biased;
            () = shutdown.cancelled() => {
                self.release(term).await;
                return Ok(Phase::Stop);
            }
            () = sleep_until(step_down) => {
                term.end(LostReason::DeadlinePassed, None);
                return Ok(Phase::Follow { wake_at: Instant::now() });
            }
            () = self.resign.notified() => {
                if self.resign_token.load(Ordering::Acquire) != term.token {
                    // A request for an earlier term.
                    return Ok(Phase::Lead(term));
                }
                self.release(term).await;
                return Ok(Phase::Follow { wake_at: Instant::now() + t.lease });
            }
            () = sleep_until(term.next_renewal) => {}
        }
        let sent = Instant::now();
        if sent >= step_down || self.clock.boot_expired() {
            // Paused or suspended past the step-down time.
            term.end(LostReason::DeadlinePassed, None);
            return Ok(Phase::Follow { wake_at: sent });
        }
        let renew = self.timed(
            "renew",
            self.store
                .renew(&self.key, &self.candidate.id, term.token, t.lease),
        );
        let renewal = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                self.release(term).await;
                return Ok(Phase::Stop);
            }
            r = timeout_at(step_down, renew) => r,
        };
        match renewal {
            Ok(Ok(RenewOutcome::Renewed)) => {
                term.extend(sent + t.holding_time());
                term.next_renewal = sent + t.renew_interval;
                Ok(Phase::Lead(term))
            }
            Ok(Ok(RenewOutcome::Lost(cause))) => {
                let (reason, leader) = match cause {
                    LossCause::Expired => {
                        if Instant::now() < term.deadline {
                            self.metrics
                                .margin_violations
                                .get_or_create(&self.labels)
                                .inc();
                            error!(lock = %self.key, token = term.token,
                                "the store says the lease expired while the local deadline is \
                                 still ahead: the safety margin did not cover a clock \
                                 difference; raise HEDGE_SAFETY_MARGIN_MS");
                        }
                        (LostReason::Expired, None)
                    }
                    LossCause::Released => (LostReason::Deposed { holder: None }, None),
                    LossCause::Deposed { holder, token } => (
                        LostReason::Deposed {
                            holder: holder.clone(),
                        },
                        holder.map(|id| LeaderInfo { id, token }),
                    ),
                };
                term.end(reason, leader);
                Ok(Phase::Follow {
                    wake_at: Instant::now(),
                })
            }
            Ok(Err(e)) => match classify(&e) {
                Retry::Never => {
                    term.end(LostReason::Failed { reason: e.reason() }, None);
                    Err(self.fatal(e))
                }
                Retry::Row => {
                    self.log_retry("renew", &e);
                    term.end(LostReason::Deposed { holder: None }, None);
                    Ok(Phase::Follow {
                        wake_at: Instant::now(),
                    })
                }
                Retry::Later => {
                    self.log_retry("renew", &e);
                    // Retry well before the step-down: a few more tries fit in what is left.
                    let now = Instant::now();
                    let left = step_down.saturating_duration_since(now);
                    let delay = (t.renew_interval / 4)
                        .min(left / 2)
                        .max(Duration::from_millis(1));
                    term.next_renewal = now + delay;
                    Ok(Phase::Lead(term))
                }
            },
            Err(_) => {
                let token = term.token;
                term.end(LostReason::DeadlinePassed, None);
                // The renewal may have committed after all: give the term back so that the
                // next leader does not wait a lease for nothing.
                self.give_back(token).await;
                Ok(Phase::Follow {
                    wake_at: Instant::now(),
                })
            }
        }
    }

    /// Steps down, then gives the lock back (best effort, bounded).
    async fn release(&self, term: ActiveTerm) {
        let token = term.token;
        // Step down before the release is sent: the lock may be granted to someone else as soon
        // as the release commits.
        term.end(LostReason::Released, None);
        let release = self.store.release(&self.key, &self.candidate.id, token);
        match timeout(RELEASE_TIMEOUT, self.timed("release", release)).await {
            Ok(Ok(ReleaseOutcome::Released)) => {
                self.released.send_replace(token);
            }
            Ok(Ok(ReleaseOutcome::NotHolder)) => {}
            Ok(Err(e)) => {
                warn!(lock = %self.key, error = %e, "release failed; the lease will expire")
            }
            Err(_) => warn!(lock = %self.key, "release timed out; the lease will expire"),
        }
    }
}

fn reason_label(reason: &LostReason) -> &'static str {
    match reason {
        LostReason::Released => "released",
        LostReason::DeadlinePassed => "deadline_passed",
        LostReason::Expired => "expired",
        LostReason::Deposed { .. } => "deposed",
        LostReason::Stopped => "stopped",
        LostReason::Failed { .. } => "failed",
    }
}
