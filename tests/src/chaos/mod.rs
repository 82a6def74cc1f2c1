//! The chaos harness: real member processes on the Spanner emulator, faults injected at random
//! under a printed, replayable seed, and checkers over what every process recorded.
//!
//! * [`proxy`]: a fault-injecting TCP proxy (latency, cut, one-way cut, reset), placed between
//!   each member and the emulator and in front of each member's peer port.
//! * [`process`]: member processes started, signalled (SIGKILL, SIGSTOP, SIGCONT, SIGTERM) and
//!   reaped by PID, every wait bounded.
//! * [`program`]: finding (and building) the member program.
//! * [`schedule`]: the seeded plan of each run (which faults, whom, when, how long).
//! * [`record`]: what the members and the harness record, on `CLOCK_MONOTONIC`.
//! * [`check`]: the checkers (leadership, acting after a term, the fenced register, semaphores,
//!   the log, messaging), pure functions of a run's [`check::History`].
//! * [`cluster`]: one run from start to report ([`cluster::run`]), and a profile of runs
//!   ([`cluster::run_profile`]).
//!
//! The members are `hedge-demo member` processes with the chaos workload on
//! (`HEDGE_DEMO_WORKLOAD=chaos`, see `demo/src/chaos.rs`). `RELIABILITY.md` at the root of
//! the repository describes the method and records the results.

pub mod check;
pub mod cluster;
pub mod process;
pub mod program;
pub mod proxy;
pub mod record;
pub mod schedule;

pub use check::{History, Violation};
pub use cluster::{ChaosError, ProfileReport, RunReport, run, run_profile};
pub use program::member_program;
pub use proxy::{Direction, LinkFault, Proxy};
pub use schedule::{FaultKind, Profile};

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the host (it is the clock
/// `std::time::Instant` and tokio read on Linux), so the members' records and the harness's
/// can be compared directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
