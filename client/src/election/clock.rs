//! The holder's local deadline, readable without locks: what [`crate::Election::is_leader`]
//! checks.
//!
//! # Two clocks
//!
//! The deadline is kept on two clocks, and the term is over when either says so:
//!
//! * tokio's clock (`CLOCK_MONOTONIC`), which the election's timers use and tests can pause;
//! * on Linux, `CLOCK_BOOTTIME`, which also counts the time the machine (or VM) was suspended.
//!
//! `CLOCK_MONOTONIC` stops during a suspend. After a resume, a deadline kept on it alone would
//! still lie ahead while Spanner's clock, which never stopped, has long expired the lease and
//! another member leads. `CLOCK_BOOTTIME` sees the suspended time, so `is_leader()` turns false
//! at the real deadline. Elsewhere the second clock is the standard library's monotonic clock
//! (macOS's does not count sleep either: a suspended Mac can lead past its deadline; hedge is
//! meant for Linux pods).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Nanoseconds on the clock that counts suspended time.
pub(crate) type BootClock = fn() -> u64;

/// `CLOCK_BOOTTIME` in nanoseconds (Linux); the standard monotonic clock elsewhere.
pub(crate) fn boot_nanos() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux
        // since 2.6.39 and the call cannot fail with these arguments.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc == 0 {
            let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
            return secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        }
    }
    fallback_nanos()
}

fn fallback_nanos() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The token of the term this member leads and its deadline on both clocks.
#[derive(Debug)]
pub(crate) struct LeaderClock {
    /// The origin of `deadline_mono`.
    origin: Instant,
    boot: BootClock,
    /// The token of the term this member leads, 0 when it leads none.
    token: AtomicU64,
    /// The deadline in nanoseconds after `origin` on tokio's clock.
    deadline_mono: AtomicU64,
    /// The deadline on the boot clock.
    deadline_boot: AtomicU64,
    /// The last deadline set (kept after the term ends, for reports).
    last_deadline_mono: AtomicU64,
}

impl LeaderClock {
    pub(crate) fn new(boot: BootClock) -> Self {
        Self {
            origin: Instant::now(),
            boot,
            token: AtomicU64::new(0),
            deadline_mono: AtomicU64::new(0),
            deadline_boot: AtomicU64::new(0),
            last_deadline_mono: AtomicU64::new(0),
        }
    }

    fn mono_nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts leading term `token` until `deadline`.
    pub(crate) fn lead(&self, token: u64, deadline: Instant) {
        // Deadline first, then the token: a reader that sees the token sees its deadline.
        self.set_deadline(deadline);
        self.token.store(token, Ordering::Release);
    }

    /// Moves the deadline (a successful renewal).
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        let now = Instant::now();
        let boot_now = (self.boot)();
        let remaining = deadline.saturating_duration_since(now);
        let boot_deadline =
            boot_now.saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX));
        let mono = self.mono_nanos(deadline);
        self.deadline_boot.store(boot_deadline, Ordering::Release);
        self.deadline_mono.store(mono, Ordering::Release);
        self.last_deadline_mono.store(mono, Ordering::Release);
    }

    /// Stops leading.
    pub(crate) fn clear(&self) {
        self.token.store(0, Ordering::Release);
    }

    /// The token of the term this member leads now: set, and before its deadline on both
    /// clocks.
    pub(crate) fn token(&self) -> Option<u64> {
        let token = self.token.load(Ordering::Acquire);
        if token == 0 {
            return None;
        }
        let mono_ok = self.mono_nanos(Instant::now()) < self.deadline_mono.load(Ordering::Acquire);
        (mono_ok && !self.boot_expired()).then_some(token)
    }

    /// Whether the boot clock (which counts suspended time) is past the deadline.
    pub(crate) fn boot_expired(&self) -> bool {
        (self.boot)() >= self.deadline_boot.load(Ordering::Acquire)
    }

    /// The last deadline set, if any.
    pub(crate) fn last_deadline(&self) -> Option<Instant> {
        let nanos = self.last_deadline_mono.load(Ordering::Acquire);
        (nanos > 0).then(|| self.origin + std::time::Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    static FAKE_BOOT: AtomicU64 = AtomicU64::new(1_000_000_000);

    fn fake_boot() -> u64 {
        FAKE_BOOT.load(Ordering::SeqCst)
    }

    #[test]
    fn the_boot_clock_is_a_real_clock() {
        let a = boot_nanos();
        std::thread::sleep(Duration::from_millis(2));
        let b = boot_nanos();
        assert!(b > a && b - a >= 2_000_000, "{a} then {b}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_ends_the_term_although_the_monotonic_clock_stood_still() {
        let clock = LeaderClock::new(fake_boot);
        clock.lead(7, Instant::now() + Duration::from_secs(4));
        assert_eq!(clock.token(), Some(7));
        // The machine sleeps for 10 s: CLOCK_MONOTONIC (tokio's clock) does not move,
        // CLOCK_BOOTTIME does.
        FAKE_BOOT.fetch_add(10_000_000_000, Ordering::SeqCst);
        assert_eq!(
            clock.token(),
            None,
            "leading after a suspend past the deadline"
        );
        assert!(clock.boot_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn the_monotonic_deadline_still_counts() {
        let clock = LeaderClock::new(boot_nanos);
        clock.lead(3, Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(clock.token(), Some(3));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(clock.token(), None);
        clock.clear();
        assert_eq!(clock.token(), None);
        assert!(clock.last_deadline().is_some());
    }
}
