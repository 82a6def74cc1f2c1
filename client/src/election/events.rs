//! What an election tells the application: the leader it knows, the terms it leads, and every
//! transition, as typed events.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ElectionError;

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
    /// This member released the lock (shutdown, drop of the guard, or a resignation).
    Released,
    /// No renewal succeeded before the local deadline (the store was unreachable or too slow).
    DeadlinePassed,
    /// The store reported the lease expired while the local deadline was still ahead: the
    /// safety margin did not cover what happened (a store clock jump, a clock running at a
    /// different rate). Counted in the `hedge_margin_violations_total` metric and logged at error
    /// level; the contract's guarantee rests on this never happening.
    Expired,
    /// Another member holds the lock now (or the lock's row was released or deleted by someone
    /// else, or became unreadable).
    Deposed {
        /// The new holder, if known.
        holder: Option<String>,
    },
    /// The election loop stopped without releasing: its task was aborted, its future dropped
    /// (a caller's timeout, a losing `select!` branch) or a store panicked. The lease expires
    /// by itself.
    Stopped,
    /// The store failed in a way retrying cannot fix; the loop stops (see
    /// [`LeadershipEvent::Stopped`]).
    Failed {
        /// The kind of error ([`crate::StoreError::reason`]).
        reason: &'static str,
    },
}

/// A leadership transition. Per term, exactly one `Elected` and one `Lost`, in that order.
#[derive(Clone, Debug)]
pub enum LeadershipEvent {
    /// The loop has not decided anything yet.
    Started,
    /// This member became leader under `token`.
    Elected {
        /// The term's fencing token.
        token: u64,
        /// When `is_leader()` became true, on the monotonic clock.
        since: Instant,
        /// The term's local deadline at election: `is_leader()` is false from here on unless a
        /// renewal extends it.
        deadline: Instant,
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
        /// The term's last local deadline.
        deadline: Instant,
    },
    /// The leader this member knows of changed (`None`: the lock is free or unknown). Never
    /// names this member while `is_leader()` is false.
    LeaderChanged {
        /// The new leader.
        leader: Option<LeaderInfo>,
    },
    /// The loop stopped on an error retrying cannot fix; nothing more will happen until it is
    /// run again. A pod should exit non-zero so that Kubernetes restarts it and the failure is
    /// visible.
    Stopped {
        /// What stopped it.
        error: ElectionError,
    },
}

/// A term this member leads: its fencing token and a cancellation token that is cancelled when
/// the term ends, *before* its local deadline passes, however the election stops. Leader-only
/// work should run under it.
///
/// Each [`crate::Election::term`] call hands out its own child of the term's token: cancelling
/// it stops only the caller's own work and never ends the term (call
/// [`crate::Election::resign`] for that).
#[derive(Clone, Debug)]
pub struct Term {
    /// The fencing token.
    pub token: u64,
    /// When the term began here, on the monotonic clock.
    pub since: Instant,
    /// Cancelled when the term ends.
    pub cancelled: CancellationToken,
}
