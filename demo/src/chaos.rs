//! The chaos workload (`--workload chaos`): what a member does while the chaos harness of
//! `hedge-tests` (`tests/src/chaos/`) kills, pauses and cuts it off, and what it records for
//! the checkers.
//!
//! Every record is one JSON line on standard output ([`hedge_tests::chaos::record::Record`]),
//! timed on `CLOCK_MONOTONIC` ([`hedge_tests::chaos::mono_ns`]), which every process on the host
//! shares. The loops:
//!
//! * **leadership**: every `Elected` and `Lost` event, with the term's start and deadline;
//! * **the fenced register** (leader only): read the register, write its successor fenced on the
//!   term's token, a few times a second; an update whose outcome is unknown is retried with
//!   the same idempotency key, so that it lands once or not at all;
//! * **the log**: appends to this member's own key, each put with a fresh idempotency key (also
//!   its value), retried with that key after a failure;
//! * **the semaphore**: acquire one of [`SEMAPHORE_LIMIT`] permits, hold it a little while
//!   watching its deadline, release it;
//! * **messaging**: a send to the leader every few hundred milliseconds; the send handler
//!   records when it starts and when it completes, and completes only while this member still
//!   leads under the message's token (checked on the clock, not only on the cancellation
//!   token, whose timer may not have fired yet after the process was paused).
//!
//! A record's time is taken so that the checkers can be strict: an action's time *before* the
//! check that this member still leads, an acknowledgement's *after* it arrived.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use hedge::{
    HandlerError, HandlerResult, Hedge, HedgeBuilder, KvError, LeadershipEvent, LostReason,
    Message, PutOptions,
};
use hedge_tests::chaos::mono_ns;
use hedge_tests::chaos::record::{
    LOG_PREFIX, REGISTER_KEY, Record, RegisterValue, SEMAPHORE, SEMAPHORE_LIMIT,
};
use rand::Rng;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;

/// How often the leader updates the register.
const REGISTER_EVERY: Duration = Duration::from_millis(150);
/// How often a member appends to its log key.
const PUT_EVERY: Duration = Duration::from_millis(250);
/// How often a member sends to the leader.
const SEND_EVERY: Duration = Duration::from_millis(300);
/// How long the send handler works before it completes.
const HANDLER_WORK: Duration = Duration::from_millis(30);
/// How often a permit holder looks at its permit.
const PERMIT_POLL: Duration = Duration::from_millis(10);
/// The longest a single operation may take before the loop gives up on it and goes on.
const OPERATION_LIMIT: Duration = Duration::from_secs(15);

/// The member, for the send handler (which the builder registers before the member exists).
static HEDGE: OnceLock<Hedge> = OnceLock::new();

/// Errors of the chaos workload.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Standard output is gone: nothing can be recorded any more.
    #[error("cannot write a record: {0}")]
    Output(#[from] std::io::Error),
}

/// Prints one record as a JSON line (standard output is line-buffered: the line reaches the
/// pipe whole, before a SIGKILL can take it).
fn emit(record: &Record) {
    if let Ok(line) = serde_json::to_string(record) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// A tokio instant on the [`mono_ns`] clock (tokio reads `CLOCK_MONOTONIC` on Linux).
fn ns(at: Instant) -> u64 {
    let now = Instant::now();
    let mono = mono_ns();
    if at <= now {
        mono.saturating_sub(u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX))
    } else {
        mono.saturating_add(u64::try_from((at - now).as_nanos()).unwrap_or(u64::MAX))
    }
}

/// `builder` with the chaos send handler (and the demo's broadcast handler).
pub fn handlers(builder: HedgeBuilder) -> HedgeBuilder {
    crate::handlers::with_demo_handlers(builder).on_send(on_send)
}

/// Whether this member leads under `token` now, by the clock.
fn leads(token: u64) -> bool {
    HEDGE
        .get()
        .is_some_and(|h| h.is_leader() && h.token() == Some(token))
}

