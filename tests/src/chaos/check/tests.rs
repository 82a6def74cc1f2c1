//! The checkers on synthetic histories: each violation is produced by the smallest history
//! that has it, and a clean history passes every checker.

use super::*;

/// A history under construction: records of processes `pid` (member `m<pid>`).
#[derive(Default)]
struct Builder {
    history: History,
}

impl Builder {
    fn record(mut self, pid: u32, record: Record) -> Self {
        self.history.records.push(Stamped {
            member: format!("m{pid}"),
            pid,
            record,
        });
        self
    }

    fn elected(self, pid: u32, token: u64, since: u64, deadline: u64) -> Self {
        self.record(
            pid,
            Record::Elected {
                t: since,
                token,
                since,
                deadline,
            },
        )
    }

    fn lost(self, pid: u32, token: u64, at: u64, deadline: u64) -> Self {
        self.record(
            pid,
            Record::Lost {
                t: at,
                token,
                reason: "deadline_passed".into(),
                at,
                deadline,
            },
        )
    }

    fn act(self, pid: u32, token: u64, t: u64) -> Self {
        self.record(
            pid,
            Record::Act {
                t,
                token,
                what: "register".into(),
            },
        )
    }

    fn life(mut self, pid: u32, ended: Option<u64>, pauses: Vec<(u64, Option<u64>)>) -> Self {
        self.history.lives.push(ProcessLife {
            member: format!("m{pid}"),
            pid,
            started: 0,
            ended,
            killed: ended.is_some(),
            pauses,
        });
        self
    }

    fn check(self) -> Vec<Violation> {
        check(&self.history)
    }
}

fn register_value(token: u64, seq: u64, prev: (u64, u64)) -> String {
    serde_json::to_string(&RegisterValue {
        token,
        seq,
        prev_token: prev.0,
        prev_seq: prev.1,
        writer: "w".into(),
    })
    .unwrap()
}

#[test]
fn a_clean_history_passes_every_checker() {
    let mut b = Builder::default()
        .life(1, None, vec![])
        .life(2, None, vec![])
        .elected(1, 10, 100, 300)
        .act(1, 10, 150)
        .record(
            1,
            Record::RegisterWrite {
                t: 160,
                token: 10,
                seq: 1,
                prev_token: 0,
                prev_seq: 0,
                version: 1,
            },
        )
        .record(
            1,
            Record::HandlerStart {
                t: 170,
                message: "x".into(),
                token: 10,
            },
        )
        .record(
            1,
            Record::HandlerEnd {
                t: 180,
                message: "x".into(),
                token: 10,
                completed: true,
            },
        )
        .record(
            2,
            Record::Sent {
                started: 165,
                t: 185,
                message: "x".into(),
                outcome: "ok".into(),
                token: Some(10),
            },
        )
        .lost(1, 10, 250, 300)
        .elected(2, 11, 400, 600)
        .act(2, 11, 450)
        .record(
            2,
            Record::RegisterWrite {
                t: 460,
                token: 11,
                seq: 1,
                prev_token: 10,
                prev_seq: 1,
                version: 2,
            },
        )
        .record(
            2,
            Record::PutAck {
                t: 470,
                key: "chaos/log/m2".into(),
                idempotency_key: "k1".into(),
                version: 1,
            },
        )
        .lost(2, 11, 590, 600);
    b.history.register = Some(vec![
        (1, register_value(10, 1, (0, 0))),
        (2, register_value(11, 1, (10, 1))),
    ]);
    b.history.log = Some(BTreeMap::from([(
        "chaos/log/m2".to_owned(),
        vec![(1, "k1".to_owned())],
    )]));
    b.history.semaphore_limit = Some(2);
    assert_eq!(b.check(), vec![]);
}

#[test]
fn overlapping_terms_are_found() {
    let v = Builder::default()
        .elected(1, 10, 100, 300)
        .lost(1, 10, 250, 300)
        .elected(2, 11, 240, 500)
        .check();
    assert!(
        matches!(&v[..], [Violation::Overlap { previous, next }]
        if previous.token == 10 && next.token == 11),
        "{v:?}"
    );
    // Ending in the instant the next term begins is an overlap too: strictly before.
    let v = Builder::default()
        .elected(1, 10, 100, 300)
        .lost(1, 10, 250, 300)
        .elected(2, 11, 250, 500)
        .check();
    assert!(matches!(&v[..], [Violation::Overlap { .. }]), "{v:?}");
}

