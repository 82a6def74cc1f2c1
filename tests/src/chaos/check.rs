//! The checkers: what a run recorded, judged against what hedge promises.
//!
//! | checker | violation |
//! |---|---|
//! | [`leadership`] | two terms with different tokens overlap, a token is granted twice, tokens do not increase with their grants, a term's `Lost` came after its deadline while the process ran |
//! | [`acts`] | the workload acted under a term (its cancellation token had not fired) after the term ended; after a pause past the deadline this is [`Violation::StaleLeaderActed`] |
//! | [`register`] | the fenced register lost an update, took one out of token order, applied one twice, or lost an acknowledged one |
//! | [`semaphore`] | more unexpired permits than the limit at some instant, or a permit token granted twice |
//! | [`log`] | an acknowledged put is missing, or a put was applied twice |
//! | [`messaging`] | a send was run twice, a handler completed after its term ended (or under a term its process never had), an acknowledged send whose handler never ran, a send reported as not delivered whose handler started |
//!
//! # When a term ends
//!
//! A term begins when `is_leader()` turned true (`Elected.since`). It ends:
//!
//! * at `Lost.at` when the member recorded it before its deadline;
//! * at its deadline when the process was paused past the deadline (`is_leader()` compares the
//!   clock with the deadline, so the term was over the instant the deadline passed, and the
//!   `Lost` that follows the resume comes late by design);
//! * for a process killed while leading (no `Lost`): at the last moment the process ran (the
//!   SIGKILL, or the SIGSTOP before it). That is never earlier than the real end, so the
//!   checker can report an overlap that was not one but never misses one.
//!
//! Every checker is a pure function of a [`History`], so each has unit tests on synthetic
//! histories, and a failing run can be checked again from its records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::record::{ProcessLife, Record, RegisterValue, Stamped};
use crate::timeline::{self, Interval};

/// Everything a run recorded.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every member's records.
    pub records: Vec<Stamped>,
    /// Every process the run started.
    pub lives: Vec<ProcessLife>,
    /// The register's versions as read at the end, oldest first: (log sequence number, value
    /// text). `None` when the run had no register.
    pub register: Option<Vec<(u64, String)>>,
    /// The members' log keys as read at the end: key → (sequence number, value text), oldest
    /// first. `None` when the run had no log workload.
    pub log: Option<BTreeMap<String, Vec<(u64, String)>>>,
    /// The semaphore's limit, when the run had a semaphore workload.
    pub semaphore_limit: Option<u32>,
}