async fn on_send(message: Message) -> HandlerResult {
    let id = String::from_utf8_lossy(&message.payload).into_owned();
    let Some(token) = message.token else {
        return Err(HandlerError::new("a send without a term"));
    };
    emit(&Record::HandlerStart {
        t: mono_ns(),
        message: id.clone(),
        token,
    });
    let ended = |completed| {
        emit(&Record::HandlerEnd {
            t: mono_ns(),
            message: id.clone(),
            token,
            completed,
        })
    };
    tokio::select! {
        () = message.cancelled.cancelled() => {
            ended(false);
            return Err(HandlerError::new("the term ended"));
        }
        () = sleep(HANDLER_WORK) => {}
    }
    let t = mono_ns();
    if message.cancelled.is_cancelled() || !leads(token) {
        ended(false);
        return Err(HandlerError::new("the term ended"));
    }
    emit(&Record::HandlerEnd {
        t,
        message: id,
        token,
        completed: true,
    });
    Ok(Bytes::from(token.to_string()))
}

/// Runs the chaos workload until `shutdown` fires.
pub async fn run(state: ApiState, shutdown: CancellationToken) -> Result<(), ChaosError> {
    let hedge = state.hedge().clone();
    // Subscribed first: the election's first grant takes a store round trip at least.
    let events = hedge.events();
    let _ = HEDGE.set(hedge.clone());
    emit(&Record::Start {
        t: mono_ns(),
        member: hedge.member_id().to_owned(),
        incarnation: hedge.incarnation().to_owned(),
        pid: std::process::id(),
    });
    tokio::join!(
        record_leadership(events, shutdown.clone()),
        register_loop(&hedge, &shutdown),
        log_loop(&hedge, &shutdown),
        semaphore_loop(&hedge, &shutdown),
        send_loop(&hedge, &shutdown),
    );
    emit(&Record::Stop { t: mono_ns() });
    Ok(())
}

/// Records every `Elected` and `Lost`.
async fn record_leadership(
    mut events: tokio::sync::broadcast::Receiver<LeadershipEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            // The `Lost` of the release at shutdown comes after the cancellation: keep reading
            // until the stream closes or a moment has passed.
            () = shutdown.cancelled() => match timeout(Duration::from_secs(3), events.recv()).await {
                Ok(e) => e,
                Err(_) => return,
            },
            e = events.recv() => e,
        };
        match event {
            Ok(LeadershipEvent::Elected {
                token,
                since,
                deadline,
            }) => emit(&Record::Elected {
                t: mono_ns(),
                token,
                since: ns(since),
                deadline: ns(deadline),
            }),
            Ok(LeadershipEvent::Lost {
                token,
                reason,
                at,
                deadline,
            }) => emit(&Record::Lost {
                t: mono_ns(),
                token,
                reason: reason_text(&reason),
                at: ns(at),
                deadline: ns(deadline),
            }),
            Ok(_) => {}
            // A lagged stream has lost events: say so on standard error, where the harness
            // keeps it with the member's other diagnostics (the checkers then see a term
            // without its `Lost`, which they treat as ending when the process last ran).
            Err(RecvError::Lagged(n)) => eprintln!("chaos: {n} leadership events lost"),
            Err(RecvError::Closed) => return,
        }
    }
}

fn reason_text(reason: &LostReason) -> String {
    match reason {
        LostReason::Released => "released".into(),
        LostReason::DeadlinePassed => "deadline_passed".into(),
        LostReason::Expired => "expired".into(),
        LostReason::Deposed { .. } => "deposed".into(),
        LostReason::Stopped => "stopped".into(),
        LostReason::Failed { reason } => format!("failed: {reason}"),
    }
}