#[test]
fn a_killed_leader_leads_until_its_last_moment() {
    // Killed at 150 without a `Lost`: its term ends then, whatever its deadline said.
    let history = || {
        Builder::default()
            .life(1, Some(150), vec![])
            .elected(1, 10, 100, 130)
    };
    let v = history().elected(2, 11, 140, 500).check();
    assert!(matches!(&v[..], [Violation::Overlap { .. }]), "{v:?}");
    assert_eq!(history().elected(2, 11, 151, 500).check(), vec![]);
    // Paused at 120 and killed at 900 while still paused: it last ran at 120.
    let v = Builder::default()
        .life(1, Some(900), vec![(120, None)])
        .elected(1, 10, 100, 300)
        .elected(2, 11, 400, 600)
        .check();
    assert_eq!(v, vec![]);
}

#[test]
fn a_term_that_never_ended_overlaps_everything_after_it() {
    let v = Builder::default()
        .life(1, None, vec![])
        .elected(1, 10, 100, 300)
        .elected(2, 11, 5000, 6000)
        .check();
    assert!(matches!(&v[..], [Violation::Overlap { .. }]), "{v:?}");
}

#[test]
fn tokens_must_grow_with_their_grants() {
    let v = Builder::default()
        .elected(1, 11, 100, 200)
        .lost(1, 11, 150, 200)
        .elected(2, 10, 300, 400)
        .lost(2, 10, 350, 400)
        .check();
    assert_eq!(
        v,
        vec![Violation::TokenWentBack {
            earlier: 11,
            later: 10
        }]
    );
    let v = Builder::default()
        .elected(1, 10, 100, 200)
        .lost(1, 10, 150, 200)
        .elected(2, 10, 300, 400)
        .lost(2, 10, 350, 400)
        .check();
    assert_eq!(v, vec![Violation::DuplicateToken { token: 10 }]);
}

#[test]
fn a_late_loss_is_a_violation_unless_the_process_was_paused_past_its_deadline() {
    let v = Builder::default()
        .life(1, None, vec![])
        .elected(1, 10, 100, 300)
        .lost(1, 10, 310, 300)
        .check();
    assert!(matches!(&v[..], [Violation::LateLoss { .. }]), "{v:?}");
    // Paused from 200 to 900: the term ended at its deadline (300), the `Lost` after the
    // resume is late by design, and a successor from 400 does not overlap it.
    let v = Builder::default()
        .life(1, None, vec![(200, Some(900))])
        .elected(1, 10, 100, 300)
        .lost(1, 10, 905, 300)
        .elected(2, 11, 400, 700)
        .lost(2, 11, 650, 700)
        .check();
    assert_eq!(v, vec![]);
}

#[test]
fn a_leader_paused_past_its_deadline_must_not_act_after_it_resumes() {
    let history = || {
        Builder::default()
            .life(1, None, vec![(200, Some(900))])
            .elected(1, 10, 100, 300)
            .act(1, 10, 150)
            .lost(1, 10, 905, 300)
    };
    assert_eq!(history().check(), vec![]);
    let v = history().act(1, 10, 901).check();
    assert_eq!(
        v,
        vec![Violation::StaleLeaderActed {
            process: "m1/1".into(),
            token: 10,
            t: 901,
            deadline: 300,
            resumed: 900,
        }]
    );
    // Acting after an ordinary loss is a violation too.
    let v = Builder::default()
        .life(1, None, vec![])
        .elected(1, 10, 100, 300)
        .lost(1, 10, 250, 300)
        .act(1, 10, 260)
        .check();
    assert!(
        matches!(
            &v[..],
            [Violation::ActedAfterTermEnded {
                t: 260,
                ended: 250,
                ..
            }]
        ),
        "{v:?}"
    );
    let v = Builder::default().act(1, 10, 260).check();
    assert!(
        matches!(&v[..], [Violation::ActedWithoutTerm { .. }]),
        "{v:?}"
    );
}

