//! Multi-member messaging scenarios on real loopback sockets, for every store backend: sends to
//! the leader (and through failovers, at most once), deposed leaders, broadcasts to a member
//! that just joined, many concurrent broadcasts, crashed and leaving members, streams.
//!
//! Each scenario runs in real time (sockets do not follow paused tokio time), so bounds carry
//! [`Params::slack`] for store latency and scheduling on a loaded machine.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hedge::{
    BroadcastOptions, ElectionTimings, GroupSecret, Hedge, HedgeBuilder, HedgeGuard, LeaveReason,
    LockKey, MembershipEvent, MembershipTimings, Message, MessagingError, PeerOptions, SendOptions,
    StreamSession,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, timeout};

use crate::conformance::Backend;

/// The group every scenario uses.
pub const GROUP: &str = "messaging";

/// Timings of a backend's scenarios, and the slack their bounds allow.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Election timings.
    pub election: ElectionTimings,
    /// Membership timings.
    pub membership: MembershipTimings,
    /// What bounds allow for store latency and scheduling.
    pub slack: Duration,
}

impl Params {
    /// Short timings for the in-memory store.
    pub fn memory() -> Self {
        Self {
            election: ElectionTimings::from_lease(Duration::from_secs(1)),
            membership: MembershipTimings {
                heartbeat_interval: Duration::from_millis(200),
                ttl: Duration::from_secs(1),
            },
            slack: Duration::from_millis(500),
        }
    }

    /// Timings for the Spanner emulator, which runs one read-write transaction at a time.
    pub fn spanner() -> Self {
        Self {
            election: ElectionTimings::from_lease(Duration::from_secs(2)),
            membership: MembershipTimings {
                heartbeat_interval: Duration::from_millis(500),
                ttl: Duration::from_secs(3),
            },
            slack: Duration::from_millis(1500),
        }
    }
}

/// One running member.
pub struct Running {
    /// The member.
    pub hedge: Hedge,
    guard: Option<HedgeGuard>,
}

impl Running {
    /// Stops it as a crash would (nothing released, nothing announced, server gone).
    pub fn crash(&mut self) {
        if let Some(g) = self.guard.take() {
            g.abort();
        }
    }

    /// Stops it gracefully.
    pub async fn shutdown(&mut self) {
        if let Some(g) = self.guard.take() {
            g.shutdown(Duration::from_secs(10))
                .await
                .expect("a clean stop");
        }
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| !g.is_finished())
    }
}

/// The secret all scenario members share.
pub fn secret() -> GroupSecret {
    GroupSecret::new("the messaging scenarios' group secret").expect("a valid secret")
}

/// Builds and starts member `id`, configured further by `configure` (handlers).
pub async fn start_member(
    backend: &dyn Backend,
    params: Params,
    id: &str,
    configure: &(dyn Fn(HedgeBuilder) -> HedgeBuilder + Sync),
) -> Running {
    start_member_on(backend.member_store().await, params, id, configure).await
}

/// Builds and starts member `id` of [`GROUP`] on `store` (a backend's store, or a wrapper of
/// one), configured further by `configure`.
pub async fn start_member_on(
    store: Arc<dyn hedge::Store>,
    params: Params,
    id: &str,
    configure: &(dyn Fn(HedgeBuilder) -> HedgeBuilder + Sync),
) -> Running {
    let builder = Hedge::builder(GROUP)
        .member_id(id)
        .shared_store(store)
        .election_timings(params.election)
        .membership_timings(params.membership)
        .peer(PeerOptions::new(secret()).listen("127.0.0.1:0".parse().expect("an address")));
    let hedge = configure(builder).build().await.expect("the member builds");
    let guard = Some(hedge.spawn());
    Running { hedge, guard }
}

/// Starts `n` members `m0..`.
pub async fn start_group(
    backend: &dyn Backend,
    params: Params,
    n: usize,
    configure: &(dyn Fn(HedgeBuilder) -> HedgeBuilder + Sync),
) -> Vec<Running> {
    let mut members = Vec::new();
    for i in 0..n {
        members.push(start_member(backend, params, &format!("m{i}"), configure).await);
    }
    members
}