/// The leader's register updates: read, write the successor fenced on the term's token.
async fn register_loop(hedge: &Hedge, shutdown: &CancellationToken) {
    let log = hedge.log();
    let member = hedge.member_id().to_owned();
    while !shutdown.is_cancelled() {
        let term = tokio::select! {
            () = shutdown.cancelled() => return,
            t = hedge.wait_for_term() => t,
        };
        let Ok(term) = term else {
            sleep(REGISTER_EVERY).await;
            continue;
        };
        let token = term.token;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = term.cancelled.cancelled() => break,
                () = sleep(REGISTER_EVERY) => {}
            }
            // Read the current value, then write its successor under the fence. The read is
            // not in the put's transaction: the fence is what keeps another leader from
            // writing in between (only the current token's puts land).
            let current = match timeout(OPERATION_LIMIT, log.get(REGISTER_KEY)).await {
                Ok(Ok(entry)) => entry,
                _ => continue,
            };
            let (prev_token, prev_seq) = match current {
                None => (0, 0),
                Some(entry) => match serde_json::from_slice::<RegisterValue>(&entry.value) {
                    Ok(v) => (v.token, v.seq),
                    // Unreadable: the checker reports it; nothing sensible to build on.
                    Err(_) => continue,
                },
            };
            seq += 1;
            let value = RegisterValue {
                token,
                seq,
                prev_token,
                prev_seq,
                writer: member.clone(),
            };
            let Ok(bytes) = serde_json::to_vec(&value) else {
                continue;
            };
            let t = mono_ns();
            if term.cancelled.is_cancelled() || !leads(token) {
                break;
            }
            emit(&Record::Act {
                t,
                token,
                what: "register".into(),
            });
            // One idempotency key per update: a retry after an unknown outcome writes it once.
            let options = PutOptions::default()
                .fenced(token)
                .idempotency_key(format!("{token}-{seq}-{}", hedge.incarnation()));
            let mut attempts = 0;
            loop {
                attempts += 1;
                let put = timeout(
                    OPERATION_LIMIT,
                    log.put_with(REGISTER_KEY, bytes.clone(), options.clone()),
                )
                .await;
                match put {
                    Ok(Ok(entry)) => {
                        emit(&Record::RegisterWrite {
                            t: mono_ns(),
                            token,
                            seq,
                            prev_token,
                            prev_seq,
                            version: entry.seq,
                        });
                        break;
                    }
                    Ok(Err(KvError::Fenced { .. })) => {
                        emit(&Record::RegisterFenced {
                            t: mono_ns(),
                            token,
                        });
                        break;
                    }
                    // Unknown: retry the same update (same key) while the term lasts; once it
                    // is over, the fence refuses it anyway, and the next leader reads whatever
                    // landed.
                    _ if attempts < 5
                        && !term.cancelled.is_cancelled()
                        && !shutdown.is_cancelled() =>
                    {
                        sleep(Duration::from_millis(50)).await;
                    }
                    _ => break,
                }
            }
            // An update that may still be unresolved leaves this term: a later read here could
            // miss it.
            if attempts >= 5 {
                break;
            }
        }
    }
}

