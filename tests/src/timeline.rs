//! A term-overlap checker (after kubernetes#67651): every member's terms are recorded as
//! (token, start, end, deadline) intervals, and the checker verifies that tokens are unique and
//! strictly increasing in grant order, and that no term began before the previous one ended.

use std::sync::{Arc, Mutex};

use hedge::{Election, LeadershipEvent};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One term as observed from outside the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The member.
    pub member: String,
    /// The fencing token.
    pub token: u64,
    /// When `is_leader()` became true.
    pub start: Instant,
    /// When the member stepped down (`is_leader()` turned false), if it did.
    pub lost_at: Option<Instant>,
    /// The term's last local deadline: `is_leader()` is false from here on whatever happens.
    pub deadline: Option<Instant>,
}

impl Interval {
    /// When the member stopped leading at the latest: the `Lost` event or the deadline,
    /// whichever came first.
    pub fn end(&self) -> Option<Instant> {
        match (self.lost_at, self.deadline) {
            (Some(l), Some(d)) => Some(l.min(d)),
            (l, d) => l.or(d),
        }
    }
}

/// What the checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
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
        previous: Interval,
        /// The next term.
        next: Interval,
    },
    /// A member signalled `Lost` after its own deadline.
    LateLoss(Interval),
}

/// Checks a set of intervals; an empty list means no violation.
pub fn check(intervals: &[Interval]) -> Vec<Violation> {
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
        // A term that never ended (still leading, and no deadline known) overlaps anything after.
        if previous.end().is_none_or(|end| end > next.start) {
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
        let watched = election.clone();
        let member = election.member_id().to_owned();
        let task = tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let mut list = intervals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match event {
                    LeadershipEvent::Elected { token, since } => list.push(Interval {
                        member: member.clone(),
                        token,
                        start: since,
                        lost_at: None,
                        deadline: None,
                    }),
                    LeadershipEvent::Lost { token, at, .. } => {
                        if let Some(i) = list
                            .iter_mut()
                            .rev()
                            .find(|i| i.member == member && i.token == token)
                        {
                            i.lost_at = Some(at);
                            i.deadline = watched.deadline();
                        }
                    }
                    _ => {}
                }
            }
        });
        self.recorders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((election.clone(), task));
    }

    /// The intervals so far; terms without a `Lost` get their election's current deadline.
    pub fn intervals(&self) -> Vec<Interval> {
        let mut list = self
            .intervals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let recorders = self
            .recorders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for i in list.iter_mut().filter(|i| i.lost_at.is_none()) {
            if let Some((election, _)) = recorders.iter().find(|(e, _)| e.member_id() == i.member) {
                i.deadline = election.deadline();
            }
        }
        list
    }

    /// Panics with the violations, if any.
    pub fn assert_safe(&self) {
        let intervals = self.intervals();
        let violations = check(&intervals);
        assert!(
            violations.is_empty(),
            "term violations: {violations:#?}\nin timeline {intervals:#?}"
        );
    }
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
        assert!(check(&[interval(1, 0, 100), interval(2, 100, 200)]).is_empty());
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
