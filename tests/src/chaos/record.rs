//! What the runs record: the members' own history (JSON lines the demo's chaos workload prints on
//! standard output) and the harness's history (the faults it injected), both on
//! `CLOCK_MONOTONIC` in nanoseconds ([`super::mono_ns`]), which is one clock for every process on
//! the host.
//!
//! The member side (`demo/src/chaos.rs`) prints these very types with serde, so the two sides
//! cannot drift apart.
//!
//! Times are taken so that the checkers can be strict without false alarms: an action's `t` is
//! read *before* the member checks that it still leads (so "leading at `t`" is implied by the
//! check passing), an acknowledgement's `t` *after* the acknowledgement arrived.

use serde::{Deserialize, Serialize};

/// One line of a member's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The workload started in this process.
    Start {
        /// When.
        t: u64,
        /// The member id.
        member: String,
        /// The process's incarnation (fresh at every start).
        incarnation: String,
        /// The process id.
        pid: u32,
    },
    /// This member became leader (`LeadershipEvent::Elected`).
    Elected {
        /// When the record was written.
        t: u64,
        /// The term's fencing token.
        token: u64,
        /// When `is_leader()` became true.
        since: u64,
        /// The term's local deadline at election.
        deadline: u64,
    },
    /// This member's term ended (`LeadershipEvent::Lost`).
    Lost {
        /// When the record was written.
        t: u64,
        /// The term's fencing token.
        token: u64,
        /// Why (the `LostReason`, in words).
        reason: String,
        /// When `is_leader()` turned false.
        at: u64,
        /// The term's last local deadline.
        deadline: u64,
    },
    /// The workload acted as leader of term `token`: at `t` (read before the check) the term's
    /// cancellation token had not fired.
    Act {
        /// When the check began.
        t: u64,
        /// The term.
        token: u64,
        /// What it did (`register`, ...).
        what: String,
    },
    /// An acknowledged update of the fenced register.
    RegisterWrite {
        /// When the acknowledgement arrived.
        t: u64,
        /// The writer's term.
        token: u64,
        /// The update's number within the term (from 1).
        seq: u64,
        /// The token of the value it replaced (0: none).
        prev_token: u64,
        /// The sequence number of the value it replaced (0: none).
        prev_seq: u64,
        /// The log version the update was written as.
        version: u64,
    },
    /// A register update refused by its fence (the term is over in the store).
    RegisterFenced {
        /// When the refusal arrived.
        t: u64,
        /// The writer's term.
        token: u64,
    },
    /// A semaphore permit was granted to this member.
    PermitAcquired {
        /// When `acquire` returned.
        t: u64,
        /// The semaphore.
        semaphore: String,
        /// The permit's identity (unique per grant).
        permit: String,
        /// The local instant until which the member may count on the permit unless it renews it.
        deadline: u64,
    },
    /// A permit's local deadline moved (it was renewed).
    PermitRenewed {
        /// When the renewal was seen.
        t: u64,
        /// The semaphore.
        semaphore: String,
        /// The permit.
        permit: String,
        /// The new local deadline.
        deadline: u64,
    },
    /// A permit was given up (or lost).
    PermitReleased {
        /// When the member stopped counting on it (read before the release call).
        t: u64,
        /// The semaphore.
        semaphore: String,
        /// The permit.
        permit: String,
    },
    /// A log put was acknowledged.
    PutAck {
        /// When the acknowledgement arrived.
        t: u64,
        /// The log key.
        key: String,
        /// The put's idempotency key (also its value).
        idempotency_key: String,
        /// The version written.
        version: u64,
    },
    /// The leader's send handler began to run a message.
    HandlerStart {
        /// When.
        t: u64,
        /// The message id.
        message: String,
        /// The token of the term it runs under.
        token: u64,
    },
    /// The leader's send handler finished (`completed`) or was dropped.
    HandlerEnd {
        /// When. For a completed handler: read before its final check of the term.
        t: u64,
        /// The message id.
        message: String,
        /// The token of the term it ran under.
        token: u64,
        /// Whether it ran to the end (`false`: cancelled or dropped).
        completed: bool,
    },
    /// A send this member made returned.
    Sent {
        /// When the send began.
        started: u64,
        /// When it returned.
        t: u64,
        /// The message id.
        message: String,
        /// `ok`, `unknown` (the outcome is unknown) or `failed` (known not to have run).
        outcome: String,
        /// With `ok`: the token of the term the handler ran under.
        token: Option<u64>,
    },
    /// The workload stopped (a graceful exit).
    Stop {
        /// When.
        t: u64,
    },
}

