//! The member's messaging state and its client side: where the leader is, sending with
//! re-routing, broadcasting, opening streams, announcing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::{debug, warn};

use super::announce::{Announce, Announcement};
use super::stream::{self, PeerStream, StreamReceiver};
use super::{
    BroadcastOptions, BroadcastReply, Handlers, Message, MessagingError, Reply, SendOptions,
};
use crate::election::Election;
use crate::membership::{LeaveReason, Member, MemberView};
use crate::metrics::{GroupLabels, Metrics};
use crate::peer::body::ResponseBody;
use crate::peer::wire::{self, ErrorBody, ErrorKind, LeaderHint};
use crate::peer::{PeerClient, PeerError};

/// The first pause before re-routing a send; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// The longest pause between two attempts of a send.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Leadership learned by push and by "not leader" replies, on top of the election's own view.
#[derive(Debug, Default)]
struct PushedLeader {
    /// The newest leader announced (highest token).
    elected: Option<LeaderHint>,
    /// The newest released term: a leader with this id and a token up to this one is gone.
    released: Option<(String, u64)>,
}

/// Sends in flight on this member, and whether it stopped taking new ones (a graceful
/// handover drains them before the term is released, so none is cut off by the release).
#[derive(Debug, Default)]
struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts one send in flight while it lives.
struct InFlight<'a>(&'a Drain);

impl<'a> InFlight<'a> {
    fn enter(drain: &'a Drain) -> Self {
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(drain)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One member's messaging state, shared by the server routes and the `Hedge` handle.
pub(crate) struct Node {
    pub group: String,
    pub me: Member,
    pub election: Election,
    pub view: Arc<MemberView>,
    /// `None` when the peer transport is off.
    pub peers: Option<PeerClient>,
    pub handlers: Handlers,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pushed: Mutex<PushedLeader>,
    drain: Drain,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("group", &self.group)
            .field("me", &self.me)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: String,
        me: Member,
        election: Election,
        view: Arc<MemberView>,
        peers: Option<PeerClient>,
        handlers: Handlers,
        max_body_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            group,
            me,
            election,
            view,
            peers,
            handlers,
            max_body_bytes,
            metrics,
            pushed: Mutex::default(),
            drain: Drain::default(),
        }
    }

    fn pushed(&self) -> MutexGuard<'_, PushedLeader> {
        self.pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The leader as this member knows it best: the election's view or a newer pushed one,
    /// unless its term was announced released; with its address when known.
    pub fn known_leader(&self) -> Option<LeaderHint> {
        let mut best = self.election.leader().map(|l| LeaderHint {
            id: l.id,
            token: l.token,
            address: None,
        });
        {
            let pushed = self.pushed();
            if let Some(p) = &pushed.elected
                && best.as_ref().is_none_or(|b| p.token > b.token)
            {
                best = Some(p.clone());
            }
            if let (Some(b), Some((id, token))) = (&best, &pushed.released)
                && b.id == *id
                && b.token <= *token
                && b.id != self.me.id
            {
                best = None;
            }
        }
        if let Some(b) = &mut best {
            if b.id == self.me.id {
                b.address.clone_from(&self.me.address);
            } else if let Some(address) = self.view.get(&b.id).and_then(|m| m.address) {
                b.address = Some(address);
            }
        }
        best
    }

    /// Records a leader learned by push or from a "not leader" reply (and tells the election,
    /// so that [`Election::leader`] reports it too).
    pub fn learn_leader(&self, hint: LeaderHint) {
        if hint.id == self.me.id {
            return;
        }
        self.election.learn_leader(crate::LeaderInfo {
            id: hint.id.clone(),
            token: hint.token,
        });
        let mut pushed = self.pushed();
        if pushed.elected.as_ref().is_none_or(|p| hint.token > p.token) {
            debug!(leader = %hint.id, token = hint.token, "learned the leader by push");
            pushed.elected = Some(hint);
        }
    }

