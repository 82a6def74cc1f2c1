//! A term-overlap checker (after kubernetes#67651): every member's terms are recorded as
//! (token, start, end, deadline) intervals, and the checker verifies that tokens are unique and
//! strictly increasing in grant order, and that every term ended *strictly* before the next one
//! began.
//!
//! [`check`] works on any clock: the recorder here uses tokio's `Instant`, the chaos runs
//! (`crate::chaos`) nanoseconds of `CLOCK_MONOTONIC` shared by every process on the host.
//!
//! The recorder reads each election's event stream; the `Elected` and `Lost` events carry the
//! term's deadline as it was at that moment, so nothing is read late. A recorder that falls
//! behind (a lagged stream) has lost events, and the timeline then fails instead of passing
//! on partial data.

use std::sync::{Arc, Mutex};

use hedge::{Election, LeadershipEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One term as observed from outside the member, on the clock `T`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval<T = Instant> {
    /// The member.
    pub member: String,
    /// The fencing token.
    pub token: u64,
    /// When `is_leader()` became true.
    pub start: T,
    /// When the member stepped down (`is_leader()` turned false), if it did.
    pub lost_at: Option<T>,
    /// The term's last local deadline: `is_leader()` is false from here on whatever happens.
    pub deadline: Option<T>,
}

impl<T: Ord + Copy> Interval<T> {
    /// When the member stopped leading at the latest: the `Lost` event or the deadline,
    /// whichever came first.
    pub fn end(&self) -> Option<T> {
        match (self.lost_at, self.deadline) {
            (Some(l), Some(d)) => Some(l.min(d)),
            (l, d) => l.or(d),
        }
    }
}

/// What the checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation<T = Instant> {
    /// A token was granted twice.
    DuplicateToken(u64),
    /// A later grant got a smaller token.
    TokenWentBack {
        /// The earlier grant's token.
        earlier: u64,
        /// The later grant's token.
        later: u64,
    },
    /// A term began before the previous term ended.
    Overlap {
        /// The previous term.
        previous: Interval<T>,
        /// The next term.
        next: Interval<T>,
    },
    /// A member signalled `Lost` after its own deadline.
    LateLoss(Interval<T>),
    /// The recorder of a member missed events: the timeline is incomplete.
    Lagged {
        /// The member.
        member: String,
        /// How many events it missed.
        missed: u64,
    },
}

/// Checks a set of intervals; an empty list means no violation.
pub fn check<T: Ord + Copy>(intervals: &[Interval<T>]) -> Vec<Violation<T>> {
    let mut by_start = intervals.to_vec();
    by_start.sort_by_key(|i| (i.start, i.token));
    let mut violations = Vec::new();
    for pair in by_start.windows(2) {
        let (previous, next) = (&pair[0], &pair[1]);
        if previous.token == next.token {
            violations.push(Violation::DuplicateToken(next.token));
        } else if next.token < previous.token {
            violations.push(Violation::TokenWentBack {
                earlier: previous.token,
                later: next.token,
            });
        }
        // A term that never ended (still leading, and no deadline known) overlaps anything
        // after; a term must end strictly before the next one starts.
        if previous.end().is_none_or(|end| end >= next.start) {
            violations.push(Violation::Overlap {
                previous: previous.clone(),
                next: next.clone(),
            });
        }
    }
    for i in intervals {
        if let (Some(lost), Some(deadline)) = (i.lost_at, i.deadline)
            && lost > deadline
        {
            violations.push(Violation::LateLoss(i.clone()));
        }
    }
    violations
}

/// Records the terms of many elections into one timeline.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    intervals: Arc<Mutex<Vec<Interval>>>,
    recorders: Arc<Mutex<Vec<Recorder>>>,
    lagged: Arc<Mutex<Vec<Violation>>>,
}

/// An election being recorded and the task that records it.
type Recorder = (Election, JoinHandle<()>);

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every term of `election` from now on. Call before the election runs.
    pub fn record(&self, election: &Election) {
        let mut events = election.events();
        let intervals = self.intervals.clone();
        let lagged = self.lagged.clone();
        let member = election.member_id().to_owned();
        let task = tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Closed) => break,
                    Err(RecvError::Lagged(missed)) => {
                        lock(&lagged).push(Violation::Lagged {
                            member: member.clone(),
                            missed,
                        });
                        continue;
                    }
                };
                let mut list = lock(&intervals);
                match event {
                    LeadershipEvent::Elected {
                        token,
                        since,
                        deadline,
                    } => list.push(Interval {
                        member: member.clone(),
                        token,
                        start: since,
                        lost_at: None,
                        deadline: Some(deadline),
                    }),
                    LeadershipEvent::Lost {
                        token,
                        at,
                        deadline,
                        ..
                    } => {
                        if let Some(i) = list
                            .iter_mut()
                            .rev()
                            .find(|i| i.member == member && i.token == token)
                        {
                            i.lost_at = Some(at);
                            i.deadline = Some(deadline);
                        }
                    }
                    _ => {}
                }
            }
        });
        lock(&self.recorders).push((election.clone(), task));
    }

    /// The intervals so far; a term without a `Lost` yet gets its election's current deadline
    /// (it may still be extended: such a term overlaps whatever comes after it, unless the
    /// election has stopped).
    pub fn intervals(&self) -> Vec<Interval> {
        let mut list = lock(&self.intervals).clone();
        let recorders = lock(&self.recorders);
        for i in list.iter_mut().filter(|i| i.lost_at.is_none()) {
            if let Some((election, _)) = recorders.iter().find(|(e, _)| e.member_id() == i.member) {
                i.deadline = election.deadline();
            }
        }
        list
    }

    /// Every violation: the checker's, and any recorder that lagged.
    pub fn violations(&self) -> Vec<Violation> {
        let mut violations = lock(&self.lagged).clone();
        violations.extend(check(&self.intervals()));
        violations
    }

    /// Panics with the violations, if any.
    pub fn assert_safe(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "term violations: {violations:#?}\nin timeline {:#?}",
            self.intervals()
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn interval(token: u64, start: u64, end: u64) -> Interval {
        let base = Instant::now();
        Interval {
            member: format!("m{token}"),
            token,
            start: base + Duration::from_millis(start),
            lost_at: Some(base + Duration::from_millis(end)),
            deadline: Some(base + Duration::from_millis(end + 10)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_checker_finds_overlaps_and_token_reuse() {
        assert!(check(&[interval(1, 0, 100), interval(2, 101, 200)]).is_empty());
        // Ending in the same instant the next term starts is an overlap: strictly before.
        assert!(matches!(
            check(&[interval(1, 0, 100), interval(2, 100, 200)])[..],
            [Violation::Overlap { .. }]
        ));
        assert!(matches!(
            check(&[interval(1, 0, 100), interval(2, 99, 200)])[..],
            [Violation::Overlap { .. }]
        ));
        assert!(matches!(
            check(&[interval(2, 0, 100), interval(1, 150, 200)])[..],
            [Violation::TokenWentBack { .. }]
        ));
        assert!(matches!(
            check(&[interval(2, 0, 100), interval(2, 150, 200)])[..],
            [Violation::DuplicateToken(2)]
        ));
        let mut late = interval(1, 0, 100);
        late.deadline = Some(late.start + Duration::from_millis(50));
        assert!(matches!(check(&[late])[..], [Violation::LateLoss(_)]));
    }
}
