//! One chaos run from start to report, and a profile of runs.
//!
//! A run:
//!
//! 1. draws its plan from the profile's seed and prints it;
//! 2. starts a private emulator (with `--enable_fault_injection` in the runs the plan says),
//!    a database with hedge's schema, and for each member two [`Proxy`]s: one in front of the
//!    emulator's gRPC port (the member's `SPANNER_EMULATOR_HOST`) and one in front of the
//!    member's peer port (the address it advertises, so every peer reaches it through it);
//! 3. starts the members (`hedge-demo member` with the chaos workload) and waits for a leader;
//! 4. injects the planned faults one after the other, each healed before the next (a crashed
//!    member is started again as a new process with the same id, as a restarted container is);
//! 5. heals everything, waits for a leader (liveness), stops every member with SIGTERM (SIGKILL
//!    after a grace), reads the final state of the register and the log from the emulator;
//! 6. runs the checkers over every record, and reports.
//!
//! Every wait is bounded, and everything started is stopped: the members by PID (and by
//! `kill_on_drop` if the run is abandoned), the proxies and the emulator when dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hedge::store::{LogQuery, Store};
use hedge::{DatabasePath, ElectionTimings};
use serde::Serialize;
use tokio::time::{Instant, sleep, sleep_until};

use super::check::{self, History, Violation};
use super::mono_ns;
use super::process::{MemberProcess, ProcessError, Spec, State};
use super::proxy::{Direction, LinkFault, Proxy, ProxyError};
use super::record::{FaultEvent, LOG_PREFIX, ProcessLife, REGISTER_KEY, Record, SEMAPHORE_LIMIT};
use super::schedule::{FaultKind, PlannedFault, Profile, RunPlan, Target};
use crate::emulator::{Emulator, HarnessError};

/// The group of every run.
pub const GROUP: &str = "chaos";

/// How long a run waits for its first leader.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a member has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// Errors that stop a run (as opposed to violations, which a run reports).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// No emulator could be found or started.
    #[error("the chaos run needs the Cloud Spanner emulator: {0}")]
    Emulator(String),
    /// The emulator harness failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A proxy could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A member could not be started or signalled.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// No free port for a member.
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    /// The members elected no leader at the start.
    #[error("no leader within {0:?} of starting the members; their last lines:\n{1}")]
    NoFirstLeader(Duration, String),
    /// The member program cannot be found.
    #[error(transparent)]
    Program(#[from] super::program::ProgramError),
    /// The final state could not be read.
    #[error("cannot read the final state: {0}")]
    FinalState(String),
}

/// What the workload did, counted from the records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadCounts {
    /// Leader actions (register updates begun).
    pub acts: u64,
    /// Acknowledged register updates.
    pub register_writes: u64,
    /// Register updates refused by their fence.
    pub register_fenced: u64,
    /// Acknowledged log puts.
    pub puts: u64,
    /// Permits granted.
    pub permits: u64,
    /// Sends acknowledged.
    pub sends_ok: u64,
    /// Sends whose outcome the caller could not know.
    pub sends_unknown: u64,
    /// Sends known not to have run.
    pub sends_failed: u64,
    /// Send handlers that ran to the end.
    pub handlers_completed: u64,
}

/// The report of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The run's index in its profile.
    pub index: u32,
    /// The run's seed.
    pub seed: u64,
    /// Whether the emulator aborted transactions at random.
    pub aborting_emulator: bool,
    /// How long the run took.
    pub duration_s: f64,
    /// The faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Every fault, as injected.
    pub fault_events: Vec<FaultEvent>,
    /// Terms granted (the first election included).
    pub terms: u64,
    /// Terms granted after the first.
    pub leader_changes: u64,
    /// For each fault that hit the leader and was followed by another member's term: the time
    /// from the fault to the next term's start, by kind.
    pub failover_ms: BTreeMap<String, Vec<f64>>,
    /// Terms whose process was paused past their deadline (the stale-leader check's cases).
    pub paused_past_deadline: u64,
    /// The violations found.
    pub violations: Vec<Violation>,
    /// What the workload did.
    pub workload: WorkloadCounts,
    /// Problems of the run that are not safety violations: a member that exited by itself, no
    /// leader after the faults, unreadable output.
    pub problems: Vec<String>,
}