    /// Records that `id` released its term `token`.
    pub fn learn_release(&self, id: &str, token: u64) {
        self.election.learn_release(id, token);
        let mut pushed = self.pushed();
        if pushed.released.as_ref().is_none_or(|(_, t)| token > *t) {
            pushed.released = Some((id.to_owned(), token));
        }
        if pushed
            .elected
            .as_ref()
            .is_some_and(|p| p.id == id && p.token <= token)
        {
            pushed.elected = None;
        }
    }

    /// The "not leader" answer of this member.
    pub fn not_leader(&self) -> ErrorBody {
        let leader = self.known_leader().filter(|l| l.id != self.me.id);
        let message = match &leader {
            Some(l) => format!(
                "member {} does not lead; {} does (token {})",
                self.me.id, l.id, l.token
            ),
            None => format!("member {} does not lead and knows no leader", self.me.id),
        };
        ErrorBody {
            kind: ErrorKind::NotLeader,
            message,
            leader,
        }
    }

    /// Stops taking new sends (they are answered "shutting down", so callers re-route) and
    /// waits, at most `limit`, for the sends in flight to finish.
    pub async fn drain(&self, limit: Duration) {
        self.drain.draining.store(true, Ordering::SeqCst);
        let _ = timeout_at(Instant::now() + limit, async {
            loop {
                let idle = self.drain.idle.notified();
                if self.drain.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }

    /// Runs the send handler if this member leads now; the handler is dropped (after its
    /// token fires) the moment the term ends.
    pub async fn run_send(
        &self,
        sender: String,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(u64, Bytes), ErrorBody> {
        let Some(handler) = self.handlers.send.clone() else {
            return Err(ErrorBody::new(
                ErrorKind::NoHandler,
                format!("member {} has no send handler", self.me.id),
            ));
        };
        // Counted before the drain flag is read: a drain that sets the flag and then sees no
        // send in flight can never miss one that got past the check.
        let _in_flight = InFlight::enter(&self.drain);
        if self.drain.draining.load(Ordering::SeqCst) {
            return Err(ErrorBody::new(
                ErrorKind::ShuttingDown,
                format!("member {} is handing over its term", self.me.id),
            ));
        }
        let Some(term) = self.election.term() else {
            return Err(self.not_leader());
        };
        let cancelled = term.cancelled.child_token();
        // The caller going away or the deadline dropping this future cancels the handler's
        // token too, so work it spawned stops.
        let _cancel_on_drop = cancelled.clone().drop_guard();
        let run = handler.handle(Message {
            sender,
            payload,
            token: Some(term.token),
            deadline,
            cancelled: cancelled.clone(),
        });
        tokio::select! {
            biased;
            () = term.cancelled.cancelled() => Err(ErrorBody::new(
                ErrorKind::TermEnded,
                format!("the term (token {}) ended while the handler ran; it was cancelled", term.token),
            )),
            result = timeout_at(deadline, run) => match result {
                Ok(Ok(reply)) => Ok((term.token, reply)),
                Ok(Err(e)) => Err(ErrorBody::new(ErrorKind::Handler, e.message)),
                Err(_) => Err(ErrorBody::new(ErrorKind::DeadlineExceeded, "the handler did not finish before the deadline")),
            },
        }
    }

    /// Runs the broadcast handler.
    pub async fn run_broadcast(
        &self,
        sender: String,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, ErrorBody> {
        let Some(handler) = self.handlers.broadcast.clone() else {
            return Err(ErrorBody::new(
                ErrorKind::NoHandler,
                format!("member {} has no broadcast handler", self.me.id),
            ));
        };
        let cancelled = tokio_util::sync::CancellationToken::new();
        let _cancel_on_drop = cancelled.clone().drop_guard();
        let run = handler.handle(Message {
            sender,
            payload,
            token: None,
            deadline,
            cancelled,
        });
        match timeout_at(deadline, run).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(ErrorBody::new(ErrorKind::Handler, e.message)),
            Err(_) => Err(ErrorBody::new(
                ErrorKind::DeadlineExceeded,
                "the handler did not finish before the deadline",
            )),
        }
    }

    fn check_size(&self, payload: &Bytes) -> Result<(), MessagingError> {
        if payload.len() > self.max_body_bytes {
            return Err(MessagingError::TooLarge {
                len: payload.len(),
                limit: self.max_body_bytes,
            });
        }
        Ok(())
    }

    /// Sends to the leader, re-routing only while no handler can have run.
    pub async fn send(
        &self,
        payload: Bytes,
        options: SendOptions,
    ) -> Result<Reply, MessagingError> {
        let started = Instant::now();
        let result = self
            .send_inner(payload, started + options.timeout, started)
            .await;
        self.metrics.observe_message(
            &self.group,
            "send",
            started.elapsed(),
            result.as_ref().err(),
        );
        result
    }

    async fn send_inner(
        &self,
        payload: Bytes,
        deadline: Instant,
        started: Instant,
    ) -> Result<Reply, MessagingError> {
        let Some(peers) = &self.peers else {
            return Err(MessagingError::Disabled);
        };
        self.check_size(&payload)?;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                self.metrics
                    .send_reroutes
                    .get_or_create(&GroupLabels {
                        group: self.group.clone(),
                    })
                    .inc();
                let pause = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if Instant::now() + pause >= deadline {
                    return Err(MessagingError::NoLeader {
                        waited: started.elapsed(),
                        last,
                    });
                }
                sleep(pause).await;
            }
            attempt += 1;
            let Some(leader) = self.known_leader() else {
                last = Some("no leader known".into());
                continue;
            };
            if leader.id == self.me.id {
                match self
                    .run_send(self.me.id.clone(), payload.clone(), deadline)
                    .await
                {
                    Ok((token, reply)) => {
                        return Ok(Reply {
                            leader: leader.id,
                            token,
                            payload: reply,
                        });
                    }
                    Err(e) if matches!(e.kind, ErrorKind::NotLeader | ErrorKind::ShuttingDown) => {
                        last = Some(e.message);
                        continue;
                    }
                    Err(e) => {
                        return Err(MessagingError::from_peer(
                            &self.me.id,
                            PeerError::Remote {
                                peer: self.me.id.clone(),
                                error: e,
                            },
                        ));
                    }
                }
            }
            let Some(address) = leader.address.clone() else {
                last = Some(format!(
                    "the address of leader {} is not known yet",
                    leader.id
                ));
                continue;
            };
            match peers
                .call_bytes(&address, wire::ROUTE_SEND, payload.clone(), deadline)
                .await
            {
                Ok((headers, reply)) => {
                    let token = headers
                        .get(wire::HEADER_TOKEN)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(leader.token);
                    return Ok(Reply {
                        leader: leader.id,
                        token,
                        payload: reply,
                    });
                }
                Err(PeerError::Remote { error, .. }) if error.kind == ErrorKind::NotLeader => {
                    // It refused before any handler: learn its view and try again.
                    if let Some(hint) = error.leader.clone() {
                        self.learn_leader(hint);
                    } else {
                        self.learn_release(&leader.id, leader.token);
                    }
                    last = Some(error.message);
                }
                Err(e)
                    if !e.handler_may_have_run()
                        && e.remote_kind().is_none_or(|k| k == ErrorKind::ShuttingDown) =>
                {
                    // Not delivered (refused connection, not sent, shutting down): try again.
                    last = Some(e.to_string());
                }
                Err(e) => return Err(MessagingError::from_peer(&leader.id, e)),
            }
        }
    }

    /// The targets of a broadcast: `(id, address)` pairs, and errors for listed non-members.
    fn targets(&self, options: &BroadcastOptions) -> (Vec<Member>, Vec<BroadcastReply>) {
        let view = self.view.members();
        let mut targets: Vec<Member> = view
            .iter()
            .filter(|m| !(options.skip_self && m.id == self.me.id))
            .filter(|m| {
                options
                    .only
                    .as_ref()
                    .is_none_or(|only| only.contains(&m.id))
            })
            .cloned()
            .collect();
        if !options.skip_self
            && !targets.iter().any(|m| m.id == self.me.id)
            && options
                .only
                .as_ref()
                .is_none_or(|only| only.contains(&self.me.id))
        {
            // This member is always in its own group, even before its first refresh.
            targets.push(self.me.clone());
        }
        let missing = options
            .only
            .iter()
            .flatten()
            .filter(|id| {
                !(targets.iter().any(|m| &m.id == *id) || (options.skip_self && **id == self.me.id))
            })
            .map(|id| BroadcastReply {
                member: id.clone(),
                result: Err(MessagingError::NotAMember { id: id.clone() }),
            })
            .collect();
        (targets, missing)
    }

    /// Delivers a broadcast to every target concurrently; yields the results as they come.
    pub fn broadcast_stream(
        self: &Arc<Self>,
        payload: Bytes,
        options: BroadcastOptions,
    ) -> impl futures::Stream<Item = BroadcastReply> + Send + 'static {
        let deliveries = FuturesUnordered::new();
        let mut early = Vec::new();
        if self.peers.is_none() {
            early.push(BroadcastReply {
                member: self.me.id.clone(),
                result: Err(MessagingError::Disabled),
            });
        } else if let Err(e) = self.check_size(&payload) {
            early.push(BroadcastReply {
                member: self.me.id.clone(),
                result: Err(e),
            });
        } else {
            let (targets, missing) = self.targets(&options);
            early = missing;
            for target in targets {
                let node = self.clone();
                let payload = payload.clone();
                let deadline = Instant::now() + options.timeout;
                deliveries.push(async move {
                    let started = Instant::now();
                    let result = node.deliver(&target, payload, deadline).await;
                    node.metrics.observe_message(
                        &node.group,
                        "broadcast",
                        started.elapsed(),
                        result.as_ref().err(),
                    );
                    BroadcastReply {
                        member: target.id,
                        result,
                    }
                });
            }
        }
        futures::stream::iter(early).chain(deliveries)
    }

    async fn deliver(
        &self,
        target: &Member,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, MessagingError> {
        if target.id == self.me.id {
            return self
                .run_broadcast(self.me.id.clone(), payload, deadline)
                .await
                .map_err(|error| {
                    MessagingError::from_peer(
                        &target.id,
                        PeerError::Remote {
                            peer: target.id.clone(),
                            error,
                        },
                    )
                });
        }
        let (Some(peers), Some(address)) = (&self.peers, &target.address) else {
            return Err(MessagingError::Unreachable {
                member: target.id.clone(),
                reason: "no peer address known".into(),
            });
        };
        peers
            .call_bytes(address, wire::ROUTE_BROADCAST, payload, deadline)
            .await
            .map(|(_, reply)| reply)
            .map_err(|e| MessagingError::from_peer(&target.id, e))
    }

    /// Broadcasts and collects every result by member id.
    pub async fn broadcast(
        self: &Arc<Self>,
        payload: Bytes,
        options: BroadcastOptions,
    ) -> BTreeMap<String, Result<Bytes, MessagingError>> {
        self.broadcast_stream(payload, options)
            .map(|r| (r.member, r.result))
            .collect()
            .await
    }

    /// Opens a stream on `route` to `target`.
    async fn open_stream(
        &self,
        target: &Member,
        route: &'static str,
    ) -> Result<PeerStream, MessagingError> {
        let Some(peers) = &self.peers else {
            return Err(MessagingError::Disabled);
        };
        let Some(address) = &target.address else {
            return Err(MessagingError::Unreachable {
                member: target.id.clone(),
                reason: "no peer address known".into(),
            });
        };
        let (sender, frames) = stream::channel(target.id.clone(), self.max_body_bytes);
        let response = peers
            .open_stream(address, route, ResponseBody::channel(frames, None))
            .await
            .map_err(|e| MessagingError::from_peer(&target.id, e))?;
        let receiver =
            StreamReceiver::new(target.id.clone(), response.into_body(), self.max_body_bytes);
        Ok(PeerStream::new(target.id.clone(), sender, receiver))
    }

    /// Opens a stream to the leader, re-routing while no leader took it, until `timeout`.
    pub async fn stream_to_leader(&self, timeout: Duration) -> Result<PeerStream, MessagingError> {
        if self.peers.is_none() {
            return Err(MessagingError::Disabled);
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<String>;
        loop {
            if let Some(leader) = self.known_leader() {
                let target = Member {
                    id: leader.id.clone(),
                    incarnation: String::new(),
                    address: leader.address.clone(),
                };
                match self.open_stream(&target, wire::ROUTE_LEADER_STREAM).await {
                    Ok(stream) => return Ok(stream),
                    Err(MessagingError::Unreachable { reason, .. }) => last = Some(reason),
                    Err(e) => return Err(e),
                }
            } else {
                last = Some("no leader known".to_owned());
            }
            let pause = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if Instant::now() + pause >= deadline {
                return Err(MessagingError::NoLeader {
                    waited: started.elapsed(),
                    last,
                });
            }
            sleep(pause).await;
        }
    }

    /// Opens a stream to every target of `options`.
    pub async fn stream_broadcast(
        &self,
        options: BroadcastOptions,
    ) -> BTreeMap<String, Result<PeerStream, MessagingError>> {
        let (targets, missing) = self.targets(&options);
        let mut results: BTreeMap<String, Result<PeerStream, MessagingError>> = missing
            .into_iter()
            .map(|r| {
                (
                    r.member.clone(),
                    Err(MessagingError::NotAMember { id: r.member }),
                )
            })
            .collect();
        let opened = futures::future::join_all(targets.iter().map(|t| async move {
            let result = timeout_at(
                Instant::now() + options.timeout,
                self.open_stream(t, wire::ROUTE_BROADCAST_STREAM),
            )
            .await
            .unwrap_or_else(|_| {
                Err(MessagingError::Unreachable {
                    member: t.id.clone(),
                    reason: "the stream did not open before the deadline".into(),
                })
            });
            (t.id.clone(), result)
        }))
        .await;
        results.extend(opened);
        results
    }

    /// Pushes `announcement` to every other member of the view, concurrently, each within
    /// `timeout`; failures are logged (the store repairs what a lost push misses).
    pub async fn announce(&self, announcement: Announcement, timeout: Duration) {
        let Some(peers) = &self.peers else {
            return;
        };
        let members = self.view.members();
        let deadline = Instant::now() + timeout;
        let calls = members
            .iter()
            .filter(|m| m.id != self.me.id)
            .filter_map(|m| m.address.clone().map(|a| (m.id.clone(), a)))
            .map(|(id, address)| {
                let announcement = &announcement;
                async move {
                    match peers
                        .call::<Announce>(&address, announcement, deadline)
                        .await
                    {
                        Ok(ack) => {
                            if matches!(announcement, Announcement::Joined { .. }) {
                                self.view.join(ack.member);
                            }
                        }
                        Err(e) => debug!(member = %id, error = %e, "announcement not delivered"),
                    }
                }
            });
        futures::future::join_all(calls).await;
    }

    /// Applies an announcement from `sender` (already authenticated).
    pub fn receive(&self, sender: &str, announcement: Announcement) -> Result<(), ErrorBody> {
        if announcement.subject() != sender {
            warn!(
                sender,
                subject = announcement.subject(),
                "a member announced another member; ignored"
            );
            return Err(ErrorBody::new(
                ErrorKind::BadRequest,
                "a member may announce only itself",
            ));
        }
        match announcement {
            Announcement::Joined { member } => self.view.join(member),
            Announcement::Left { id, incarnation } => {
                self.view.leave(&id, &incarnation, LeaveReason::Left);
                if let Some(p) = self.known_leader().filter(|p| p.id == id) {
                    self.learn_release(&id, p.token);
                }
            }
            Announcement::Elected { id, token, address } => {
                self.learn_leader(LeaderHint { id, token, address });
            }
            Announcement::Released { id, token } => {
                self.learn_release(&id, token);
                self.election.nudge();
            }
        }
        self.count_members();
        Ok(())
    }

    /// Publishes the size of the view.
    pub fn count_members(&self) {
        self.metrics
            .members
            .get_or_create(&GroupLabels {
                group: self.group.clone(),
            })
            .set(i64::try_from(self.view.members().len()).unwrap_or(i64::MAX));
    }
}