/// Waits until exactly one running member leads and every running member knows it; its index.
pub async fn wait_for_leader(members: &[Running], limit: Duration) -> usize {
    let found = timeout(limit, async {
        loop {
            let running: Vec<usize> = (0..members.len())
                .filter(|i| members[*i].is_running())
                .collect();
            let leaders: Vec<usize> = running
                .iter()
                .copied()
                .filter(|i| members[*i].hedge.is_leader())
                .collect();
            if let [leader] = leaders.as_slice() {
                let id = members[*leader].hedge.member_id().to_owned();
                if running
                    .iter()
                    .all(|i| members[*i].hedge.leader().is_some_and(|l| l.id == id))
                {
                    return *leader;
                }
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    found.expect("a leader known to every member in time")
}

/// Waits until every running member's view holds exactly the running members.
pub async fn wait_for_views(members: &[Running], limit: Duration) {
    timeout(limit, async {
        loop {
            let mut expected: Vec<String> = members
                .iter()
                .filter(|m| m.is_running())
                .map(|m| m.hedge.member_id().to_owned())
                .collect();
            expected.sort();
            let all = members.iter().filter(|m| m.is_running()).all(|m| {
                let ids: Vec<String> = m.hedge.members().into_iter().map(|m| m.id).collect();
                ids == expected
            });
            if all {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every view converges in time");
}

/// Stops every member gracefully.
pub async fn stop_all(members: &mut [Running]) {
    for m in members.iter_mut() {
        m.shutdown().await;
    }
}

fn echo_token(b: HedgeBuilder) -> HedgeBuilder {
    b.on_send(|m: Message| async move {
        Ok(Bytes::from(format!(
            "{}:{}",
            m.token.unwrap_or(0),
            String::from_utf8_lossy(&m.payload)
        )))
    })
}

/// A send from every member (followers and the leader itself) reaches the leader's handler,
/// which sees the current token, and the reply comes back.
pub async fn send_reaches_the_leader_with_its_token(backend: &dyn Backend, params: Params) {
    let mut members = start_group(backend, params, 3, &echo_token).await;
    let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let token = members[leader].hedge.token().expect("the leader's token");
    for (i, m) in members.iter().enumerate() {
        let reply = m
            .hedge
            .send_with(format!("hello from {i}"), SendOptions::default())
            .await
            .expect("the send is delivered");
        assert_eq!(reply.leader, members[leader].hedge.member_id());
        assert_eq!(reply.token, token);
        assert_eq!(reply.payload, format!("{token}:hello from {i}"));
    }
    stop_all(&mut members).await;
}

/// How the leader goes away in [`sends_during_failover_run_at_most_once`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// The leader's task is aborted: nothing released, nothing announced, server gone.
    Crash,
    /// The leader shuts down gracefully: release, announcements, drained server.
    Graceful,
}

/// Sends keep flowing while the leader is replaced; every send is handled at most once, every
/// successful one exactly once, and sends succeed again under the new leader. `rounds`
/// failovers in a row.
pub async fn sends_during_failover_run_at_most_once(
    backend: &dyn Backend,
    params: Params,
    failover: Failover,
    rounds: usize,
) {
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let configure = {
        let counts = counts.clone();
        move |b: HedgeBuilder| {
            let counts = counts.clone();
            b.on_send(move |m: Message| {
                let counts = counts.clone();
                async move {
                    let id = String::from_utf8_lossy(&m.payload).into_owned();
                    *counts.lock().expect("counts").entry(id).or_default() += 1;
                    Ok(Bytes::from_static(b"ok"))
                }
            })
        }
    };
    let mut members = start_group(backend, params, 3, &configure).await;
    let mut outcomes: Vec<(String, Result<(), String>, bool)> = Vec::new();
    for round in 0..rounds {
        let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
        wait_for_views(&members, params.membership.ttl * 2 + params.slack).await;
        let sender = (0..members.len())
            .rev()
            .find(|i| *i != leader && members[*i].is_running())
            .expect("a follower");
        let hedge = members[sender].hedge.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut senders = Vec::new();
        for worker in 0..4 {
            let (hedge, stop) = (hedge.clone(), stop.clone());
            let timeout = params.election.lease * 3 + params.slack;
            senders.push(tokio::spawn(async move {
                let mut results = Vec::new();
                let mut seq = 0;
                while !stop.is_cancelled() {
                    let id = format!("r{round}-w{worker}-{seq}");
                    seq += 1;
                    let result = hedge.send_with(id.clone(), SendOptions { timeout }).await;
                    let may_have_run = result
                        .as_ref()
                        .err()
                        .is_none_or(MessagingError::handler_may_have_run);
                    results.push((
                        id,
                        result.map(|_| ()).map_err(|e| e.to_string()),
                        may_have_run,
                    ));
                }
                results
            }));
        }
        sleep(Duration::from_millis(100)).await;
        let old = members[leader].hedge.member_id().to_owned();
        match failover {
            Failover::Crash => members[leader].crash(),
            Failover::Graceful => members[leader].shutdown().await,
        }
        // Replace the departed member so the group keeps three.
        let replacement = format!("m{}", 3 + round);
        members.push(start_member(backend, params, &replacement, &configure).await);
        let new_leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
        assert_ne!(members[new_leader].hedge.member_id(), old);
        // Let sends flow under the new leader for a moment.
        sleep(Duration::from_millis(200)).await;
        stop.cancel();
        for s in senders {
            outcomes.extend(s.await.expect("a sender task"));
        }
    }
    let counts = counts.lock().expect("counts").clone();
    let mut delivered = 0;
    for (id, result, may_have_run) in &outcomes {
        let runs = counts.get(id).copied().unwrap_or(0);
        assert!(runs <= 1, "send {id} ran {runs} times");
        match result {
            Ok(()) => {
                assert_eq!(runs, 1, "successful send {id} ran {runs} times");
                delivered += 1;
            }
            Err(e) => assert!(
                *may_have_run || runs == 0,
                "send {id} failed with an error saying nothing ran, yet it ran: {e}"
            ),
        }
    }
    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, r, _)| r.as_ref().err())
        .collect();
    assert!(
        delivered > rounds * 4,
        "sends were delivered ({delivered}); failures: {failed:?}"
    );
    // A graceful handover drains the old leader's sends before it releases, so its failures can
    // only come from a term lost some other way (a renewal late on a loaded machine): rare.
    if failover == Failover::Graceful {
        assert!(
            failed.len() <= rounds,
            "graceful handovers failed {} sends: {failed:?}",
            failed.len()
        );
    }
    stop_all(&mut members).await;
}

/// A leader that is deposed while its handler runs: the handler's token fires, the caller
/// learns the outcome is unknown (no retry), and the deposed member refuses further sends.
pub async fn deposed_leader_cancels_its_handler_and_refuses(backend: &dyn Backend, params: Params) {
    let (tokens_tx, mut tokens) = tokio::sync::mpsc::unbounded_channel();
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let configure = {
        let runs = runs.clone();
        move |b: HedgeBuilder| {
            let (tokens_tx, runs) = (tokens_tx.clone(), runs.clone());
            b.on_send(move |m: Message| {
                let (tokens_tx, runs) = (tokens_tx.clone(), runs.clone());
                async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tokens_tx.send(m.cancelled.clone());
                    m.cancelled.cancelled().await;
                    Err("cancelled".into())
                }
            })
        }
    };
    let mut members = start_group(backend, params, 3, &configure).await;
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let key = LockKey::new(GROUP, LockKey::LEADER);
    for _attempt in 0..10 {
        let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
        let follower = (leader + 1) % members.len();
        let hedge = members[follower].hedge.clone();
        let send = tokio::spawn(async move {
            hedge
                .send_with(
                    "block",
                    SendOptions {
                        timeout: Duration::from_secs(30),
                    },
                )
                .await
        });
        let cancelled = timeout(Duration::from_secs(5), tokens.recv())
            .await
            .expect("the handler started")
            .expect("a token");
        runs.store(0, std::sync::atomic::Ordering::SeqCst);
        // Depose the leader behind its back.
        backend.delete_lock_row(&key).await;
        timeout(params.election.lease + params.slack, cancelled.cancelled())
            .await
            .expect("the deposed leader's handler is cancelled");
        let result = send.await.expect("the send task");
        match result {
            Err(e @ MessagingError::OutcomeUnknown { .. }) => assert!(e.handler_may_have_run()),
            other => panic!(
                "a send whose handler was cancelled must report an unknown outcome, got {other:?}"
            ),
        }
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the send was not run again"
        );
        let new_leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
        if new_leader == leader {
            // It won the next election; depose it again.
            continue;
        }
        // The deposed member refuses a send addressed to it, running nothing.
        let address = members[leader]
            .hedge
            .peer_address()
            .expect("an address")
            .to_owned();
        let client = hedge::peer::PeerClient::new(
            hedge::peer::Authenticator::new(GROUP, "probe", &secret()),
            None,
            1024,
            Duration::from_secs(10),
        );
        let e = client
            .call_bytes(
                &address,
                hedge::peer::wire::ROUTE_SEND,
                Bytes::from_static(b"x"),
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .expect_err("a deposed member refuses");
        assert_eq!(
            e.remote_kind(),
            Some(hedge::peer::ErrorKind::NotLeader),
            "{e}"
        );
        assert!(!e.handler_may_have_run());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
        stop_all(&mut members).await;
        return;
    }
    panic!("the deposed leader won every re-election");
}

fn reply_own_id(b: HedgeBuilder) -> HedgeBuilder {
    b.on_broadcast(|m: Message| async move { Ok(m.payload) })
}

fn configure_id_reply(id: String) -> impl Fn(HedgeBuilder) -> HedgeBuilder + Sync {
    move |b: HedgeBuilder| {
        let id = id.clone();
        b.on_broadcast(move |_m: Message| {
            let id = id.clone();
            async move { Ok(Bytes::from(id)) }
        })
    }
}

/// Waits for `Joined { id }` on `events`; how long it took.
async fn wait_joined(
    events: &mut broadcast::Receiver<MembershipEvent>,
    id: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(MembershipEvent::Joined { member }) if member.id == id => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} joined the view in time"));
    started.elapsed()
}

/// A broadcast reaches every member, including one that joined a moment before.
pub async fn broadcast_reaches_every_member_including_a_new_one(
    backend: &dyn Backend,
    params: Params,
) {
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            start_member(
                backend,
                params,
                &format!("m{i}"),
                &configure_id_reply(format!("m{i}")),
            )
            .await,
        );
    }
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let mut events = members[0].hedge.membership();
    members.push(start_member(backend, params, "m3", &configure_id_reply("m3".into())).await);
    // Pushed, not polled: well within one heartbeat interval plus the store's latency.
    wait_joined(
        &mut events,
        "m3",
        params.membership.heartbeat_interval + params.slack,
    )
    .await;
    let results = members[0]
        .hedge
        .broadcast("who", BroadcastOptions::default())
        .await;
    let replies: BTreeMap<String, String> = results
        .into_iter()
        .map(|(id, r)| {
            (
                id,
                String::from_utf8_lossy(&r.expect("delivered")).into_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> =
        (0..4).map(|i| (format!("m{i}"), format!("m{i}"))).collect();
    assert_eq!(replies, expected);
    // Skipping itself, and only listed members.
    let skip = members[0]
        .hedge
        .broadcast("who", BroadcastOptions::default().skip_self())
        .await;
    assert_eq!(skip.keys().cloned().collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    let only = members[0]
        .hedge
        .broadcast("who", BroadcastOptions::default().only(["m2", "nobody"]))
        .await;
    assert!(only["m2"].is_ok());
    assert!(matches!(
        only["nobody"],
        Err(MessagingError::NotAMember { .. })
    ));
    stop_all(&mut members).await;
}

/// `n` members broadcast concurrently, `rounds` times each; every broadcast finishes with every
/// member's reply.
pub async fn concurrent_broadcasts_all_finish(
    backend: &dyn Backend,
    params: Params,
    n: usize,
    rounds: usize,
) {
    let mut members = start_group(backend, params, n, &reply_own_id).await;
    // Many members share one emulator, which runs one transaction at a time: allow a few TTLs.
    wait_for_views(&members, params.membership.ttl * 4 + params.slack).await;
    let tasks: Vec<_> = members
        .iter()
        .map(|m| {
            let hedge = m.hedge.clone();
            tokio::spawn(async move {
                for r in 0..rounds {
                    let results = hedge
                        .broadcast(format!("{r}"), BroadcastOptions::default())
                        .await;
                    assert_eq!(results.len(), n, "every member answered");
                    for (id, result) in results {
                        assert_eq!(
                            result.unwrap_or_else(|e| panic!("{id}: {e}")),
                            format!("{r}")
                        );
                    }
                }
            })
        })
        .collect();
    timeout(
        Duration::from_secs(60),
        futures::future::try_join_all(tasks),
    )
    .await
    .expect("every broadcast finished (no deadlock)")
    .expect("no broadcast task failed");
    stop_all(&mut members).await;
}

/// Waits on every `events` for `Left { id }`; the reasons seen.
async fn wait_left(
    events: Vec<broadcast::Receiver<MembershipEvent>>,
    id: &str,
    limit: Duration,
) -> Vec<LeaveReason> {
    let waits = events.into_iter().map(|mut events| async move {
        timeout(limit, async {
            loop {
                match events.recv().await {
                    Ok(MembershipEvent::Left {
                        id: left, reason, ..
                    }) if left == id => return reason,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} left the view within {limit:?}"))
    });
    futures::future::join_all(waits).await
}

/// A killed member leaves every view within its TTL (plus one refresh), and the event names it;
/// a graceful leave is seen by every member within a second.
pub async fn departures_reach_every_view(backend: &dyn Backend, params: Params) {
    let mut members = start_group(backend, params, 4, &reply_own_id).await;
    wait_for_views(&members, params.membership.ttl * 2 + params.slack).await;

    let events: Vec<_> = members[..3].iter().map(|m| m.hedge.membership()).collect();
    let killed_at = Instant::now();
    members[3].crash();
    let limit = params.membership.ttl + params.membership.heartbeat_interval + params.slack;
    let reasons = wait_left(events, "m3", limit).await;
    assert!(
        reasons.iter().all(|r| *r == LeaveReason::Expired),
        "{reasons:?}"
    );
    assert!(killed_at.elapsed() <= limit);

    let events: Vec<_> = members[..2].iter().map(|m| m.hedge.membership()).collect();
    members[2].shutdown().await;
    let reasons = wait_left(events, "m2", Duration::from_secs(1)).await;
    assert!(
        reasons.iter().all(|r| *r == LeaveReason::Left),
        "{reasons:?}"
    );
    stop_all(&mut members).await;
}

/// Many concurrent streams to the leader, and a streamed broadcast: each stream sees only its
/// own messages, in order.
pub async fn concurrent_streams_never_mix(backend: &dyn Backend, params: Params) {
    let configure = |b: HedgeBuilder| {
        b.on_leader_stream(|mut s: StreamSession| async move {
            while let Some(Ok(m)) = s.incoming.recv().await {
                if s.outgoing.send(m).await.is_err() {
                    return;
                }
            }
        })
        .on_broadcast_stream(|mut s: StreamSession| async move {
            while let Some(Ok(m)) = s.incoming.recv().await {
                let tagged = format!("{}|{}", s.sender, String::from_utf8_lossy(&m));
                if s.outgoing.send(tagged).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut members = start_group(backend, params, 3, &configure).await;
    let leader = wait_for_leader(&members, params.election.lease * 4 + params.slack).await;
    wait_for_views(&members, params.membership.ttl + params.slack).await;
    let mut tasks = Vec::new();
    for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != leader) {
        for k in 0..4 {
            let hedge = m.hedge.clone();
            tasks.push(tokio::spawn(async move {
                let stream = hedge
                    .stream_to_leader()
                    .await
                    .expect("a stream to the leader");
                let (tx, mut rx) = stream.split();
                let writer = tokio::spawn(async move {
                    for j in 0..100 {
                        tx.send(format!("{i}-{k}-{j}")).await.expect("send");
                    }
                });
                for j in 0..100 {
                    let got = rx.recv().await.expect("a message").expect("no error");
                    assert_eq!(
                        got,
                        format!("{i}-{k}-{j}"),
                        "stream {i}-{k} saw a foreign or reordered message"
                    );
                }
                writer.await.expect("writer");
            }));
        }
    }
    timeout(
        Duration::from_secs(60),
        futures::future::try_join_all(tasks),
    )
    .await
    .expect("streams finished")
    .expect("no stream failed");

    let streams = members[0]
        .hedge
        .stream_broadcast(BroadcastOptions::default())
        .await;
    assert_eq!(streams.len(), 3);
    for (id, stream) in streams {
        let mut stream = stream.expect("a stream to every member");
        for j in 0..10 {
            stream.send(format!("{j}")).await.expect("send");
            let got = stream.recv().await.expect("a reply").expect("no error");
            assert_eq!(got, format!("m0|{j}"), "the stream to {id}");
        }
    }
    stop_all(&mut members).await;
}