/// The report of a profile.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileReport {
    /// The profile.
    pub profile: Profile,
    /// Every run that ran to its end.
    pub runs: Vec<RunReport>,
    /// The runs that stopped on an error of the harness after they had started (`seed: error`);
    /// the other runs are kept.
    pub failed_runs: Vec<String>,
}

impl ProfileReport {
    /// Faults injected by kind over every run (`aborted_transactions` counts the runs with the
    /// aborting emulator).
    pub fn faults(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for run in &self.runs {
            for (kind, n) in &run.faults {
                *all.entry(kind.clone()).or_default() += n;
            }
        }
        all
    }

    /// Leader changes over every run.
    pub fn leader_changes(&self) -> u64 {
        self.runs.iter().map(|r| r.leader_changes).sum()
    }

    /// Every violation of every run.
    pub fn violations(&self) -> Vec<&Violation> {
        self.runs.iter().flat_map(|r| &r.violations).collect()
    }

    /// Every problem of every run, prefixed with the run's seed.
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(move |p| format!("seed {}: {p}", r.seed))
            })
            .chain(self.failed_runs.iter().map(|f| format!("run stopped: {f}")))
            .collect()
    }

    /// Failover samples (ms) by fault kind, over every run.
    pub fn failover_ms(&self) -> BTreeMap<String, Vec<f64>> {
        let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in &self.runs {
            for (kind, samples) in &run.failover_ms {
                all.entry(kind.clone())
                    .or_default()
                    .extend(samples.iter().copied());
            }
        }
        all
    }

    /// Terms paused past their deadline, over every run.
    pub fn paused_past_deadline(&self) -> u64 {
        self.runs.iter().map(|r| r.paused_past_deadline).sum()
    }

    /// What the workload did, over every run.
    pub fn workload(&self) -> WorkloadCounts {
        let mut all = WorkloadCounts::default();
        for r in &self.runs {
            let w = &r.workload;
            all.acts += w.acts;
            all.register_writes += w.register_writes;
            all.register_fenced += w.register_fenced;
            all.puts += w.puts;
            all.permits += w.permits;
            all.sends_ok += w.sends_ok;
            all.sends_unknown += w.sends_unknown;
            all.sends_failed += w.sends_failed;
            all.handlers_completed += w.handlers_completed;
        }
        all
    }
}

