//! A checker over the timeline of held permits: every permit is recorded as the interval from
//! the moment its acquire returned to the moment its release was asked for, and the checker
//! finds the most permits held at any one instant.
//!
//! A recorded interval lies inside the permit's real one (from the grant's commit to the
//! release's commit), so more recorded permits at once than the limit proves the limit was
//! broken. Intervals are half-open: a permit released at `t` and another acquired at `t` do not
//! overlap (the release committed before the grant could count the slot free).

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// One permit as the holder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Who held it.
    pub holder: String,
    /// The permit's token.
    pub token: u64,
    /// When its acquire returned.
    pub start: Instant,
    /// When its release was asked for.
    pub end: Instant,
}

/// The permits held during a scenario, shared by its tasks.
#[derive(Clone, Debug, Default)]
pub struct PermitTimeline {
    held: Arc<Mutex<Vec<Held>>>,
}

impl PermitTimeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one permit.
    pub fn record(&self, held: Held) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(held);
    }

    /// Every permit recorded.
    pub fn held(&self) -> Vec<Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The most permits held at one instant.
    pub fn max_overlap(&self) -> usize {
        max_overlap(&self.held())
    }
}

/// The most intervals that contain one instant (half-open intervals).
pub fn max_overlap(held: &[Held]) -> usize {
    // At equal instants, ends come before starts.
    let mut events: Vec<(Instant, i32)> = held
        .iter()
        .flat_map(|h| [(h.start, 1), (h.end, -1)])
        .collect();
    events.sort_by_key(|(at, delta)| (*at, *delta));
    let mut now = 0i32;
    let mut most = 0i32;
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn overlap_counts_half_open_intervals() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let held = |start: u64, end: u64| Held {
            holder: "h".into(),
            token: start,
            start: at(start),
            end: at(end),
        };
        assert_eq!(max_overlap(&[]), 0);
        assert_eq!(max_overlap(&[held(0, 10), held(10, 20)]), 1);
        assert_eq!(max_overlap(&[held(0, 10), held(5, 20), held(9, 11)]), 3);
        assert_eq!(max_overlap(&[held(0, 10), held(10, 20), held(5, 15)]), 2);
    }
}