/// Appends to this member's own log key.
async fn log_loop(hedge: &Hedge, shutdown: &CancellationToken) {
    let log = hedge.log();
    let key = format!("{LOG_PREFIX}{}", hedge.member_id());
    let mut n = 0u64;
    while !shutdown.is_cancelled() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(PUT_EVERY) => {}
        }
        n += 1;
        let idempotency_key = format!("{}-{n}", hedge.incarnation());
        let options = PutOptions::default().idempotency_key(idempotency_key.clone());
        // A retry with the same key must not write a second version.
        for _ in 0..3 {
            let put = timeout(
                OPERATION_LIMIT,
                log.put_with(&key, idempotency_key.clone(), options.clone()),
            )
            .await;
            if let Ok(Ok(entry)) = put {
                emit(&Record::PutAck {
                    t: mono_ns(),
                    key: key.clone(),
                    idempotency_key: idempotency_key.clone(),
                    version: entry.seq,
                });
                break;
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// Acquires a permit, holds it a little while, releases it.
async fn semaphore_loop(hedge: &Hedge, shutdown: &CancellationToken) {
    let semaphore = loop {
        match timeout(OPERATION_LIMIT, hedge.semaphore(SEMAPHORE, SEMAPHORE_LIMIT)).await {
            Ok(Ok(s)) => break s,
            _ => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    };
    while !shutdown.is_cancelled() {
        let acquired = tokio::select! {
            () = shutdown.cancelled() => return,
            a = timeout(OPERATION_LIMIT, semaphore.acquire()) => a,
        };
        let Ok(Ok(permit)) = acquired else {
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let id = permit.id().to_owned();
        let mut deadline = permit.deadline();
        emit(&Record::PermitAcquired {
            t: mono_ns(),
            semaphore: SEMAPHORE.into(),
            permit: id.clone(),
            deadline: ns(deadline),
        });
        let hold = Duration::from_millis(rand::rng().random_range(200..1500));
        let until = Instant::now() + hold;
        let cancelled = permit.cancelled();
        let mut lost = false;
        while Instant::now() < until && !shutdown.is_cancelled() {
            tokio::select! {
                () = cancelled.cancelled() => {}
                () = sleep(PERMIT_POLL) => {}
            }
            // The time before the check: the permit was held at least until then.
            let t = mono_ns();
            if !permit.is_held() {
                emit(&Record::PermitReleased {
                    t,
                    semaphore: SEMAPHORE.into(),
                    permit: id.clone(),
                });
                lost = true;
                break;
            }
            let now_deadline = permit.deadline();
            if now_deadline > deadline {
                deadline = now_deadline;
                emit(&Record::PermitRenewed {
                    t,
                    semaphore: SEMAPHORE.into(),
                    permit: id.clone(),
                    deadline: ns(deadline),
                });
            }
        }
        if !lost {
            emit(&Record::PermitReleased {
                t: mono_ns(),
                semaphore: SEMAPHORE.into(),
                permit: id,
            });
        }
        let _ = timeout(OPERATION_LIMIT, permit.release()).await;
        let pause = Duration::from_millis(rand::rng().random_range(50..400));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(pause) => {}
        }
    }
}

/// Sends to the leader, one message at a time.
async fn send_loop(hedge: &Hedge, shutdown: &CancellationToken) {
    let mut n = 0u64;
    while !shutdown.is_cancelled() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(SEND_EVERY) => {}
        }
        n += 1;
        let message = format!("{}-{}-{n}", hedge.member_id(), hedge.incarnation());
        let started = mono_ns();
        let sent = timeout(OPERATION_LIMIT, hedge.send(message.clone())).await;
        let (outcome, token) = match sent {
            Ok(Ok(reply)) => (
                "ok",
                std::str::from_utf8(&reply)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok()),
            ),
            Ok(Err(e)) if !e.handler_may_have_run() => ("failed", None),
            _ => ("unknown", None),
        };
        emit(&Record::Sent {
            started,
            t: mono_ns(),
            message,
            outcome: outcome.into(),
            token,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_map_onto_the_monotonic_clock() {
        let now = Instant::now();
        let mono = mono_ns();
        let past = ns(now - Duration::from_millis(5));
        let future = ns(now + Duration::from_millis(5));
        // Within a millisecond of the expected values (the two clocks are read a moment apart).
        assert!(past.abs_diff(mono - 5_000_000) < 1_000_000, "{past} {mono}");
        assert!(
            future.abs_diff(mono + 5_000_000) < 1_000_000,
            "{future} {mono}"
        );
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(reason_text(&LostReason::DeadlinePassed), "deadline_passed");
        assert_eq!(
            reason_text(&LostReason::Failed { reason: "Corrupt" }),
            "failed: Corrupt"
        );
    }
}