/// A violation of what hedge promises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// Two terms overlapped.
    Overlap {
        /// The earlier term (`member/pid`, token, start, end).
        previous: TermView,
        /// The later term.
        next: TermView,
    },
    /// A token was granted twice.
    DuplicateToken {
        /// The token.
        token: u64,
    },
    /// A later grant got a smaller token.
    TokenWentBack {
        /// The earlier grant's token.
        earlier: u64,
        /// The later grant's token.
        later: u64,
    },
    /// A running process recorded `Lost` after its term's deadline.
    LateLoss {
        /// The term.
        term: TermView,
    },
    /// The workload acted under a term that had ended.
    ActedAfterTermEnded {
        /// The process.
        process: String,
        /// The term.
        token: u64,
        /// When it acted.
        t: u64,
        /// When the term had ended.
        ended: u64,
    },
    /// A leader paused past its deadline acted under its old token after it resumed.
    StaleLeaderActed {
        /// The process.
        process: String,
        /// The term.
        token: u64,
        /// When it acted.
        t: u64,
        /// The term's deadline.
        deadline: u64,
        /// When it was resumed.
        resumed: u64,
    },
    /// The workload acted under a term its process never recorded.
    ActedWithoutTerm {
        /// The process.
        process: String,
        /// The token.
        token: u64,
    },
    /// A register version does not follow the one before it: an update was lost (two writers
    /// read the same value) or the version history is out of order.
    RegisterLostUpdate {
        /// The version.
        seq: u64,
        /// The value it should have replaced (token, seq).
        expected_prev: (u64, u64),
        /// The value it says it replaced.
        found_prev: (u64, u64),
    },
    /// A register version carries a smaller token than the version before it.
    RegisterOutOfOrder {
        /// The version.
        seq: u64,
        /// The earlier version's token.
        earlier: u64,
        /// This version's token.
        later: u64,
    },
    /// One register update (token, seq) was applied twice.
    RegisterAppliedTwice {
        /// The writer's token.
        token: u64,
        /// The update's number.
        seq: u64,
    },
    /// An acknowledged register update is not in the register's history.
    RegisterAckLost {
        /// The writer's token.
        token: u64,
        /// The update's number.
        seq: u64,
    },
    /// A register version could not be read.
    RegisterUnreadable {
        /// The version.
        seq: u64,
        /// Its text.
        value: String,
    },
    /// More unexpired permits than the limit at one instant.
    TooManyPermits {
        /// When.
        at: u64,
        /// The permits held then (`member/pid:permit`).
        held: Vec<String>,
        /// The limit.
        limit: u32,
    },
    /// One permit was granted twice.
    PermitGrantedTwice {
        /// The permit.
        permit: String,
    },
    /// An acknowledged log put is missing.
    AckedPutMissing {
        /// The key.
        key: String,
        /// The idempotency key.
        idempotency_key: String,
    },
    /// A log put was applied twice.
    PutAppliedTwice {
        /// The key.
        key: String,
        /// The idempotency key (the value).
        idempotency_key: String,
        /// How many versions carry it.
        copies: usize,
    },
    /// The library ran one send's handler more than once.
    SendRunTwice {
        /// The message.
        message: String,
        /// The processes and tokens it ran under.
        runs: Vec<String>,
    },
    /// A send handler completed after its term had ended.
    HandlerOutlivedTerm {
        /// The message.
        message: String,
        /// The process.
        process: String,
        /// The term.
        token: u64,
        /// When it completed.
        t: u64,
        /// When the term ended.
        ended: u64,
    },
    /// A send handler ran under a term its process never recorded.
    HandlerWithoutTerm {
        /// The message.
        message: String,
        /// The process.
        process: String,
        /// The token.
        token: u64,
    },
    /// A send was acknowledged but no handler ran it.
    AckedSendNotRun {
        /// The message.
        message: String,
    },
    /// A send reported as known not to have run (nothing delivered) whose handler did start.
    FailedSendRan {
        /// The message.
        message: String,
        /// The processes and tokens it ran under.
        runs: Vec<String>,
    },
    /// A send was acknowledged with the token of a term other than the one its handler ran
    /// under.
    AckedSendWrongToken {
        /// The message.
        message: String,
        /// The token in the reply.
        acked: u64,
        /// The token the handler ran under.
        ran: u64,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(json) => f.write_str(&json),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// A term as the checkers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TermView {
    /// `member/pid`.
    pub process: String,
    /// The token.
    pub token: u64,
    /// When `is_leader()` turned true.
    pub start: u64,
    /// When it ended (see the module docs); `None` if it never did.
    pub end: Option<u64>,
    /// The deadline last recorded.
    pub deadline: u64,
    /// Whether the process was paused past this deadline.
    pub paused_past_deadline: bool,
    /// Where `end` comes from.
    pub ended_by: EndedBy,
}

/// Where a term's end comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The member's `Lost` record (`at`).
    Lost,
    /// The deadline, which passed while the process was paused.
    PausedDeadline,
    /// The process's last moment (killed while leading).
    LastRun,
    /// Nothing: the term had not ended when the run ended.
    Open,
}

/// Every violation in a history, all checkers together.
pub fn check(history: &History) -> Vec<Violation> {
    let terms = terms(history);
    let mut violations = leadership(&terms);
    violations.extend(acts(history, &terms));
    violations.extend(messaging(history, &terms));
    if let Some(versions) = &history.register {
        violations.extend(register(&history.records, versions));
    }
    if let Some(limit) = history.semaphore_limit {
        violations.extend(semaphore(history, limit));
    }
    if let Some(log) = &history.log {
        violations.extend(self::log(&history.records, log));
    }
    violations
}

fn process_name(member: &str, pid: u32) -> String {
    format!("{member}/{pid}")
}

