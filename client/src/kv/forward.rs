//! Forwarded puts ([`PutRouting::ViaLeader`](super::PutRouting::ViaLeader)) over the peer
//! transport: a follower sends its put to the leader on `/hedge/v1/kv/put`, and the leader
//! writes it **fenced on its own term**.
//!
//! # Rules
//!
//! * The put travels with its request id (the caller's idempotency key or the fresh id of the
//!   call), so every path that may write it (the leader, a re-routed leader, the follower's own
//!   direct write after a failed forward) writes it **once**: the store returns the version
//!   already written for that id.
//! * The leader refuses with "not leader" before reading the body when it does not lead, and
//!   after writing when its fenced put was refused (its term ended: nothing was written). The
//!   follower then re-routes to the leader the answer names (at most [`MAX_HOPS`] times).
//! * The version records the **original writer** (the follower's member id and incarnation: who
//!   asked for the put) and the **leader's token** (the term that wrote it). A put the follower
//!   fenced itself keeps its own fence and token.
//! * A member may forward only its own puts: the writer must be the authenticated sender.
//! * Anything else (no transport, no leader known, its address unknown, a value over the
//!   transport's body limit, a timeout, a broken connection, a store error on the leader) ends
//!   the forward; the log then writes the put directly, with the same request id.
//!
//! # Wire format
//!
//! Both bodies are a 4-byte big-endian length, that many bytes of JSON (everything but the
//! value), then the value's bytes unchanged: a 10 MiB value travels as 10 MiB, not as a JSON
//! array of numbers.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::debug;

use super::{ForwardError, KvError, Log, PutForwarder};
use crate::messaging::Node;
use crate::peer::server::{bytes_response, error_response};
use crate::peer::wire::{ErrorBody, ErrorKind, ROUTE_KV_PUT};
use crate::peer::{PeerError, RequestContext, RouteKind, Router};
use crate::store::log_rules::{LogEntry, PutMode, PutRequest};
use crate::store::{Candidate, PutOutcome};

/// How many "not leader" answers a forward follows before it gives up (and the put is written
/// directly): enough for one failover seen late, few enough to stay short when leadership
/// flaps.
pub const MAX_HOPS: usize = 3;

/// The longest JSON head a body may carry (a key is at most 1 KiB; the rest is ids).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The put, without its value.
#[derive(Debug, Serialize, Deserialize)]
struct PutHead {
    key: String,
    writer: String,
    incarnation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    overwrite: bool,
    request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fence: Option<String>,
}

/// A version, without its value.
#[derive(Debug, Serialize, Deserialize)]
struct EntryHead {
    key: String,
    seq: u64,
    id: String,
    writer: String,
    writer_incarnation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    committed_at: SystemTime,
}

/// The leader's outcome, without the version's value.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum ReplyHead {
    Written { entry: EntryHead },
    Replayed { entry: EntryHead },
    Fenced { current: Option<u64> },
}

fn encode(head: &impl Serialize, value: &[u8]) -> Result<Bytes, String> {
    let json = serde_json::to_vec(head).map_err(|e| format!("cannot encode: {e}"))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_HEAD_BYTES)
        .ok_or_else(|| format!("a head of {} bytes is too long", json.len()))?;
    let mut out = BytesMut::with_capacity(4 + json.len() + value.len());
    out.put_u32(len);
    out.put_slice(&json);
    out.put_slice(value);
    Ok(out.freeze())
}

fn decode<T: DeserializeOwned>(mut body: Bytes) -> Result<(T, Bytes), String> {
    if body.len() < 4 {
        return Err(format!("a body of {} bytes has no head", body.len()));
    }
    let len = body.get_u32() as usize;
    if len > MAX_HEAD_BYTES || len > body.len() {
        return Err(format!(
            "a head of {len} bytes does not fit the body ({} bytes left)",
            body.len()
        ));
    }
    let head = body.split_to(len);
    let head = serde_json::from_slice(&head).map_err(|e| format!("malformed head: {e}"))?;
    Ok((head, body))
}