#[test]
fn the_register_finds_lost_reordered_repeated_and_missing_updates() {
    let write = |token, seq| Record::RegisterWrite {
        t: 0,
        token,
        seq,
        prev_token: 0,
        prev_seq: 0,
        version: 0,
    };
    let stamped = |record| Stamped {
        member: "m".into(),
        pid: 1,
        record,
    };
    let ok = vec![
        (1, register_value(10, 1, (0, 0))),
        (2, register_value(10, 2, (10, 1))),
        (3, register_value(11, 1, (10, 2))),
    ];
    assert_eq!(register(&[stamped(write(10, 2))], &ok), vec![]);
    // The store reads newest first: the order of the input does not matter.
    let newest_first: Vec<_> = ok.iter().rev().cloned().collect();
    assert_eq!(register(&[stamped(write(10, 2))], &newest_first), vec![]);
    // Two writers read version 1 and both wrote: the second lost the first's update.
    let lost = vec![
        (1, register_value(10, 1, (0, 0))),
        (2, register_value(10, 2, (10, 1))),
        (3, register_value(11, 1, (10, 1))),
    ];
    assert_eq!(
        register(&[], &lost),
        vec![Violation::RegisterLostUpdate {
            seq: 3,
            expected_prev: (10, 2),
            found_prev: (10, 1),
        }]
    );
    // A deposed leader's write landed after its successor's.
    let reordered = vec![
        (1, register_value(11, 1, (0, 0))),
        (2, register_value(10, 1, (11, 1))),
    ];
    assert_eq!(
        register(&[], &reordered),
        vec![Violation::RegisterOutOfOrder {
            seq: 2,
            earlier: 11,
            later: 10,
        }]
    );
    let twice = vec![
        (1, register_value(10, 1, (0, 0))),
        (2, register_value(10, 1, (10, 1))),
    ];
    assert_eq!(
        register(&[], &twice),
        vec![Violation::RegisterAppliedTwice { token: 10, seq: 1 }]
    );
    assert_eq!(
        register(&[stamped(write(12, 1))], &ok),
        vec![Violation::RegisterAckLost { token: 12, seq: 1 }]
    );
    assert!(matches!(
        &register(&[], &[(1, "garbage".into())])[..],
        [Violation::RegisterUnreadable { seq: 1, .. }]
    ));
}

fn permit(pid: u32, name: &str, t: u64, deadline: u64) -> Stamped {
    Stamped {
        member: format!("m{pid}"),
        pid,
        record: Record::PermitAcquired {
            t,
            semaphore: "s".into(),
            permit: name.into(),
            deadline,
        },
    }
}

fn released(pid: u32, name: &str, t: u64) -> Stamped {
    Stamped {
        member: format!("m{pid}"),
        pid,
        record: Record::PermitReleased {
            t,
            semaphore: "s".into(),
            permit: name.into(),
        },
    }
}

#[test]
fn the_semaphore_never_holds_more_than_its_limit() {
    let mut history = History {
        records: vec![
            permit(1, "a", 100, 1000),
            permit(2, "b", 110, 1000),
            released(1, "a", 200),
            // Granted in the instant `a` was given back: half-open intervals do not overlap.
            permit(3, "c", 200, 1000),
            released(2, "b", 300),
            released(3, "c", 300),
        ],
        ..History::default()
    };
    assert_eq!(semaphore(&history, 2), vec![]);
    history.records.push(permit(4, "d", 250, 1000));
    let v = semaphore(&history, 2);
    assert!(
        matches!(&v[..], [Violation::TooManyPermits { at: 250, held, limit: 2 }] if held.len() == 3),
        "{v:?}"
    );
    // A permit of a process killed at 150 stops counting then; one paused past its deadline
    // stops counting at the deadline.
    let history = History {
        records: vec![
            permit(1, "a", 100, 1000),
            permit(2, "b", 160, 180),
            permit(3, "c", 190, 1000),
        ],
        lives: vec![
            ProcessLife {
                member: "m1".into(),
                pid: 1,
                started: 0,
                ended: Some(150),
                killed: true,
                pauses: vec![],
            },
            ProcessLife {
                member: "m2".into(),
                pid: 2,
                started: 0,
                ended: None,
                killed: false,
                pauses: vec![(170, Some(400))],
            },
        ],
        ..History::default()
    };
    assert_eq!(semaphore(&history, 1), vec![]);
    let twice = History {
        records: vec![permit(1, "a", 100, 1000), permit(2, "a", 300, 1000)],
        ..History::default()
    };
    assert!(semaphore(&twice, 5).contains(&Violation::PermitGrantedTwice { permit: "a".into() }));
}