/// The terms of every process, ended as the module docs say, keyed by (pid, token).
pub fn terms(history: &History) -> BTreeMap<(u32, u64), TermView> {
    let lives: HashMap<u32, &ProcessLife> = history.lives.iter().map(|l| (l.pid, l)).collect();
    let mut terms = BTreeMap::new();
    for s in &history.records {
        if let Record::Elected {
            token,
            since,
            deadline,
            ..
        } = s.record
        {
            terms.insert(
                (s.pid, token),
                TermView {
                    process: process_name(&s.member, s.pid),
                    token,
                    start: since,
                    end: None,
                    deadline,
                    paused_past_deadline: false,
                    ended_by: EndedBy::Open,
                },
            );
        }
    }
    for s in &history.records {
        if let Record::Lost {
            token,
            at,
            deadline,
            ..
        } = s.record
            && let Some(term) = terms.get_mut(&(s.pid, token))
        {
            term.deadline = deadline;
            let paused = lives
                .get(&s.pid)
                .is_some_and(|l| l.pause_covering(deadline).is_some());
            if at > deadline && paused {
                term.paused_past_deadline = true;
                term.end = Some(deadline);
                term.ended_by = EndedBy::PausedDeadline;
            } else {
                term.end = Some(at);
                term.ended_by = EndedBy::Lost;
            }
        }
    }
    for ((pid, _), term) in terms.iter_mut() {
        if term.end.is_none()
            && let Some(last) = lives.get(pid).and_then(|l| l.last_run())
        {
            term.end = Some(last);
            term.ended_by = EndedBy::LastRun;
        }
    }
    terms
}

/// Overlapping terms, token reuse, tokens out of grant order, late losses.
pub fn leadership(terms: &BTreeMap<(u32, u64), TermView>) -> Vec<Violation> {
    let intervals: Vec<Interval<u64>> = terms
        .values()
        .map(|t| Interval {
            member: t.process.clone(),
            token: t.token,
            start: t.start,
            lost_at: t.end,
            deadline: None,
        })
        .collect();
    let view = |i: &Interval<u64>| {
        terms
            .values()
            .find(|t| t.process == i.member && t.token == i.token)
            .cloned()
    };
    let mut violations: Vec<Violation> = timeline::check(&intervals)
        .into_iter()
        .filter_map(|v| match v {
            timeline::Violation::DuplicateToken(token) => Some(Violation::DuplicateToken { token }),
            timeline::Violation::TokenWentBack { earlier, later } => {
                Some(Violation::TokenWentBack { earlier, later })
            }
            timeline::Violation::Overlap { previous, next } => Some(Violation::Overlap {
                previous: view(&previous)?,
                next: view(&next)?,
            }),
            timeline::Violation::LateLoss(_) | timeline::Violation::Lagged { .. } => None,
        })
        .collect();
    for term in terms.values() {
        // Only a loss the member recorded can be late: a killed process's term ends at its
        // last moment, and its deadline may have moved on with renewals it never recorded.
        if term.ended_by == EndedBy::Lost && term.end.is_some_and(|end| end > term.deadline) {
            violations.push(Violation::LateLoss { term: term.clone() });
        }
    }
    violations
}

/// Acts under ended terms, and after a pause past the deadline.
pub fn acts(history: &History, terms: &BTreeMap<(u32, u64), TermView>) -> Vec<Violation> {
    let lives: HashMap<u32, &ProcessLife> = history.lives.iter().map(|l| (l.pid, l)).collect();
    let mut violations = Vec::new();
    for s in &history.records {
        let Record::Act { t, token, .. } = s.record else {
            continue;
        };
        let process = process_name(&s.member, s.pid);
        let Some(term) = terms.get(&(s.pid, token)) else {
            violations.push(Violation::ActedWithoutTerm { process, token });
            continue;
        };
        let Some(ended) = term.end else { continue };
        if t < ended {
            continue;
        }
        let resumed = lives
            .get(&s.pid)
            .and_then(|l| l.pause_covering(term.deadline))
            .and_then(|(_, c)| c);
        match resumed {
            Some(resumed) if term.paused_past_deadline && t >= resumed => {
                violations.push(Violation::StaleLeaderActed {
                    process,
                    token,
                    t,
                    deadline: term.deadline,
                    resumed,
                });
            }
            _ => violations.push(Violation::ActedAfterTermEnded {
                process,
                token,
                t,
                ended,
            }),
        }
    }
    violations
}