fn encode_request(request: &PutRequest, request_id: &str) -> Result<Bytes, String> {
    let head = PutHead {
        key: request.key.clone(),
        writer: request.writer.id.clone(),
        incarnation: request.writer.incarnation.clone(),
        token: request.token,
        overwrite: request.mode == PutMode::Overwrite,
        request_id: request_id.to_owned(),
        fence: request.fence.clone(),
    };
    encode(&head, &request.value)
}

fn decode_request(body: Bytes) -> Result<PutRequest, String> {
    let (head, value) = decode::<PutHead>(body)?;
    Ok(PutRequest {
        key: head.key,
        value: value.to_vec(),
        writer: Candidate {
            id: head.writer,
            incarnation: head.incarnation,
        },
        token: head.token,
        mode: if head.overwrite {
            PutMode::Overwrite
        } else {
            PutMode::Append
        },
        request_id: Some(head.request_id),
        fence: head.fence,
    })
}

fn entry_head(entry: &LogEntry) -> EntryHead {
    EntryHead {
        key: entry.key.clone(),
        seq: entry.seq,
        id: entry.id.clone(),
        writer: entry.writer.clone(),
        writer_incarnation: entry.writer_incarnation.clone(),
        token: entry.token,
        request_id: entry.request_id.clone(),
        committed_at: entry.committed_at,
    }
}

fn entry(head: EntryHead, value: Bytes) -> LogEntry {
    LogEntry {
        key: head.key,
        seq: head.seq,
        id: head.id,
        value: value.to_vec(),
        writer: head.writer,
        writer_incarnation: head.writer_incarnation,
        token: head.token,
        request_id: head.request_id,
        committed_at: head.committed_at,
    }
}

fn encode_reply(outcome: &PutOutcome) -> Result<Bytes, String> {
    match outcome {
        PutOutcome::Written(e) => encode(
            &ReplyHead::Written {
                entry: entry_head(e),
            },
            &e.value,
        ),
        PutOutcome::Replayed(e) => encode(
            &ReplyHead::Replayed {
                entry: entry_head(e),
            },
            &e.value,
        ),
        PutOutcome::Fenced { current } => encode(&ReplyHead::Fenced { current: *current }, &[]),
    }
}

fn decode_reply(body: Bytes) -> Result<PutOutcome, String> {
    Ok(match decode::<ReplyHead>(body)? {
        (ReplyHead::Written { entry: head }, value) => PutOutcome::Written(entry(head, value)),
        (ReplyHead::Replayed { entry: head }, value) => PutOutcome::Replayed(entry(head, value)),
        (ReplyHead::Fenced { current }, _) => PutOutcome::Fenced { current },
    })
}

/// The follower side: sends puts to the leader the member knows of (installed by
/// [`HedgeBuilder::build`](crate::HedgeBuilder::build) when the peer transport is on).
#[derive(Debug)]
pub(crate) struct PeerForwarder {
    node: Arc<Node>,
}

