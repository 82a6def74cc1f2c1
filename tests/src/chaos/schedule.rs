//! The seeded fault scheduler: a run's faults (kinds, targets, moments, durations) are drawn
//! from one seed, printed at the start, and drawn again identically from the same seed.
//!
//! What a seed replays is the *plan*: the same faults, aimed the same way, at the same offsets
//! from the start of each run. The interleaving of the processes' threads is not replayable (no
//! test of real processes can make it so), so a failure found under a seed shows up again under
//! it with high probability rather than certainty; a run that failed keeps every record, so the
//! failure can be judged from them as well.
//!
//! Set `HEDGE_CHAOS_SEED=<n>` to replay a seed; without it a fresh one is drawn.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The variable that fixes the seed.
pub const ENV_SEED: &str = "HEDGE_CHAOS_SEED";

/// The kinds of fault a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a member at a random moment; it is started again (a new incarnation) later.
    Crash,
    /// SIGKILL the leader while its link to Spanner is slow, so that a renewal is most likely
    /// in flight.
    CrashDuringRenew,
    /// SIGKILL the leader, then SIGKILL a follower around the moment the lock falls free, when
    /// the followers are acquiring it.
    CrashDuringAcquire,
    /// SIGSTOP a member for 0.5 to 3 leases, then SIGCONT.
    Pause,
    /// Add latency to a member's link to Spanner.
    SpannerLatency,
    /// Cut a member off from Spanner (both directions stall).
    SpannerCut,
    /// Let a member's requests reach Spanner but not the replies (commits whose outcome the
    /// member never learns).
    SpannerReplyLoss,
    /// Reset a member's connections to Spanner, and refuse new ones for a while.
    SpannerReset,
    /// Cut a member off from its peers: every connection to its peer port stalls.
    PeerCut,
    /// Add latency to the connections to a member's peer port.
    PeerLatency,
    /// The emulator aborts transactions at random (`--enable_fault_injection`) for the whole
    /// run: counted once per run.
    AbortedTransactions,
}

impl FaultKind {
    /// Every kind injected during a run (the aborting emulator is chosen per run).
    pub const IN_RUN: [FaultKind; 10] = [
        FaultKind::Crash,
        FaultKind::CrashDuringRenew,
        FaultKind::CrashDuringAcquire,
        FaultKind::Pause,
        FaultKind::SpannerLatency,
        FaultKind::SpannerCut,
        FaultKind::SpannerReplyLoss,
        FaultKind::SpannerReset,
        FaultKind::PeerCut,
        FaultKind::PeerLatency,
    ];

    /// The kind's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::CrashDuringRenew => "crash_during_renew",
            FaultKind::CrashDuringAcquire => "crash_during_acquire",
            FaultKind::Pause => "pause",
            FaultKind::SpannerLatency => "spanner_latency",
            FaultKind::SpannerCut => "spanner_cut",
            FaultKind::SpannerReplyLoss => "spanner_reply_loss",
            FaultKind::SpannerReset => "spanner_reset",
            FaultKind::PeerCut => "peer_cut",
            FaultKind::PeerLatency => "peer_latency",
            FaultKind::AbortedTransactions => "aborted_transactions",
        }
    }

    /// Whether the fault takes the member down for good (it is started again afterwards).
    pub fn kills(self) -> bool {
        matches!(
            self,
            FaultKind::Crash | FaultKind::CrashDuringRenew | FaultKind::CrashDuringAcquire
        )
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The member that leads when the fault begins (or member `fallback` if none does).
    Leader {
        /// The member hit when nobody leads.
        fallback: usize,
    },
    /// Member `index`.
    Member(usize),
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedFault {
    /// When it begins, after the run's first leader was elected.
    pub at: Duration,
    /// The kind.
    pub kind: FaultKind,
    /// Whom it hits.
    pub target: Target,
    /// How long it lasts (for a crash: how long the member stays down).
    pub duration: Duration,
    /// The latency, for the latency faults.
    pub latency: Duration,
    /// For [`FaultKind::CrashDuringAcquire`]: the follower killed second, as an offset from
    /// the leader's own index (1 or 2 members on).
    pub second_offset: usize,
    /// For the crashes: how far into the renew cycle (0..1) the kill lands.
    pub phase: f64,
}

/// The plan of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunPlan {
    /// The run's own seed (derived from the profile's seed and the run's index).
    pub seed: u64,
    /// Whether the emulator aborts transactions at random in this run.
    pub aborting_emulator: bool,
    /// The faults, in order.
    pub faults: Vec<PlannedFault>,
}

/// The shape of a chaos profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    /// The profile's name (`short`, `long`, `ci`).
    pub name: String,
    /// The seed every run's plan is drawn from.
    pub seed: u64,
    /// How many runs (each with a fresh emulator, database and members).
    pub runs: u32,
    /// Members per run.
    pub members: usize,
    /// The election lease.
    pub lease: Duration,
    /// Faults per run.
    pub faults_per_run: usize,
    /// Quiet time after each fault has healed, before the next begins (in leases).
    pub settle_leases: f64,
    /// One run in this many uses the aborting emulator (0: none).
    pub aborting_every: u32,
}

impl Profile {
    /// The CI profile: one run, every kind once, about two minutes.
    pub fn ci(seed: u64) -> Self {
        Self {
            name: "ci".into(),
            seed,
            runs: 1,
            members: 3,
            lease: Duration::from_secs(2),
            faults_per_run: FaultKind::IN_RUN.len(),
            settle_leases: 1.0,
            aborting_every: 1,
        }
    }