/// Sends run twice, handlers outliving their terms, acknowledged sends that never ran, sends
/// reported as not delivered that ran.
pub fn messaging(history: &History, terms: &BTreeMap<(u32, u64), TermView>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut runs: BTreeMap<&str, Vec<(u32, &str, u64)>> = BTreeMap::new();
    for s in &history.records {
        match &s.record {
            Record::HandlerStart { message, token, .. } => {
                runs.entry(message)
                    .or_default()
                    .push((s.pid, &s.member, *token));
            }
            Record::HandlerEnd {
                t,
                message,
                token,
                completed: true,
            } => {
                let process = process_name(&s.member, s.pid);
                match terms.get(&(s.pid, *token)) {
                    None => violations.push(Violation::HandlerWithoutTerm {
                        message: message.clone(),
                        process,
                        token: *token,
                    }),
                    Some(term) => {
                        if let Some(ended) = term.end
                            && *t >= ended
                        {
                            violations.push(Violation::HandlerOutlivedTerm {
                                message: message.clone(),
                                process,
                                token: *token,
                                t: *t,
                                ended,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (message, list) in &runs {
        if list.len() > 1 {
            violations.push(Violation::SendRunTwice {
                message: (*message).to_owned(),
                runs: list
                    .iter()
                    .map(|(pid, member, token)| format!("{}@{token}", process_name(member, *pid)))
                    .collect(),
            });
        }
    }
    for s in &history.records {
        if let Record::Sent {
            message, outcome, ..
        } = &s.record
            && outcome == "failed"
            && let Some(list) = runs.get(message.as_str())
        {
            violations.push(Violation::FailedSendRan {
                message: message.clone(),
                runs: list
                    .iter()
                    .map(|(pid, member, token)| format!("{}@{token}", process_name(member, *pid)))
                    .collect(),
            });
        }
    }
    for s in &history.records {
        if let Record::Sent {
            message,
            outcome,
            token,
            ..
        } = &s.record
            && outcome == "ok"
        {
            match runs.get(message.as_str()).and_then(|l| l.first()) {
                None => violations.push(Violation::AckedSendNotRun {
                    message: message.clone(),
                }),
                Some(&(_, _, ran)) => {
                    if let Some(acked) = *token
                        && acked != ran
                    {
                        violations.push(Violation::AckedSendWrongToken {
                            message: message.clone(),
                            acked,
                            ran,
                        });
                    }
                }
            }
        }
    }
    violations
}

/// The fenced register (`versions` in any order): every version follows the one before it,
/// tokens never go back, no update twice, every acknowledged update kept.
pub fn register(records: &[Stamped], versions: &[(u64, String)]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut previous: Option<(u64, u64)> = None;
    let mut seen = BTreeSet::new();
    // Oldest first, whatever order they were read in.
    let mut versions = versions.to_vec();
    versions.sort_by_key(|(seq, _)| *seq);
    for (seq, text) in &versions {
        let Ok(value) = serde_json::from_str::<RegisterValue>(text) else {
            violations.push(Violation::RegisterUnreadable {
                seq: *seq,
                value: text.clone(),
            });
            continue;
        };
        let expected = previous.unwrap_or((0, 0));
        let found = (value.prev_token, value.prev_seq);
        if found != expected {
            violations.push(Violation::RegisterLostUpdate {
                seq: *seq,
                expected_prev: expected,
                found_prev: found,
            });
        }
        if let Some((earlier, _)) = previous
            && value.token < earlier
        {
            violations.push(Violation::RegisterOutOfOrder {
                seq: *seq,
                earlier,
                later: value.token,
            });
        }
        if !seen.insert((value.token, value.seq)) {
            violations.push(Violation::RegisterAppliedTwice {
                token: value.token,
                seq: value.seq,
            });
        }
        previous = Some((value.token, value.seq));
    }
    for s in records {
        if let Record::RegisterWrite { token, seq, .. } = s.record
            && !seen.contains(&(token, seq))
        {
            violations.push(Violation::RegisterAckLost { token, seq });
        }
    }
    violations
}

/// A permit as the semaphore checker sees it: (member, acquired, deadline, released).
type Held<'a> = (&'a str, u64, u64, Option<u64>);

/// Never more permits held than the limit. A permit counts from when `acquire` returned until
/// its holder let go of it, its deadline passed while the holder was paused, or its process
/// last ran.
pub fn semaphore(history: &History, limit: u32) -> Vec<Violation> {
    let lives: HashMap<u32, &ProcessLife> = history.lives.iter().map(|l| (l.pid, l)).collect();
    let mut violations = Vec::new();
    // (pid, permit) → (member, start, deadline, end)
    let mut held: BTreeMap<(u32, &str), Held<'_>> = BTreeMap::new();
    let mut granted: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &history.records {
        match &s.record {
            Record::PermitAcquired {
                t,
                permit,
                deadline,
                ..
            } => {
                *granted.entry(permit).or_default() += 1;
                held.insert((s.pid, permit), (&s.member, *t, *deadline, None));
            }
            Record::PermitRenewed {
                permit, deadline, ..
            } => {
                if let Some(h) = held.get_mut(&(s.pid, permit.as_str())) {
                    h.2 = h.2.max(*deadline);
                }
            }
            Record::PermitReleased { t, permit, .. } => {
                if let Some(h) = held.get_mut(&(s.pid, permit.as_str())) {
                    h.3 = Some(h.3.map_or(*t, |e| e.min(*t)));
                }
            }
            _ => {}
        }
    }
    for (permit, count) in &granted {
        if *count > 1 {
            violations.push(Violation::PermitGrantedTwice {
                permit: (*permit).to_owned(),
            });
        }
    }
    // Sweep over the intervals' edges; an end sorts before a start at the same instant (the
    // intervals are half-open).
    let mut edges: Vec<(u64, bool, String)> = Vec::new();
    for ((pid, permit), (member, start, deadline, released)) in &held {
        let life = lives.get(pid);
        let mut end = released.unwrap_or(u64::MAX);
        if let Some(last) = life.and_then(|l| l.last_run()) {
            end = end.min(last);
        }
        if life.is_some_and(|l| l.pause_covering(*deadline).is_some()) {
            end = end.min(*deadline);
        }
        let name = format!("{}:{permit}", process_name(member, *pid));
        if end > *start {
            edges.push((*start, true, name.clone()));
            if end != u64::MAX {
                edges.push((end, false, name));
            }
        }
    }
    edges.sort_by_key(|e| (e.0, e.1));
    let mut current: BTreeSet<String> = BTreeSet::new();
    let mut reported = false;
    for (at, is_start, name) in edges {
        if is_start {
            current.insert(name);
            if current.len() > limit as usize && !reported {
                violations.push(Violation::TooManyPermits {
                    at,
                    held: current.iter().cloned().collect(),
                    limit,
                });
                reported = true;
            }
        } else {
            current.remove(&name);
            if current.len() <= limit as usize {
                reported = false;
            }
        }
    }
    violations
}

/// Every acknowledged put present once, no put applied twice.
pub fn log(records: &[Stamped], keys: &BTreeMap<String, Vec<(u64, String)>>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut copies: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (key, versions) in keys {
        for (_, value) in versions {
            *copies.entry((key, value)).or_default() += 1;
        }
    }
    for ((key, value), n) in &copies {
        if *n > 1 {
            violations.push(Violation::PutAppliedTwice {
                key: (*key).to_owned(),
                idempotency_key: (*value).to_owned(),
                copies: *n,
            });
        }
    }
    for s in records {
        if let Record::PutAck {
            key,
            idempotency_key,
            ..
        } = &s.record
            && !copies.contains_key(&(key.as_str(), idempotency_key.as_str()))
        {
            violations.push(Violation::AckedPutMissing {
                key: key.clone(),
                idempotency_key: idempotency_key.clone(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests;
