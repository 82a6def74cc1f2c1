//! `hedge-demo local`: a whole group in one process, walked through every feature with a line
//! of output each, then a report (text, or JSON with `--json`).
//!
//! The members run on the embedded in-memory store by default (or Spanner, see [`Backend`]),
//! each with its own peer port on loopback and the same group secret, exactly as pods would
//! talk to each other. The steps, in order:
//!
//! 1. **election**: who leads, with which fencing token (and that exactly one member leads);
//! 2. **membership**: every member sees every other (joins are pushed);
//! 3. **put/get**: a follower appends to the group's log and another member reads it back;
//! 4. **send**: a follower sends to the leader's handler and gets its reply;
//! 5. **broadcast**: a follower broadcasts and every member's handler replies;
//! 6. **semaphore**: every member contends for a semaphore of limit 2, twice each, and the
//!    number of permits held at once is counted (never above 2);
//! 7. **failover**: the leader is stopped abruptly (nothing released) and the time until the
//!    next leader is measured;
//! 8. **handover**: that leader is stopped gracefully (it releases and tells the others) and
//!    the time until the next leader is measured.
//!
//! With `--serve` the stopped members are started again and every member serves the HTTP API
//! (see [`crate::api`]) until Ctrl-C; the URLs and curl lines to try are printed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hedge::{
    BroadcastOptions, ElectionTimings, GroupSecret, Hedge, HedgeError, HedgeGuard, KvError,
    MessagingError, PeerOptions, SemaphoreError, SendOptions,
};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiError, ApiState};
use crate::backend::{Backend, BackendError};
use crate::handlers::{broadcast_reply, send_reply, with_demo_handlers};
use crate::report::{Report, Step, seconds};

/// The group every local member joins.
pub const GROUP: &str = "local-demo";

/// The semaphore the members contend for, and its limit.
pub const SEMAPHORE: &str = "local-demo-jobs";
/// The semaphore's limit.
pub const SEMAPHORE_LIMIT: u32 = 2;
/// How many permits each member acquires, one after the other.
const SEMAPHORE_ROUNDS: usize = 2;
/// How long each permit is held.
const SEMAPHORE_HOLD: Duration = Duration::from_millis(100);

/// What `hedge-demo local` was asked to do.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// How many members (at least 3: the handover needs a member left after the failover).
    pub members: usize,
    /// The election timings.
    pub timings: ElectionTimings,
    /// Print the report as one JSON object on stdout (the steps go to stderr).
    pub json: bool,
    /// Keep the members running with their HTTP APIs on these ports (base port; 0 for free
    /// ports) after the walkthrough.
    pub serve: Option<u16>,
}

