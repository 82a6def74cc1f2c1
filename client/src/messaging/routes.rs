//! The server side of messaging: the routes a member serves.
//!
//! | route | kind | runs |
//! |---|---|---|
//! | `/hedge/v1/send` | unary | the send handler, if this member leads now (else "not leader") |
//! | `/hedge/v1/broadcast` | unary | the broadcast handler |
//! | `/hedge/v1/stream/leader` | stream | the leader stream handler, if this member leads now |
//! | `/hedge/v1/stream/broadcast` | stream | the broadcast stream handler |
//! | `/hedge/v1/announce` | typed ([`Announce`]) | applies the announcement to the views |
//! | `/hedge/v1/kv/put` | unary | writes a follower's put under the leader's term ([`crate::kv::forward`]) |
//! | `/hedge/v1/semaphore/released` | typed | wakes this member's waiting acquires ([`crate::semaphore::notify`]) |
//!
//! (The last two are added by the `Hedge` handle, which owns the log and the waiters.)

use std::sync::Arc;

use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::announce::{Announce, AnnounceAck};
use super::stream::{self, StreamReceiver, StreamSession};
use super::{Node, StreamHandler};
use crate::peer::body::ResponseBody;
use crate::peer::server::{bytes_response, error_response};
use crate::peer::wire::{self, ErrorBody, ErrorKind};
use crate::peer::{RequestContext, RouteKind, Router};

impl Node {
    /// The routes of this member.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        let send = self.clone();
        let broadcast = self.clone();
        let leader_stream = self.clone();
        let broadcast_stream = self.clone();
        let announce = self.clone();
        Router::new()
            .route(
                wire::ROUTE_SEND,
                RouteKind::Unary,
                move |ctx: RequestContext, body: Incoming| {
                    let node = send.clone();
                    async move {
                        // Refuse before reading the body: nothing runs, and the caller re-routes.
                        if node.handlers.send.is_some() && node.election.term().is_none() {
                            return error_response(&node.not_leader());
                        }
                        let payload = match ctx.read_body(body).await {
                            Ok(p) => p,
                            Err(e) => return error_response(&e),
                        };
                        let deadline = ctx.deadline.unwrap_or_else(Instant::now);
                        match node.run_send(ctx.sender, payload, deadline).await {
                            Ok((token, reply)) => {
                                let mut response = bytes_response(reply);
                                response
                                    .headers_mut()
                                    .insert(wire::HEADER_TOKEN, http::HeaderValue::from(token));
                                response
                            }
                            Err(e) => error_response(&e),
                        }
                    }
                },
            )
            .route(
                wire::ROUTE_BROADCAST,
                RouteKind::Unary,
                move |ctx: RequestContext, body: Incoming| {
                    let node = broadcast.clone();
                    async move {
                        let payload = match ctx.read_body(body).await {
                            Ok(p) => p,
                            Err(e) => return error_response(&e),
                        };
                        let deadline = ctx.deadline.unwrap_or_else(Instant::now);
                        match node.run_broadcast(ctx.sender, payload, deadline).await {
                            Ok(reply) => bytes_response(reply),
                            Err(e) => error_response(&e),
                        }
                    }
                },
            )
            .route(
                wire::ROUTE_LEADER_STREAM,
                RouteKind::Stream,
                move |ctx: RequestContext, body: Incoming| {
                    let node = leader_stream.clone();
                    async move {
                        let Some(handler) = node.handlers.leader_stream.clone() else {
                            return error_response(&ErrorBody::new(
                                ErrorKind::NoHandler,
                                "no leader stream handler",
                            ));
                        };
                        let Some(term) = node.election.term() else {
                            return error_response(&node.not_leader());
                        };
                        open_session(handler, ctx, body, Some((term.token, term.cancelled)))
                    }
                },
            )
            .route(
                wire::ROUTE_BROADCAST_STREAM,
                RouteKind::Stream,
                move |ctx: RequestContext, body: Incoming| {
                    let node = broadcast_stream.clone();
                    async move {
                        let Some(handler) = node.handlers.broadcast_stream.clone() else {
                            return error_response(&ErrorBody::new(
                                ErrorKind::NoHandler,
                                "no broadcast stream handler",
                            ));
                        };
                        open_session(handler, ctx, body, None)
                    }
                },
            )
            .rpc::<Announce, _, _>(move |ctx: RequestContext, announcement| {
                let node = announce.clone();
                async move {
                    node.receive(&ctx.sender, announcement)?;
                    Ok(AnnounceAck {
                        member: node.me.clone(),
                    })
                }
            })
    }
}

/// Starts a stream handler on its own task and answers with the stream of its messages.
fn open_session(
    handler: Arc<dyn StreamHandler>,
    ctx: RequestContext,
    body: Incoming,
    term: Option<(u64, CancellationToken)>,
) -> http::Response<ResponseBody> {
    let cancelled = match &term {
        Some((_, term_cancelled)) => term_cancelled.child_token(),
        None => CancellationToken::new(),
    };
    let (outgoing, frames) = stream::channel(ctx.sender.clone(), ctx.max_body_bytes);
    let session = StreamSession {
        sender: ctx.sender.clone(),
        token: term.as_ref().map(|(token, _)| *token),
        cancelled: cancelled.clone(),
        incoming: StreamReceiver::new(ctx.sender.clone(), body, ctx.max_body_bytes),
        outgoing: outgoing.clone(),
    };
    let on_drop = cancelled.clone().drop_guard();
    tokio::spawn(async move {
        let term_cancelled = term.map(|(_, c)| c);
        tokio::select! {
            biased;
            () = cancelled.cancelled() => {}
            () = handler.handle(session) => {}
        }
        if term_cancelled.is_some_and(|c| c.is_cancelled()) {
            outgoing
                .send_error(&ErrorBody::new(
                    ErrorKind::TermEnded,
                    "the leader's term ended; the stream was closed",
                ))
                .await;
        }
    });
    // The caller going away drops the body, which cancels the session. (Not `ctx.cancelled`:
    // that fires as soon as this function has answered with the stream's head.)
    let mut response = http::Response::new(ResponseBody::channel(frames, Some(on_drop)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(wire::CONTENT_FRAMES),
    );
    response
}