/// Runs every run of `profile` with the member program `program` (`hedge-demo`), calling
/// `progress` after each.
pub async fn run_profile(
    profile: &Profile,
    program: &Path,
    mut progress: impl FnMut(&RunReport),
) -> Result<ProfileReport, ChaosError> {
    let mut runs = Vec::new();
    let mut failed_runs = Vec::new();
    for index in 0..profile.runs {
        match run(profile, index, program).await {
            Ok(report) => {
                progress(&report);
                runs.push(report);
            }
            // A run that started and then failed is reported; the others still count.
            Err(
                e @ (ChaosError::Process(_)
                | ChaosError::NoFirstLeader(..)
                | ChaosError::FinalState(_)),
            ) => {
                let seed = profile.plan(index).seed;
                eprintln!("chaos: run {index} (seed {seed}) stopped: {e}");
                failed_runs.push(format!("run {index} (seed {seed}): {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ProfileReport {
        profile: profile.clone(),
        runs,
        failed_runs,
    })
}

/// One member's place in the run: how it is started, its proxies, its current process.
struct Slot {
    spec: Spec,
    spanner: Proxy,
    peer: Proxy,
    /// Index into `Run::processes` of the member's current process.
    current: usize,
}

/// A run in progress.
struct Running {
    timings: ElectionTimings,
    slots: Vec<Slot>,
    processes: Vec<MemberProcess>,
    lives: Vec<ProcessLife>,
    events: Vec<FaultEvent>,
    problems: Vec<String>,
}

/// Runs run `index` of `profile`.
pub async fn run(profile: &Profile, index: u32, program: &Path) -> Result<RunReport, ChaosError> {
    let began = Instant::now();
    let plan = profile.plan(index);
    eprintln!(
        "chaos: profile {} run {index}: seed {} (replay the profile: {}={}){}",
        profile.name,
        plan.seed,
        super::schedule::ENV_SEED,
        profile.seed,
        if plan.aborting_emulator {
            ", emulator aborting transactions"
        } else {
            ""
        }
    );
    let emulator = Emulator::start(plan.aborting_emulator)
        .await?
        .ok_or_else(|| ChaosError::Emulator("none found (see the skip line above)".into()))?;
    let db = emulator.create_database_with_schema_default().await?;
    let grpc: SocketAddr = emulator
        .grpc_host()
        .parse()
        .map_err(|e| ChaosError::Emulator(format!("gRPC address {}: {e}", emulator.grpc_host())))?;
    let timings = ElectionTimings::from_lease(profile.lease);
    let secret = format!("{:032x}", rand::random::<u128>());
    let mut slots = Vec::with_capacity(profile.members);
    for i in 0..profile.members {
        let peer_port = free_port()?;
        let spanner = Proxy::start(grpc).await?;
        let peer = Proxy::start(SocketAddr::from(([127, 0, 0, 1], peer_port))).await?;
        let spec = member_spec(
            program,
            &format!("m{i}"),
            &db.to_string(),
            &spanner,
            &peer,
            peer_port,
            &secret,
            &timings,
        );
        slots.push(Slot {
            spec,
            spanner,
            peer,
            current: usize::MAX,
        });
    }
    let mut running = Running {
        timings,
        slots,
        processes: Vec::new(),
        lives: Vec::new(),
        events: Vec::new(),
        problems: Vec::new(),
    };
    let outcome = running.drive(&plan).await;
    // Whatever happened, every member is stopped before anything else.
    running.stop_all().await;
    if let Err(e) = outcome {
        eprintln!(
            "chaos: seed {} stopped: {e}; the members' last lines:",
            plan.seed
        );
        for p in &running.processes {
            eprintln!("--- {} (pid {}):\n{}", p.id(), p.pid(), p.text_tail(20));
        }
        for problem in &running.problems {
            eprintln!("  problem: {problem}");
        }
        return Err(e);
    }
    let (register, log) = match final_state(&emulator, &db).await {
        Ok(state) => state,
        Err(e) => {
            drop(running.slots);
            return Err(e);
        }
    };
    let history = History {
        records: running
            .processes
            .iter()
            .flat_map(MemberProcess::records)
            .collect(),
        lives: running.lives.clone(),
        register: Some(register),
        log: Some(log),
        semaphore_limit: Some(SEMAPHORE_LIMIT),
    };
    for p in &running.processes {
        let malformed = p.with_output(|o| o.malformed);
        if malformed > 0 {
            running.problems.push(format!(
                "{} (pid {}) printed {malformed} unreadable record lines",
                p.id(),
                p.pid()
            ));
        }
    }
    let violations = check::check(&history);
    let terms = check::terms(&history);
    let report = RunReport {
        index,
        seed: plan.seed,
        aborting_emulator: plan.aborting_emulator,
        duration_s: began.elapsed().as_secs_f64(),
        faults: count_faults(&running.events, plan.aborting_emulator),
        failover_ms: failovers(&running.events, &history, profile.lease),
        terms: terms.len() as u64,
        leader_changes: (terms.len() as u64).saturating_sub(1),
        paused_past_deadline: terms.values().filter(|t| t.paused_past_deadline).count() as u64,
        workload: count_workload(&history),
        fault_events: running.events,
        violations,
        problems: running.problems,
    };
    if !report.violations.is_empty() {
        eprintln!(
            "chaos: seed {} found {} violations; the records:",
            plan.seed,
            report.violations.len()
        );
        for v in &report.violations {
            eprintln!("  violation: {v}");
        }
        dump_records(&history);
    }
    drop(running.slots);
    drop(emulator);
    Ok(report)
}

impl Running {
    /// Starts the members, waits for a leader, injects the plan, heals, checks liveness.
    async fn drive(&mut self, plan: &RunPlan) -> Result<(), ChaosError> {
        for slot in 0..self.slots.len() {
            self.start(slot)?;
        }
        let first = Instant::now();
        while self.leader().is_none() {
            if first.elapsed() > FIRST_LEADER_TIMEOUT {
                let tails = self
                    .processes
                    .iter()
                    .map(|p| format!("--- {}:\n{}", p.id(), p.text_tail(20)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ChaosError::NoFirstLeader(FIRST_LEADER_TIMEOUT, tails));
            }
            sleep(Duration::from_millis(20)).await;
        }
        let origin = Instant::now();
        for fault in &plan.faults {
            sleep_until(origin + fault.at).await;
            // A member that exited by itself is a problem of the run (noted with its last
            // lines); it is started again, as Kubernetes would, and the run goes on.
            self.notice_exits();
            self.restart_ended()?;
            match self.inject(fault).await {
                Ok(()) => {}
                Err(ChaosError::Process(ProcessError::NotRunning(id))) => {
                    self.notice_exits();
                    self.problems.push(format!(
                        "{id} was not running when the {} fault reached it",
                        fault.kind
                    ));
                    self.restart_ended()?;
                }
                Err(e) => return Err(e),
            }
        }
        // Liveness: with every fault healed, some member leads again within a few leases.
        let lease = self.timings.lease;
        let settle = Instant::now();
        let bound = lease * 4 + Duration::from_secs(5);
        while self.leader().is_none() {
            if settle.elapsed() > bound {
                self.problems
                    .push(format!("no leader within {bound:?} after the last fault"));
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        // Let the workload run a little under the last leader.
        sleep(lease / 2).await;
        self.notice_exits();
        Ok(())
    }

    fn start(&mut self, slot: usize) -> Result<(), ChaosError> {
        let process = MemberProcess::spawn(self.slots[slot].spec.clone())?;
        self.lives.push(ProcessLife {
            member: process.id().to_owned(),
            pid: process.pid(),
            started: process.started_at(),
            ended: None,
            killed: false,
            pauses: Vec::new(),
        });
        self.slots[slot].current = self.processes.len();
        self.processes.push(process);
        Ok(())
    }

    /// Starts again every member whose current process has ended (between faults, only one
    /// that exited by itself has).
    fn restart_ended(&mut self) -> Result<(), ChaosError> {
        for slot in 0..self.slots.len() {
            let index = self.slots[slot].current;
            if matches!(self.processes[index].state(), State::Exited { .. }) {
                self.start(slot)?;
            }
        }
        Ok(())
    }

    /// Notes members that exited by themselves (a problem: only the harness ends them).
    fn notice_exits(&mut self) {
        for slot in &self.slots {
            let index = slot.current;
            let process = &mut self.processes[index];
            if process.state() == State::Running
                && let State::Exited { at } = process.poll_exit()
            {
                self.lives[index].ended = Some(at);
                self.problems.push(format!(
                    "{} (pid {}) exited by itself; its last lines:\n{}",
                    process.id(),
                    process.pid(),
                    process.text_tail(20)
                ));
            }
        }
    }

    /// The member that leads now, by its records: the open term with the highest token among
    /// the current processes.
    fn leader(&self) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for (slot, s) in self.slots.iter().enumerate() {
            let process = &self.processes[s.current];
            if matches!(process.state(), State::Exited { .. }) {
                continue;
            }
            if let Some(token) = open_term(process)
                && best.is_none_or(|(_, t)| token > t)
            {
                best = Some((slot, token));
            }
        }
        best
    }

    fn target(&self, target: Target) -> usize {
        match target {
            Target::Leader { fallback } => self.leader().map_or(fallback, |(slot, _)| slot),
            Target::Member(i) => i,
        }
    }

    fn event(&self, kind: FaultKind, slot: usize, at: u64) -> FaultEvent {
        let leader = self.leader();
        let hit_leader = leader.is_some_and(|(s, _)| s == slot);
        FaultEvent {
            at,
            healed: None,
            kind,
            member: self.slots[slot].spec.id.clone(),
            pid: self.processes[self.slots[slot].current].pid(),
            hit_leader,
            leader_token: leader.filter(|_| hit_leader).map(|(_, t)| t),
        }
    }

    async fn kill(&mut self, slot: usize) -> Result<u64, ChaosError> {
        let index = self.slots[slot].current;
        let at = self.processes[index].kill().await?;
        self.lives[index].ended = Some(at);
        self.lives[index].killed = true;
        Ok(at)
    }

    async fn inject(&mut self, fault: &PlannedFault) -> Result<(), ChaosError> {
        let slot = self.target(fault.target);
        let renew = self.timings.renew_interval;
        let lease = self.timings.lease;
        match fault.kind {
            FaultKind::Crash => {
                sleep(renew.mul_f64(fault.phase)).await;
                let mut event = self.event(fault.kind, slot, mono_ns());
                event.at = self.kill(slot).await?;
                sleep(fault.duration).await;
                self.start(slot)?;
                event.healed = Some(mono_ns());
                self.events.push(event);
            }
            FaultKind::CrashDuringRenew => {
                self.slots[slot]
                    .spanner
                    .set(LinkFault::Latency(fault.latency));
                sleep(renew + renew.mul_f64(fault.phase)).await;
                let mut event = self.event(fault.kind, slot, mono_ns());
                event.at = self.kill(slot).await?;
                self.slots[slot].spanner.set(LinkFault::Pass);
                sleep(fault.duration).await;
                self.start(slot)?;
                event.healed = Some(mono_ns());
                self.events.push(event);
            }
            FaultKind::CrashDuringAcquire => {
                sleep(renew.mul_f64(fault.phase)).await;
                let mut event = self.event(fault.kind, slot, mono_ns());
                event.at = self.kill(slot).await?;
                // The lock falls free about a lease after the last renewal, which came at most
                // a renew interval before the kill: the followers try to acquire from then on.
                let second = (slot + fault.second_offset) % self.slots.len();
                let window = renew + self.timings.poll_interval;
                sleep((lease - renew) + window.mul_f64(fault.phase)).await;
                if second != slot {
                    let mut also = self.event(fault.kind, second, mono_ns());
                    also.at = self.kill(second).await?;
                    sleep(fault.duration).await;
                    self.start(second)?;
                    also.healed = Some(mono_ns());
                    // Counted with its first kill: one fault, two crashes.
                    also.kind = FaultKind::Crash;
                    also.hit_leader = false;
                    also.leader_token = None;
                    self.events.push(also);
                } else {
                    sleep(fault.duration).await;
                }
                self.start(slot)?;
                event.healed = Some(mono_ns());
                self.events.push(event);
            }
            FaultKind::Pause => {
                let index = self.slots[slot].current;
                let mut event = self.event(fault.kind, slot, mono_ns());
                let at = self.processes[index].pause()?;
                event.at = at;
                self.lives[index].pauses.push((at, None));
                sleep(fault.duration).await;
                let resumed = self.processes[index].resume()?;
                if let Some(last) = self.lives[index].pauses.last_mut() {
                    last.1 = Some(resumed);
                }
                event.healed = Some(resumed);
                self.events.push(event);
            }
            FaultKind::SpannerLatency
            | FaultKind::SpannerCut
            | FaultKind::SpannerReplyLoss
            | FaultKind::SpannerReset
            | FaultKind::PeerCut
            | FaultKind::PeerLatency => {
                let link = match fault.kind {
                    FaultKind::SpannerLatency => LinkFault::Latency(fault.latency),
                    FaultKind::SpannerCut | FaultKind::PeerCut => LinkFault::Cut,
                    FaultKind::SpannerReplyLoss => LinkFault::OneWay(Direction::ToClient),
                    FaultKind::SpannerReset => LinkFault::Reset,
                    _ => LinkFault::Latency(fault.latency),
                };
                let peer_link = matches!(fault.kind, FaultKind::PeerCut | FaultKind::PeerLatency);
                let mut event = self.event(fault.kind, slot, mono_ns());
                let proxy = if peer_link {
                    &self.slots[slot].peer
                } else {
                    &self.slots[slot].spanner
                };
                proxy.set(link);
                sleep(fault.duration).await;
                let proxy = if peer_link {
                    &self.slots[slot].peer
                } else {
                    &self.slots[slot].spanner
                };
                proxy.set(LinkFault::Pass);
                event.healed = Some(mono_ns());
                self.events.push(event);
            }
            FaultKind::AbortedTransactions => {}
        }
        Ok(())
    }

    /// Heals every link, resumes and stops every member (SIGTERM, SIGKILL after the grace).
    async fn stop_all(&mut self) {
        for slot in &self.slots {
            slot.spanner.set(LinkFault::Pass);
            slot.peer.set(LinkFault::Pass);
        }
        for index in 0..self.processes.len() {
            let process = &mut self.processes[index];
            match process.state() {
                State::Exited { .. } => continue,
                State::Paused { .. } => {
                    if let Ok(at) = process.resume()
                        && let Some(last) = self.lives[index].pauses.last_mut()
                    {
                        last.1 = Some(at);
                    }
                }
                State::Running => {}
            }
            let process = &mut self.processes[index];
            match process.terminate(STOP_GRACE).await {
                Ok(Some(0)) => {
                    self.lives[index].ended = process.exited_at();
                }
                Ok(Some(code)) => {
                    self.lives[index].ended = process.exited_at();
                    self.problems.push(format!(
                        "{} (pid {}) exited with {code} after SIGTERM; its last lines:\n{}",
                        process.id(),
                        process.pid(),
                        process.text_tail(20)
                    ));
                }
                Ok(None) => {
                    self.lives[index].ended = process.exited_at();
                    self.lives[index].killed = true;
                    self.problems.push(format!(
                        "{} (pid {}) did not exit within {STOP_GRACE:?} of SIGTERM and was killed",
                        process.id(),
                        process.pid()
                    ));
                }
                Err(e) => self
                    .problems
                    .push(format!("stopping {}: {e}", process.id())),
            }
        }
    }
}

/// The token of the term a process's records show open (elected, not lost), if any.
fn open_term(process: &MemberProcess) -> Option<u64> {
    process.with_output(|o| {
        let mut open = None;
        for s in &o.records {
            match s.record {
                Record::Elected { token, .. } => open = Some(token),
                Record::Lost { token, .. } if open == Some(token) => open = None,
                _ => {}
            }
        }
        open
    })
}

#[allow(clippy::too_many_arguments)]
fn member_spec(
    program: &Path,
    id: &str,
    database: &str,
    spanner: &Proxy,
    peer: &Proxy,
    peer_port: u16,
    secret: &str,
    timings: &ElectionTimings,
) -> Spec {
    let ms = |d: Duration| d.as_millis().to_string();
    let env = [
        ("HEDGE_GROUP", GROUP.to_owned()),
        ("HEDGE_SPANNER_DATABASE", database.to_owned()),
        ("POD_NAME", id.to_owned()),
        ("POD_IP", "127.0.0.1".to_owned()),
        ("HEDGE_PEER_PORT", peer_port.to_string()),
        ("HEDGE_PEER_ADVERTISE", peer.addr().to_string()),
        ("HEDGE_GROUP_SECRET", secret.to_owned()),
        ("SPANNER_EMULATOR_HOST", spanner.addr().to_string()),
        ("HEDGE_SPANNER_EMULATOR_HOST", spanner.addr().to_string()),
        ("HEDGE_LEASE_MS", ms(timings.lease)),
        ("HEDGE_RENEW_INTERVAL_MS", ms(timings.renew_interval)),
        ("HEDGE_POLL_INTERVAL_MS", ms(timings.poll_interval)),
        ("HEDGE_SAFETY_MARGIN_MS", ms(timings.safety_margin)),
        ("HEDGE_MEMBER_HEARTBEAT_MS", "500".to_owned()),
        ("HEDGE_MEMBER_TTL_MS", "3000".to_owned()),
        ("HEDGE_DEMO_WORKLOAD", "chaos".to_owned()),
        // Every member's HTTP API on a port of its own.
        ("HEDGE_DEMO_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    Spec {
        id: id.to_owned(),
        program: PathBuf::from(program),
        args: vec!["member".to_owned()],
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

fn free_port() -> Result<u16, ChaosError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(ChaosError::Port)
}

fn count_faults(events: &[FaultEvent], aborting: bool) -> BTreeMap<String, u64> {
    let mut faults = BTreeMap::new();
    for e in events {
        *faults.entry(e.kind.as_str().to_owned()).or_default() += 1;
    }
    if aborting {
        faults.insert(FaultKind::AbortedTransactions.as_str().to_owned(), 1);
    }
    faults
}

/// Reads the register's versions and the members' log keys from the emulator, after the run.
type FinalState = (Vec<(u64, String)>, BTreeMap<String, Vec<(u64, String)>>);

async fn final_state(emulator: &Emulator, db: &DatabasePath) -> Result<FinalState, ChaosError> {
    let failed = |e: hedge::StoreError| ChaosError::FinalState(e.to_string());
    let store = emulator.store(db).await.map_err(failed)?;
    let text = |entries: Vec<hedge::store::LogEntry>| {
        // Read newest first; kept oldest first, as `History` says.
        let mut versions = entries
            .into_iter()
            .map(|e| (e.seq, String::from_utf8_lossy(&e.value).into_owned()))
            .collect::<Vec<_>>();
        versions.sort_by_key(|(seq, _)| *seq);
        versions
    };
    let register = text(
        store
            .read_log(GROUP, REGISTER_KEY, LogQuery::all())
            .await
            .map_err(failed)?,
    );
    let mut log = BTreeMap::new();
    let mut after: Option<String> = None;
    // Bounded: a run has a handful of members, so a handful of keys.
    for _ in 0..100 {
        let keys = store
            .list_log_keys(GROUP, LOG_PREFIX, after.as_deref(), 100)
            .await
            .map_err(failed)?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        for key in keys {
            let versions = store
                .read_log(GROUP, &key, LogQuery::all())
                .await
                .map_err(failed)?;
            log.insert(key, text(versions));
        }
        after = Some(last);
    }
    Ok((register, log))
}

/// For each fault that hit the leader and ended its term: the time until a term with a greater
/// token began. A fault the leader rode out (a latency it renewed through) has no sample: the
/// next term must begin within two leases of the fault's healing to count.
fn failovers(
    events: &[FaultEvent],
    history: &History,
    lease: Duration,
) -> BTreeMap<String, Vec<f64>> {
    let mut starts: Vec<(u64, u64)> = history
        .records
        .iter()
        .filter_map(|s| match s.record {
            Record::Elected { token, since, .. } => Some((token, since)),
            _ => None,
        })
        .collect();
    starts.sort_unstable();
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for e in events {
        let Some(old) = e.leader_token else { continue };
        let next = starts
            .iter()
            .filter(|(token, since)| *token > old && *since >= e.at)
            .map(|(_, since)| *since)
            .min();
        let bound = e
            .healed
            .unwrap_or(e.at)
            .saturating_add(u64::try_from((lease * 2).as_nanos()).unwrap_or(u64::MAX));
        if let Some(since) = next.filter(|since| *since <= bound) {
            samples
                .entry(e.kind.as_str().to_owned())
                .or_default()
                .push((since - e.at) as f64 / 1e6);
        }
    }
    samples
}

fn count_workload(history: &History) -> WorkloadCounts {
    let mut w = WorkloadCounts::default();
    for s in &history.records {
        match &s.record {
            Record::Act { .. } => w.acts += 1,
            Record::RegisterWrite { .. } => w.register_writes += 1,
            Record::RegisterFenced { .. } => w.register_fenced += 1,
            Record::PutAck { .. } => w.puts += 1,
            Record::PermitAcquired { .. } => w.permits += 1,
            Record::Sent { outcome, .. } => match outcome.as_str() {
                "ok" => w.sends_ok += 1,
                "unknown" => w.sends_unknown += 1,
                _ => w.sends_failed += 1,
            },
            Record::HandlerEnd {
                completed: true, ..
            } => w.handlers_completed += 1,
            _ => {}
        }
    }
    w
}

/// Prints every record of a failed run (the leadership ones and the violations' surroundings
/// are what matter; everything is printed so nothing has to be guessed).
fn dump_records(history: &History) {
    let mut all: Vec<_> = history.records.iter().collect();
    all.sort_by_key(|s| s.record.t());
    for life in &history.lives {
        eprintln!("  process: {life:?}");
    }
    for s in all {
        if matches!(
            s.record,
            Record::Elected { .. } | Record::Lost { .. } | Record::Start { .. }
        ) {
            eprintln!("  {}/{}: {:?}", s.member, s.pid, s.record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::record::Stamped;

    const MS: u64 = 1_000_000;

    fn event(kind: FaultKind, at: u64, healed: u64, leader_token: Option<u64>) -> FaultEvent {
        FaultEvent {
            at,
            healed: Some(healed),
            kind,
            member: "m0".into(),
            pid: 1,
            hit_leader: leader_token.is_some(),
            leader_token,
        }
    }

    fn elected(token: u64, since: u64) -> Stamped {
        Stamped {
            member: "m1".into(),
            pid: 2,
            record: Record::Elected {
                t: since,
                token,
                since,
                deadline: since + 1000 * MS,
            },
        }
    }

    #[test]
    fn a_failover_is_timed_from_the_fault_to_the_next_greater_term() {
        let lease = Duration::from_secs(2);
        let history = History {
            records: vec![
                elected(10, 0),
                elected(11, 3_500 * MS),
                elected(12, 20_000 * MS),
            ],
            ..History::default()
        };
        let events = [
            // The leader (token 10) crashed at 1.0 s; token 11 began at 3.5 s.
            event(FaultKind::Crash, 1_000 * MS, 2_000 * MS, Some(10)),
            // A latency the leader (token 11) rode out: the next term comes long after.
            event(FaultKind::SpannerLatency, 5_000 * MS, 7_000 * MS, Some(11)),
            // A fault on a follower: no sample.
            event(FaultKind::Pause, 8_000 * MS, 9_000 * MS, None),
        ];
        let samples = failovers(&events, &history, lease);
        assert_eq!(
            samples,
            BTreeMap::from([("crash".to_owned(), vec![2_500.0])])
        );
    }

    #[test]
    fn faults_are_counted_by_kind_and_the_aborting_emulator_once() {
        let events = [
            event(FaultKind::Crash, 0, 1, None),
            event(FaultKind::Crash, 2, 3, None),
            event(FaultKind::PeerCut, 4, 5, None),
        ];
        let counted = count_faults(&events, true);
        assert_eq!(
            counted,
            BTreeMap::from([
                ("aborted_transactions".to_owned(), 1),
                ("crash".to_owned(), 2),
                ("peer_cut".to_owned(), 1),
            ])
        );
        assert!(!count_faults(&events, false).contains_key("aborted_transactions"));
    }
}