/// Why the walkthrough failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The store could not be prepared.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A member could not be built or stopped on an error.
    #[error(transparent)]
    Hedge(#[from] HedgeError),
    /// A member could not serve its HTTP API.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Something did not happen in time.
    #[error("{step}: {what} did not happen within {waited:?}")]
    Timeout {
        /// The step.
        step: &'static str,
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// A step saw something it must not.
    #[error("{step}: {message}")]
    Step {
        /// The step.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A put or get failed.
    #[error("put/get: {0}")]
    Log(#[from] KvError),
    /// The semaphore failed.
    #[error("semaphore: {0}")]
    Semaphore(#[from] SemaphoreError),
    /// A send or broadcast failed.
    #[error("{step}: {source}")]
    Messaging {
        /// The step.
        step: &'static str,
        /// The error.
        #[source]
        source: MessagingError,
    },
}

/// One member of the local group.
struct LocalMember {
    id: String,
    hedge: Hedge,
    /// `None` once the member is stopped.
    guard: Option<HedgeGuard>,
    /// The member's metrics, until its HTTP API takes them.
    registry: Option<Registry>,
}

impl LocalMember {
    fn running(&self) -> bool {
        self.guard.is_some()
    }
}

/// Prints the steps: on stdout, or on stderr when stdout carries the JSON report.
struct Output {
    json: bool,
    total_steps: usize,
    done: usize,
}

impl Output {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn step(&mut self, report: &mut Report, name: &'static str, started: Instant, detail: String) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.done += 1;
        self.line(&format!(
            "[{}/{}] {name:<10} {detail} ({})",
            self.done,
            self.total_steps,
            seconds(ms)
        ));
        report.steps.push(Step { name, ms, detail });
    }
}

/// Waits (polling every 2 ms, the checks are local) until `check` gives a value, printing a
/// progress line on stderr every second; fails after `within`.
async fn wait_for<T>(
    step: &'static str,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, LocalError> {
    let started = Instant::now();
    let mut next_progress = started + Duration::from_secs(1);
    loop {
        if let Some(found) = check() {
            return Ok(found);
        }
        let now = Instant::now();
        if now - started >= within {
            return Err(LocalError::Timeout {
                step,
                what: what.to_owned(),
                waited: within,
            });
        }
        if now >= next_progress {
            eprintln!(
                "      … {what} ({})",
                seconds((now - started).as_secs_f64() * 1000.0)
            );
            let _ = std::io::stderr().flush();
            next_progress += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The running member that leads now, with its token.
fn current_leader(members: &[LocalMember]) -> Option<(usize, u64)> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.running())
        .find_map(|(i, m)| m.hedge.token().map(|t| (i, t)))
}

/// Waits until a running member leads; fails at once, with its error, when a member stopped
/// by itself (an error retrying cannot fix: a missing table, say).
async fn wait_for_leader(
    step: &'static str,
    what: &str,
    within: Duration,
    members: &mut [LocalMember],
) -> Result<(usize, u64), LocalError> {
    let found = wait_for(step, what, within, || {
        let stopped = members
            .iter()
            .position(|m| m.guard.as_ref().is_some_and(HedgeGuard::is_finished));
        match stopped {
            Some(i) => Some(Err(i)),
            None => current_leader(members).map(Ok),
        }
    })
    .await?;
    match found {
        Ok(leader) => Ok(leader),
        Err(i) => {
            let id = members[i].id.clone();
            let result = match members[i].guard.take() {
                Some(guard) => guard.wait().await,
                None => Ok(()),
            };
            Err(LocalError::Step {
                step,
                message: match result {
                    Err(e) => format!("{id} stopped: {e}"),
                    Ok(()) => format!("{id} stopped"),
                },
            })
        }
    }
}

async fn start_member(
    backend: &Backend,
    id: &str,
    timings: ElectionTimings,
    secret: &GroupSecret,
) -> Result<LocalMember, HedgeError> {
    let mut registry = Registry::default();
    let peer = PeerOptions::new(secret.clone()).listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let builder = Hedge::builder(GROUP)
        .member_id(id)
        .election_timings(timings)
        .peer(peer)
        .metrics(&mut registry);
    let hedge = with_demo_handlers(backend.attach(builder)).build().await?;
    let guard = Some(hedge.spawn());
    Ok(LocalMember {
        id: id.to_owned(),
        hedge,
        guard,
        registry: Some(registry),
    })
}

/// Runs the walkthrough on `backend`; returns the report (already printed).
pub async fn run(options: LocalOptions, backend: Backend) -> Result<Report, LocalError> {
    let began = Instant::now();
    let timings = options.timings;
    let count = options.members;
    let mut out = Output {
        json: options.json,
        total_steps: 8,
        done: 0,
    };
    let mut report = Report {
        members: count,
        store: backend.kind(),
        lease_ms: u64::try_from(timings.lease.as_millis()).unwrap_or(u64::MAX),
        ..Report::default()
    };
    out.line(&format!(
        "hedge local walkthrough: {count} members on {} (lease {:?}, renew every {:?}, poll every \
         {:?}, safety margin {:?})",
        backend.describe(),
        timings.lease,
        timings.renew_interval,
        timings.poll_interval,
        timings.safety_margin
    ));
    let secret = GroupSecret::random();
    // A slow store (an emulator on a busy machine) gets more time than the lease alone.
    let election_bound = timings.lease * 2 + timings.poll_interval * 2 + Duration::from_secs(10);

    // 1. Election.
    let started = Instant::now();
    let mut members = Vec::with_capacity(count);
    for i in 1..=count {
        members.push(start_member(&backend, &format!("member-{i}"), timings, &secret).await?);
    }
    let (first, token) = wait_for_leader(
        "election",
        "electing a leader",
        election_bound,
        &mut members,
    )
    .await?;
    let leaders_at_once = members.iter().filter(|m| m.hedge.is_leader()).count();
    if leaders_at_once != 1 {
        return Err(LocalError::Step {
            step: "election",
            message: format!("{leaders_at_once} members believe they lead"),
        });
    }
    report.leader = members[first].id.clone();
    report.token = token;
    report.leaders_at_once = leaders_at_once;
    out.step(
        &mut report,
        "election",
        started,
        format!("{} leads with fencing token {token}", members[first].id),
    );

    // 2. Membership: joins are pushed, so every view fills within a round trip of the first
    // heartbeat.
    let started = Instant::now();
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    wait_for(
        "membership",
        "every member seeing every other",
        Duration::from_secs(30),
        || {
            members
                .iter()
                .all(|m| m.hedge.members().len() == count)
                .then_some(())
        },
    )
    .await?;
    out.step(
        &mut report,
        "membership",
        started,
        format!("every member sees {count}: {}", ids.join(", ")),
    );

    // 3. Put from a follower, get from another member.
    let started = Instant::now();
    let follower = (first + 1) % count;
    let reader = (first + 2) % count;
    let (key, value) = ("samplekey", "samplevalue");
    let written = members[follower].hedge.log().put(key, value).await?;
    let read = members[reader].hedge.log().get_str(key).await?;
    report.put_get_ok = read.as_deref() == Some(value);
    if !report.put_get_ok {
        return Err(LocalError::Step {
            step: "put/get",
            message: format!(
                "{} read {read:?} after {} put {value:?}",
                members[reader].id, members[follower].id
            ),
        });
    }
    out.step(
        &mut report,
        "put/get",
        started,
        format!(
            "{} put {key}={value} (version {}), {} read back {value:?}",
            members[follower].id, written.seq, members[reader].id
        ),
    );

    // 4. Send, from a follower.
    let started = Instant::now();
    let message = "hello-world";
    let reply = members[follower]
        .hedge
        .send_with(message, SendOptions::default())
        .await
        .map_err(|source| LocalError::Messaging {
            step: "send",
            source,
        })?;
    let reply_text = String::from_utf8_lossy(&reply.payload).into_owned();
    if reply_text != send_reply(message.as_bytes()) || reply.leader != report.leader {
        return Err(LocalError::Step {
            step: "send",
            message: format!("{} answered {reply_text:?}", reply.leader),
        });
    }
    report.send_from = members[follower].id.clone();
    report.send_reply = reply_text.clone();
    out.step(
        &mut report,
        "send",
        started,
        format!(
            "{} -> leader {} (token {}): {message:?} -> {reply_text:?}",
            members[follower].id, reply.leader, reply.token
        ),
    );

    // 5. Broadcast, from the same follower.
    let started = Instant::now();
    let message = "hello-all";
    let replies = members[follower]
        .hedge
        .broadcast(message, BroadcastOptions::default())
        .await;
    let expected = Bytes::from(broadcast_reply(message.as_bytes()));
    let mut answered = BTreeMap::new();
    for (member, result) in replies {
        match result {
            Ok(reply) if reply == expected => {
                answered.insert(member, String::from_utf8_lossy(&reply).into_owned());
            }
            Ok(reply) => {
                return Err(LocalError::Step {
                    step: "broadcast",
                    message: format!("{member} answered {reply:?}"),
                });
            }
            Err(source) => {
                return Err(LocalError::Messaging {
                    step: "broadcast",
                    source,
                });
            }
        }
    }
    if answered.len() != count {
        return Err(LocalError::Step {
            step: "broadcast",
            message: format!("{} of {count} members replied", answered.len()),
        });
    }
    report.broadcast_replies = answered.len();
    out.step(
        &mut report,
        "broadcast",
        started,
        format!(
            "{} -> {count} members, each replied {:?}",
            members[follower].id,
            broadcast_reply(message.as_bytes())
        ),
    );
    report.broadcast = answered;

    // 6. Semaphore: every member contends for a limit of 2.
    let started = Instant::now();
    let contention = contend(&members).await?;
    report.semaphore_limit = SEMAPHORE_LIMIT;
    report.semaphore_max_held = contention.max_held;
    report.semaphore_grants = contention.grants;
    if contention.max_held > SEMAPHORE_LIMIT as usize {
        return Err(LocalError::Step {
            step: "semaphore",
            message: format!(
                "{} permits were held at once, over the limit of {SEMAPHORE_LIMIT}",
                contention.max_held
            ),
        });
    }
    out.step(
        &mut report,
        "semaphore",
        started,
        format!(
            "{count} members acquired {SEMAPHORE} (limit {SEMAPHORE_LIMIT}) {SEMAPHORE_ROUNDS} \
             times each, {} grants with tokens {}..={}; at most {} held at once",
            contention.grants, contention.tokens.0, contention.tokens.1, contention.max_held
        ),
    );

    // 7. Failover: the leader crashes (its task is aborted: nothing is released).
    let crashed = first;
    report.crashed = members[crashed].id.clone();
    let started = Instant::now();
    if let Some(guard) = members[crashed].guard.take() {
        guard.abort();
    }
    let what = format!(
        "waiting for {}'s lease to run out and a candidate to take over",
        members[crashed].id
    );
    let (second, second_token) =
        wait_for_leader("failover", &what, election_bound, &mut members).await?;
    let failover = started.elapsed();
    check_token_increases("failover", token, second_token)?;
    report.failover_ms = failover.as_secs_f64() * 1000.0;
    report.failover_leader = members[second].id.clone();
    report.failover_token = second_token;
    let detail = format!(
        "{} crashed (nothing released); {} took over with token {second_token} once the lease \
         ran out (lease {}, poll ≤ {})",
        members[crashed].id,
        members[second].id,
        seconds(timings.lease.as_secs_f64() * 1000.0),
        seconds(timings.poll_interval.as_secs_f64() * 1000.0),
    );
    out.step(&mut report, "failover", started, detail);

    // 8. Graceful handover: the new leader stops; it releases its term and tells the others.
    let stopped = second;
    report.stopped = members[stopped].id.clone();
    let started = Instant::now();
    let stopping = members[stopped]
        .guard
        .take()
        .map(|guard| tokio::spawn(guard.shutdown(timings.lease)));
    let what = format!(
        "waiting for a candidate to take over from {}",
        members[stopped].id
    );
    let (third, third_token) =
        wait_for_leader("handover", &what, election_bound, &mut members).await?;
    let handover = started.elapsed();
    if let Some(task) = stopping {
        match task.await {
            Ok(result) => result?,
            Err(e) => {
                return Err(LocalError::Step {
                    step: "handover",
                    message: format!("stopping {} failed: {e}", members[stopped].id),
                });
            }
        }
    }
    check_token_increases("handover", second_token, third_token)?;
    report.handover_ms = handover.as_secs_f64() * 1000.0;
    report.handover_leader = members[third].id.clone();
    report.handover_token = third_token;
    let detail = format!(
        "{} stopped gracefully (released its term, told the others); {} took over with token \
         {third_token}",
        members[stopped].id, members[third].id
    );
    out.step(&mut report, "handover", started, detail);

    report.duration_ms = began.elapsed().as_secs_f64() * 1000.0;
    if options.json {
        println!("{}", report.to_json());
    } else {
        out.line(&report.summary());
    }

    match options.serve {
        Some(port) => serve(members, &backend, timings, &secret, port).await?,
        None => stop_all(&mut members, timings).await?,
    }
    Ok(report)
}

/// What the semaphore step saw.
struct Contention {
    /// The most permits held at once.
    max_held: usize,
    /// How many permits were granted.
    grants: usize,
    /// The lowest and highest permit token granted.
    tokens: (u64, u64),
}

/// Every member acquires [`SEMAPHORE`] [`SEMAPHORE_ROUNDS`] times, holding each permit
/// [`SEMAPHORE_HOLD`]; counts how many are held at once (counted up after the grant and down
/// before the release, so the count never exceeds what the store granted).
async fn contend(members: &[LocalMember]) -> Result<Contention, LocalError> {
    let held = Arc::new(AtomicUsize::new(0));
    let max_held = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for member in members.iter().filter(|m| m.running()) {
        let semaphore = member.hedge.semaphore(SEMAPHORE, SEMAPHORE_LIMIT).await?;
        let (held, max_held) = (held.clone(), max_held.clone());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(SEMAPHORE_ROUNDS);
            for _ in 0..SEMAPHORE_ROUNDS {
                let permit = semaphore.acquire().await?;
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                max_held.fetch_max(now, Ordering::SeqCst);
                tokens.push(permit.token());
                tokio::time::sleep(SEMAPHORE_HOLD).await;
                held.fetch_sub(1, Ordering::SeqCst);
                permit.release().await?;
            }
            Ok::<_, SemaphoreError>(tokens)
        }));
    }
    let mut tokens = Vec::new();
    for task in futures::future::join_all(tasks).await {
        match task {
            Ok(result) => tokens.extend(result?),
            Err(e) => {
                return Err(LocalError::Step {
                    step: "semaphore",
                    message: format!("a contending task failed: {e}"),
                });
            }
        }
    }
    Ok(Contention {
        max_held: max_held.load(Ordering::SeqCst),
        grants: tokens.len(),
        tokens: (
            tokens.iter().copied().min().unwrap_or(0),
            tokens.iter().copied().max().unwrap_or(0),
        ),
    })
}

fn check_token_increases(step: &'static str, before: u64, after: u64) -> Result<(), LocalError> {
    if after > before {
        Ok(())
    } else {
        Err(LocalError::Step {
            step,
            message: format!("token {after} does not exceed the previous term's {before}"),
        })
    }
}

/// Stops every running member gracefully.
async fn stop_all(members: &mut [LocalMember], timings: ElectionTimings) -> Result<(), LocalError> {
    let stops: Vec<_> = members
        .iter_mut()
        .filter_map(|m| m.guard.take())
        .map(|guard| guard.shutdown(timings.lease))
        .collect();
    for result in futures::future::join_all(stops).await {
        result?;
    }
    Ok(())
}

/// Starts the stopped members again, serves every member's HTTP API on loopback (ports
/// `base`, `base + 1`, ...; free ports when `base` is 0) and prints what to try; returns on
/// Ctrl-C (or SIGTERM), after stopping everything.
async fn serve(
    mut members: Vec<LocalMember>,
    backend: &Backend,
    timings: ElectionTimings,
    secret: &GroupSecret,
    base: u16,
) -> Result<(), LocalError> {
    for member in &mut members {
        if !member.running() {
            *member = start_member(backend, &member.id, timings, secret).await?;
        }
    }
    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for (i, member) in members.iter_mut().enumerate() {
        let port = if base == 0 {
            0
        } else {
            base.checked_add(u16::try_from(i).unwrap_or(u16::MAX))
                .ok_or_else(|| LocalError::Step {
                    step: "serve",
                    message: format!("--http-port {base} leaves no room for {i} more ports"),
                })?
        };
        let listener = api::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            source,
        })?;
        let state = ApiState::new(
            member.hedge.clone(),
            member.registry.take().unwrap_or_default(),
            api::DEFAULT_MAX_BODY_BYTES,
        );
        servers.push(tokio::spawn(api::serve(listener, state, shutdown.clone())));
        urls.push((
            member.id.clone(),
            addr,
            member.hedge.peer_address().map(str::to_owned),
        ));
    }
    println!("\nthe group keeps running; each member serves its HTTP API (Ctrl-C stops them):");
    for (id, addr, peer) in &urls {
        println!(
            "  {id:<10} http://{addr}   (peer transport on {})",
            peer.as_deref().unwrap_or("-")
        );
    }
    println!("try:");
    for line in curl_lines(&urls.iter().map(|(_, addr, _)| *addr).collect::<Vec<_>>()) {
        println!("  {line}");
    }
    crate::signals::wait_for_termination().await;
    eprintln!("stopping the members");
    shutdown.cancel();
    stop_all(&mut members, timings).await?;
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// The curl lines of the Go demo's walkthrough (and this API's own routes) for members
/// serving at `addrs`: requests go to different members, so that followers are seen
/// forwarding to the leader.
pub fn curl_lines(addrs: &[SocketAddr]) -> Vec<String> {
    let at = |i: usize| {
        let addr = addrs[i % addrs.len().max(1)];
        format!("localhost:{}", addr.port())
    };
    if addrs.is_empty() {
        return Vec::new();
    }
    vec![
        format!("curl {}/put -d \"samplekey samplevalue\"", at(0)),
        format!("curl {}/get -d \"samplekey\"", at(1)),
        format!("curl {}/send -d \"hello-world\"", at(1)),
        format!("curl {}/broadcast -d \"hello-all\"", at(2)),
        format!("curl {}/members", at(0)),
        format!("curl -H 'Accept: application/json' {}/leader", at(1)),
        format!("curl -X POST '{}/semaphore/jobs/acquire?limit=2'", at(0)),
        format!("curl -X POST {}/semaphore/jobs/release", at(0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_lines_spread_over_the_members() {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let lines = curl_lines(&addrs);
        assert_eq!(
            lines[0],
            "curl localhost:8081/put -d \"samplekey samplevalue\""
        );
        assert!(lines.contains(&"curl localhost:8082/get -d \"samplekey\"".to_owned()));
        assert!(lines.contains(&"curl localhost:8082/send -d \"hello-world\"".to_owned()));
        assert!(lines.contains(&"curl localhost:8083/broadcast -d \"hello-all\"".to_owned()));
        assert!(curl_lines(&[]).is_empty());
    }
}