    /// The short benchmark profile: two runs (one with the aborting emulator), every kind in
    /// each, a few minutes.
    pub fn short(seed: u64) -> Self {
        Self {
            name: "short".into(),
            runs: 2,
            aborting_every: 2,
            ..Self::ci(seed)
        }
    }

    /// The long profile: `runs` runs of 30 faults each.
    pub fn long(seed: u64, runs: u32) -> Self {
        Self {
            name: "long".into(),
            runs,
            faults_per_run: 30,
            aborting_every: 2,
            ..Self::ci(seed)
        }
    }

    /// The plan of run `index`.
    pub fn plan(&self, index: u32) -> RunPlan {
        let seed = run_seed(self.seed, index);
        let mut rng = StdRng::seed_from_u64(seed);
        let aborting_emulator =
            self.aborting_every > 0 && (index + 1).is_multiple_of(self.aborting_every);
        // Every kind appears once per round, in an order of the seed's choosing, so a profile
        // with as many faults per run as kinds injects them all.
        let mut kinds = Vec::with_capacity(self.faults_per_run);
        while kinds.len() < self.faults_per_run {
            let mut round = FaultKind::IN_RUN.to_vec();
            round.shuffle(&mut rng);
            kinds.extend(round);
        }
        kinds.truncate(self.faults_per_run);
        let lease = self.lease;
        let scale = |lo: f64, hi: f64, rng: &mut StdRng| lease.mul_f64(rng.random_range(lo..hi));
        let mut at = Duration::ZERO;
        let mut faults = Vec::with_capacity(kinds.len());
        for kind in kinds {
            // Most faults aim at the leader, where they hurt; a quarter at any member.
            let member = rng.random_range(0..self.members);
            let target = if kind == FaultKind::CrashDuringRenew
                || kind == FaultKind::CrashDuringAcquire
                || rng.random_bool(0.75)
            {
                Target::Leader { fallback: member }
            } else {
                Target::Member(member)
            };
            let (duration, latency) = match kind {
                FaultKind::Crash | FaultKind::CrashDuringRenew | FaultKind::CrashDuringAcquire => {
                    (scale(0.5, 1.5, &mut rng), Duration::ZERO)
                }
                FaultKind::Pause => (scale(0.5, 3.0, &mut rng), Duration::ZERO),
                FaultKind::SpannerLatency => (
                    scale(1.0, 3.0, &mut rng),
                    Duration::from_millis(rng.random_range(50..400)),
                ),
                FaultKind::PeerLatency => (
                    scale(1.0, 3.0, &mut rng),
                    Duration::from_millis(rng.random_range(20..300)),
                ),
                FaultKind::SpannerCut
                | FaultKind::SpannerReplyLoss
                | FaultKind::SpannerReset
                | FaultKind::PeerCut => (scale(0.5, 3.0, &mut rng), Duration::ZERO),
                FaultKind::AbortedTransactions => (Duration::ZERO, Duration::ZERO),
            };
            let latency = if kind == FaultKind::CrashDuringRenew {
                Duration::from_millis(rng.random_range(100..250))
            } else {
                latency
            };
            let second_offset = rng.random_range(1..self.members.max(2));
            let phase = rng.random_range(0.0..1.0);
            // The gap before this fault: a settle time, plus up to a lease of jitter.
            at += scale(self.settle_leases, self.settle_leases + 1.0, &mut rng);
            faults.push(PlannedFault {
                at,
                kind,
                target,
                duration,
                latency,
                second_offset,
                phase,
            });
            // The next fault is planned after this one has healed (crashes heal when the
            // member is started again; the acquire crash takes up to two leases more).
            at += duration + lease.mul_f64(if kind.kills() { 2.0 } else { 0.5 });
        }
        RunPlan {
            seed,
            aborting_emulator,
            faults,
        }
    }
}

/// The seed to use: `HEDGE_CHAOS_SEED` when set (an error if it is not a number), otherwise a
/// fresh one.
pub fn seed_from_env() -> Result<u64, String> {
    match std::env::var(ENV_SEED) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{ENV_SEED}={v:?} is not a number")),
        _ => Ok(rand::rng().random()),
    }
}

/// Run `index`'s seed, from the profile's (splitmix64: well spread, and stable).
pub fn run_seed(seed: u64, index: u32) -> u64 {
    let mut z = seed.wrapping_add(u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_plan_again_and_another_seed_another() {
        let profile = Profile::short(42);
        assert_eq!(profile.plan(0), profile.plan(0));
        assert_ne!(profile.plan(0), profile.plan(1));
        assert_ne!(Profile::short(43).plan(0), profile.plan(0));
    }

    #[test]
    fn every_kind_appears_in_a_run_as_long_as_the_kinds() {
        for seed in 0..20 {
            let plan = Profile::ci(seed).plan(0);
            let mut kinds: Vec<FaultKind> = plan.faults.iter().map(|f| f.kind).collect();
            kinds.sort();
            let mut all = FaultKind::IN_RUN.to_vec();
            all.sort();
            assert_eq!(kinds, all);
        }
    }

    #[test]
    fn faults_follow_each_other_and_stay_within_their_bounds() {
        let profile = Profile::long(7, 3);
        let lease = profile.lease;
        for index in 0..profile.runs {
            let plan = profile.plan(index);
            assert_eq!(plan.aborting_emulator, index % 2 == 1);
            let mut end = Duration::ZERO;
            for f in &plan.faults {
                assert!(f.at > end, "{f:?} begins before the previous fault healed");
                end = f.at + f.duration;
                if f.kind == FaultKind::Pause {
                    assert!(f.duration >= lease / 2 && f.duration <= lease * 3, "{f:?}");
                }
                assert!((1..profile.members).contains(&f.second_offset));
                assert!((0.0..1.0).contains(&f.phase));
            }
        }
    }
}