impl Record {
    /// The record's time (for a send: when it returned).
    pub fn t(&self) -> u64 {
        match self {
            Record::Start { t, .. }
            | Record::Elected { t, .. }
            | Record::Lost { t, .. }
            | Record::Act { t, .. }
            | Record::RegisterWrite { t, .. }
            | Record::RegisterFenced { t, .. }
            | Record::PermitAcquired { t, .. }
            | Record::PermitRenewed { t, .. }
            | Record::PermitReleased { t, .. }
            | Record::PutAck { t, .. }
            | Record::HandlerStart { t, .. }
            | Record::HandlerEnd { t, .. }
            | Record::Sent { t, .. }
            | Record::Stop { t } => *t,
        }
    }
}

/// A record and the process that printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The member id.
    pub member: String,
    /// The process (one member id has a new process after every restart).
    pub pid: u32,
    /// The record.
    pub record: Record,
}

/// The value of one register update, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterValue {
    /// The writer's term.
    pub token: u64,
    /// The update's number within the term.
    pub seq: u64,
    /// The token of the value it replaced (0: none).
    pub prev_token: u64,
    /// The sequence number of the value it replaced (0: none).
    pub prev_seq: u64,
    /// The writer's member id.
    pub writer: String,
}

/// The log key of the fenced register.
pub const REGISTER_KEY: &str = "chaos/register";
/// The prefix of the members' log keys (`chaos/log/<member>`).
pub const LOG_PREFIX: &str = "chaos/log/";
/// The semaphore the members contend for.
pub const SEMAPHORE: &str = "chaos";
/// The semaphore's limit.
pub const SEMAPHORE_LIMIT: u32 = 2;

/// A fault the harness injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultEvent {
    /// When it was injected.
    pub at: u64,
    /// When it was healed (for a crash: when the member was started again), if it was.
    pub healed: Option<u64>,
    /// The kind.
    pub kind: super::schedule::FaultKind,
    /// The member it hit.
    pub member: String,
    /// The process it hit.
    pub pid: u32,
    /// Whether that member led when the fault began (as far as its records said).
    pub hit_leader: bool,
    /// The token of the term it led then, if it did.
    pub leader_token: Option<u64>,
}

/// A process the harness ran, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessLife {
    /// The member id.
    pub member: String,
    /// The process id.
    pub pid: u32,
    /// When it was started.
    pub started: u64,
    /// When it was killed or exited; `None` if it was still running when the run ended.
    pub ended: Option<u64>,
    /// Whether it was SIGKILLed (a crash) rather than stopped gracefully.
    pub killed: bool,
    /// Its pauses: (SIGSTOP sent, SIGCONT sent or `None` if it was never continued).
    pub pauses: Vec<(u64, Option<u64>)>,
}

impl ProcessLife {
    /// The last moment the process could have done anything: when it was killed, or, if it
    /// was paused then and never continued, when it was paused.
    pub fn last_run(&self) -> Option<u64> {
        let ended = self.ended?;
        match self.pauses.last() {
            Some(&(stopped, None)) => Some(stopped.min(ended)),
            _ => Some(ended),
        }
    }

    /// Whether the process was paused (not running) at `t`.
    pub fn paused_at(&self, t: u64) -> bool {
        self.pauses
            .iter()
            .any(|&(s, c)| s <= t && c.is_none_or(|c| t < c))
    }

    /// The pause that covered `t`, if one did.
    pub fn pause_covering(&self, t: u64) -> Option<(u64, Option<u64>)> {
        self.pauses
            .iter()
            .copied()
            .find(|&(s, c)| s <= t && c.is_none_or(|c| t < c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_tagged_json_lines() {
        let r = Record::Elected {
            t: 5,
            token: 7,
            since: 4,
            deadline: 9,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"kind":"elected","t":5,"token":7,"since":4,"deadline":9}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        assert!(serde_json::from_str::<Record>(r#"{"kind":"nope","t":1}"#).is_err());
    }

    #[test]
    fn a_process_paused_when_killed_last_ran_at_the_pause() {
        let life = ProcessLife {
            member: "a".into(),
            pid: 1,
            started: 0,
            ended: Some(100),
            killed: true,
            pauses: vec![(10, Some(20)), (50, None)],
        };
        assert_eq!(life.last_run(), Some(50));
        assert!(life.paused_at(15) && !life.paused_at(20) && life.paused_at(99));
    }
}