impl PeerForwarder {
    /// Forwards through `node`'s transport and leader view.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[async_trait]
impl PutForwarder for PeerForwarder {
    async fn forward(
        &self,
        _group: &str,
        request: &PutRequest,
        deadline: Instant,
    ) -> Result<PutOutcome, ForwardError> {
        let node = &self.node;
        let Some(peers) = &node.peers else {
            return Err(ForwardError("the peer transport is off".into()));
        };
        let Some(request_id) = &request.request_id else {
            return Err(ForwardError("a forwarded put needs a request id".into()));
        };
        let body = encode_request(request, request_id).map_err(ForwardError)?;
        if body.len() > node.max_body_bytes {
            return Err(ForwardError(format!(
                "the put ({} bytes) is over the transport's body limit of {} bytes",
                body.len(),
                node.max_body_bytes
            )));
        }
        for _ in 0..MAX_HOPS {
            let Some(leader) = node.known_leader() else {
                return Err(ForwardError("no leader known".into()));
            };
            if leader.id == node.me.id {
                return Err(ForwardError("this member leads".into()));
            }
            let Some(address) = leader.address.clone() else {
                return Err(ForwardError(format!(
                    "the address of leader {} is not known yet",
                    leader.id
                )));
            };
            match peers
                .call_bytes(&address, ROUTE_KV_PUT, body.clone(), deadline)
                .await
            {
                Ok((_, reply)) => {
                    return decode_reply(reply)
                        .map_err(|e| ForwardError(format!("leader {}'s reply: {e}", leader.id)));
                }
                Err(PeerError::Remote { error, .. }) if error.kind == ErrorKind::NotLeader => {
                    debug!(leader = %leader.id, message = %error.message, "forwarded put refused; re-routing");
                    match error.leader {
                        Some(hint) => node.learn_leader(hint),
                        None => node.learn_release(&leader.id, leader.token),
                    }
                }
                Err(e) => return Err(ForwardError(format!("leader {}: {e}", leader.id))),
            }
        }
        Err(ForwardError(format!(
            "leadership changed {MAX_HOPS} times while the put was forwarded"
        )))
    }
}

/// Serves `/hedge/v1/kv/put` with `log` (this member's log) on `router`.
pub(crate) fn route(router: Router, log: Log, node: Arc<Node>) -> Router {
    router.route(
        ROUTE_KV_PUT,
        RouteKind::Unary,
        move |ctx: RequestContext, body: Incoming| {
            let (log, node) = (log.clone(), node.clone());
            async move {
                // Refuse before reading the body: nothing is written, and the follower re-routes.
                if node.election.term().is_none() {
                    return error_response(&node.not_leader());
                }
                let request = match ctx.read_body(body).await {
                    Ok(bytes) => match decode_request(bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            return error_response(&ErrorBody::new(
                                ErrorKind::BadRequest,
                                format!("malformed forwarded put: {e}"),
                            ));
                        }
                    },
                    Err(e) => return error_response(&e),
                };
                if request.writer.id != ctx.sender {
                    return error_response(&ErrorBody::new(
                        ErrorKind::BadRequest,
                        format!(
                            "member {} forwarded a put written as {}: a member may forward only its own puts",
                            ctx.sender, request.writer.id
                        ),
                    ));
                }
                match log.write_forwarded(&request).await {
                    Ok(outcome) => match encode_reply(&outcome) {
                        Ok(reply) => bytes_response(reply),
                        Err(e) => error_response(&ErrorBody::new(ErrorKind::Internal, e)),
                    },
                    Err(KvError::NotLeader { .. }) => error_response(&node.not_leader()),
                    Err(KvError::Input(e)) => {
                        error_response(&ErrorBody::new(ErrorKind::BadRequest, e.to_string()))
                    }
                    // The put may have been written: the follower writes it directly, with the
                    // same request id, which cannot write it twice.
                    Err(e) => error_response(&ErrorBody::new(ErrorKind::Internal, e.to_string())),
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PutRequest {
        PutRequest {
            key: "jobs/1".into(),
            value: vec![0, 1, 2, 255],
            writer: Candidate::new("f"),
            token: None,
            mode: PutMode::Overwrite,
            request_id: Some("r1".into()),
            fence: None,
        }
    }

    #[test]
    fn requests_and_replies_round_trip_with_raw_values() {
        let r = request();
        let body = encode_request(&r, "r1").unwrap();
        assert_eq!(body.len() - body.slice(4..).len(), 4);
        assert!(body.ends_with(&[0, 1, 2, 255]));
        assert_eq!(decode_request(body).unwrap(), r);
        let written = LogEntry {
            key: "jobs/1".into(),
            seq: 7,
            id: "e".into(),
            value: vec![9; 1000],
            writer: "f".into(),
            writer_incarnation: "i".into(),
            token: Some(3),
            request_id: Some("r1".into()),
            committed_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567),
        };
        for outcome in [
            PutOutcome::Written(written.clone()),
            PutOutcome::Replayed(written),
            PutOutcome::Fenced { current: Some(4) },
        ] {
            assert_eq!(
                decode_reply(encode_reply(&outcome).unwrap()).unwrap(),
                outcome
            );
        }
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            &[0, 0, 0],
            &[0, 0, 0, 9, b'{'],
            &[255, 255, 255, 255, 0],
            &[0, 0, 0, 2, b'{', b'}'],
        ] {
            assert!(decode_request(Bytes::copy_from_slice(body)).is_err());
            assert!(decode_reply(Bytes::copy_from_slice(body)).is_err());
        }
    }
}