#[test]
fn the_log_keeps_every_acknowledged_put_once() {
    let ack = |key: &str, idem: &str| Stamped {
        member: "m1".into(),
        pid: 1,
        record: Record::PutAck {
            t: 1,
            key: key.into(),
            idempotency_key: idem.into(),
            version: 1,
        },
    };
    let keys = BTreeMap::from([(
        "k".to_owned(),
        vec![
            (1, "a".to_owned()),
            (2, "b".to_owned()),
            (3, "b".to_owned()),
        ],
    )]);
    assert_eq!(
        log(&[ack("k", "a"), ack("k", "c")], &keys),
        vec![
            Violation::PutAppliedTwice {
                key: "k".into(),
                idempotency_key: "b".into(),
                copies: 2,
            },
            Violation::AckedPutMissing {
                key: "k".into(),
                idempotency_key: "c".into(),
            },
        ]
    );
}

#[test]
fn messaging_finds_double_runs_handlers_past_their_term_and_acks_without_a_run() {
    let start = |pid, message: &str, token| {
        (
            pid,
            Record::HandlerStart {
                t: 150,
                message: message.into(),
                token,
            },
        )
    };
    let end = |pid, message: &str, token, t| {
        (
            pid,
            Record::HandlerEnd {
                t,
                message: message.into(),
                token,
                completed: true,
            },
        )
    };
    let mut b = Builder::default()
        .life(1, None, vec![])
        .life(2, None, vec![])
        .elected(1, 10, 100, 300)
        .lost(1, 10, 250, 300)
        .elected(2, 11, 400, 600)
        .lost(2, 11, 550, 600);
    for (pid, r) in [
        start(1, "once", 10),
        end(1, "once", 10, 200),
        start(1, "twice", 10),
        start(2, "twice", 11),
        start(1, "late", 10),
        end(1, "late", 10, 260),
        start(2, "foreign", 10),
        end(2, "foreign", 10, 450),
    ] {
        b = b.record(pid, r);
    }
    b = b
        .record(
            2,
            Record::Sent {
                started: 1,
                t: 2,
                message: "never".into(),
                outcome: "ok".into(),
                token: Some(10),
            },
        )
        .record(
            2,
            Record::Sent {
                started: 1,
                t: 2,
                message: "once".into(),
                outcome: "ok".into(),
                token: Some(11),
            },
        )
        .record(
            2,
            Record::Sent {
                started: 1,
                t: 2,
                message: "late".into(),
                outcome: "failed".into(),
                token: None,
            },
        );
    let v = b.check();
    let has = |p: &dyn Fn(&Violation) -> bool| v.iter().any(p);
    assert!(
        has(
            &|v| matches!(v, Violation::SendRunTwice { message, runs } if message == "twice" && runs.len() == 2)
        ),
        "{v:?}"
    );
    assert!(
        has(
            &|v| matches!(v, Violation::HandlerOutlivedTerm { message, t: 260, ended: 250, .. } if message == "late")
        ),
        "{v:?}"
    );
    assert!(
        has(
            &|v| matches!(v, Violation::HandlerWithoutTerm { message, .. } if message == "foreign")
        ),
        "{v:?}"
    );
    assert!(
        has(&|v| matches!(v, Violation::AckedSendNotRun { message } if message == "never")),
        "{v:?}"
    );
    assert!(
        has(
            &|v| matches!(v, Violation::AckedSendWrongToken { message, acked: 11, ran: 10 } if message == "once")
        ),
        "{v:?}"
    );
    assert!(
        has(&|v| matches!(v, Violation::FailedSendRan { message, .. } if message == "late")),
        "{v:?}"
    );
    assert_eq!(v.len(), 6, "{v:?}");
}
