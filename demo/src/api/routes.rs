//! The routes of the member's HTTP API (documented route by route in docs/demo.md).
//!
//! A request is resolved to a [`Route`] (or 404), its method checked (or 405 with `Allow`), its
//! body read within the size and time limits (or 413, 408, 400), and only then handed to the
//! member. Every answer has a text and a JSON form ([`Answer`]).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde_json::json;

use super::ApiState;
use super::REQUEST_READ_TIMEOUT;
use super::answer::{Answer, wants_json};
use super::{log, permits};
use hedge::{BroadcastOptions, MessagingError, SendOptions};

/// The message `/send` and `/broadcast` use when the body is empty (as the Go demo does).
pub const DEFAULT_MESSAGE: &str = "hello";

/// How long `/send` may take, re-routing through a failover included.
pub const SEND_TIMEOUT: Duration = hedge::messaging::DEFAULT_SEND_TIMEOUT;

/// Every route: method, path, what it does. `GET /` answers this list.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/", "this list"),
    (
        "POST",
        "/put",
        "body: \"<key> <value>\"; appends the value to the group's log",
    ),
    (
        "POST",
        "/get",
        "body: a key (or GET /get?key=<key>); the latest value",
    ),
    (
        "POST",
        "/send",
        "body: a message (default \"hello\"); the leader's handler replies \"hello <message>\"",
    ),
    (
        "POST",
        "/broadcast",
        "body: a message (default \"hello\"); every member's handler replies \"broadcast <message>\"",
    ),
    (
        "GET",
        "/members",
        "the members this member knows, with their peer addresses",
    ),
    ("GET", "/leader", "the leader and its fencing token"),
    (
        "POST",
        "/semaphore/<name>/acquire",
        "?limit=N creates it with N permits, ?wait_ms=T waits at most T ms (default 5000); \
         this member holds the permit until released",
    ),
    (
        "POST",
        "/semaphore/<name>/release",
        "body: a permit id, or empty for the oldest this member holds",
    ),
    ("GET", "/metrics", "the member's metrics (Prometheus text)"),
    ("GET", "/healthz", "\"ok\" while the member runs"),
];

/// A resolved route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`.
    Index,
    /// `POST /put`.
    Put,
    /// `POST /get` (the key as the body) or `GET /get?key=`.
    Get,
    /// `POST /semaphore/<name>/acquire`.
    Acquire(String),
    /// `POST /semaphore/<name>/release`.
    Release(String),
    /// `POST /send`.
    Send,
    /// `POST /broadcast`.
    Broadcast,
    /// `GET /members`.
    Members,
    /// `GET /leader`.
    Leader,
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Healthz,
}

impl Route {
    /// The route of `path`, if there is one.
    pub fn resolve(path: &str) -> Option<Route> {
        if let Some(rest) = path.strip_prefix("/semaphore/") {
            let (name, action) = rest.split_once('/')?;
            if name.is_empty() {
                return None;
            }
            return match action {
                "acquire" => Some(Route::Acquire(name.to_owned())),
                "release" => Some(Route::Release(name.to_owned())),
                _ => None,
            };
        }
        Some(match path {
            "/" => Route::Index,
            "/put" => Route::Put,
            "/get" => Route::Get,
            "/send" => Route::Send,
            "/broadcast" => Route::Broadcast,
            "/members" => Route::Members,
            "/leader" => Route::Leader,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            _ => return None,
        })
    }

    /// Whether the route accepts `method`.
    pub fn allows(&self, method: &Method) -> bool {
        match self {
            // `curl -d` posts; a browser gets.
            Route::Get => method == Method::POST || method == Method::GET,
            _ => self.allow() == method.as_str(),
        }
    }

    /// The methods the route accepts, for `Allow`.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Get => "GET, POST",
            Route::Put | Route::Send | Route::Broadcast | Route::Acquire(_) | Route::Release(_) => {
                "POST"
            }
            Route::Index | Route::Members | Route::Leader | Route::Metrics | Route::Healthz => {
                "GET"
            }
        }
    }
}

/// Answers one request; never fails (every problem is an answer with a 4xx or 5xx status).
pub async fn handle<B>(state: &ApiState, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let json = wants_json(request.headers());
    let path = request.uri().path().to_owned();
    let Some(route) = Route::resolve(&path) else {
        return Answer::error(
            StatusCode::NOT_FOUND,
            format!("unknown route {path} (GET / lists the routes)"),
        )
        .render(json);
    };
    if !route.allows(request.method()) {
        return Answer::method_not_allowed(&path, route.allow()).render(json);
    }
    if route == Route::Metrics {
        return metrics(state);
    }
    let query = request.uri().query().map(str::to_owned);
    let body = if request.method() == Method::POST {
        match read_body(request, state.max_body_bytes()).await {
            Ok(body) => body,
            Err(answer) => return answer.render(json),
        }
    } else {
        String::new()
    };
    answer(state, route, query.as_deref(), body)
        .await
        .render(json)
}

/// Reads the whole body as UTF-8 text within the size and time limits.
async fn read_body<B>(request: Request<B>, limit: usize) -> Result<String, Answer>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), limit).collect();
    let bytes = match tokio::time::timeout(REQUEST_READ_TIMEOUT, collect).await {
        Err(_) => {
            return Err(Answer::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {REQUEST_READ_TIMEOUT:?}"),
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(Answer::error(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8 text".to_owned(),
        )
    })
}

fn metrics(state: &ApiState) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(state.metrics_text())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

async fn answer(state: &ApiState, route: Route, query: Option<&str>, body: String) -> Answer {
    match route {
        Route::Index => index(),
        Route::Put => log::put(state, &body).await,
        Route::Get => {
            // `GET /get?key=k`; a posted body wins.
            let from_query = query
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("key="))
                .unwrap_or("");
            let key = if body.is_empty() { from_query } else { &body };
            log::get(state, key).await
        }
        Route::Acquire(name) => permits::acquire(state, &name, query).await,
        Route::Release(name) => permits::release(state, &name, &body).await,
        Route::Send => send(state, &body).await,
        Route::Broadcast => broadcast(state, &body).await,
        Route::Members => members(state),
        Route::Leader => leader(state),
        Route::Healthz => Answer::ok(
            "ok",
            json!({ "status": "ok", "member": state.hedge().member_id() }),
        ),
        // Answered before the body is read.
        Route::Metrics => Answer::ok(state.metrics_text(), json!({})),
    }
}

fn index() -> Answer {
    let text = ROUTES
        .iter()
        .map(|(method, path, what)| format!("{method:<5} {path:<30} {what}"))
        .collect::<Vec<_>>()
        .join("\n");
    let routes: Vec<_> = ROUTES
        .iter()
        .map(|(method, path, what)| json!({ "method": method, "path": path, "description": what }))
        .collect();
    Answer::ok(text, json!({ "routes": routes }))
}

/// The message of a `/send` or `/broadcast` body.
fn message(body: &str) -> &str {
    if body.is_empty() {
        DEFAULT_MESSAGE
    } else {
        body
    }
}

/// The status of a messaging failure: the group cannot serve it now (503), the outcome is
/// unknown (504), the body is too large (413), or another member failed it (502).
pub fn messaging_status(error: &MessagingError) -> StatusCode {
    match error {
        MessagingError::Disabled
        | MessagingError::NoLeader { .. }
        | MessagingError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        MessagingError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        MessagingError::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
        MessagingError::NotAMember { .. }
        | MessagingError::Handler { .. }
        | MessagingError::NoHandler { .. }
        | MessagingError::Refused { .. }
        | MessagingError::StreamClosed { .. } => StatusCode::BAD_GATEWAY,
    }
}

async fn send(state: &ApiState, body: &str) -> Answer {
    let me = state.hedge().member_id();
    let options = SendOptions {
        timeout: SEND_TIMEOUT,
    };
    match state
        .hedge()
        .send_with(message(body).to_owned(), options)
        .await
    {
        Ok(reply) => {
            let text = String::from_utf8_lossy(&reply.payload);
            Answer::ok(
                format!("sender={me}, reply={text}"),
                json!({
                    "sender": me,
                    "leader": reply.leader,
                    "token": reply.token,
                    "reply": text,
                }),
            )
        }
        Err(e) => Answer::error(messaging_status(&e), format!("send failed: {e}")),
    }
}

async fn broadcast(state: &ApiState, body: &str) -> Answer {
    let me = state.hedge().member_id();
    let replies = state
        .hedge()
        .broadcast(message(body).to_owned(), BroadcastOptions::default())
        .await;
    // Only this member answered, with an error: the broadcast never left (messaging off, or
    // the message too large).
    if let Some(Err(e)) = replies.get(me)
        && replies.len() == 1
        && matches!(
            e,
            MessagingError::Disabled | MessagingError::TooLarge { .. }
        )
    {
        return Answer::error(messaging_status(e), format!("broadcast failed: {e}"));
    }
    let mut lines = Vec::with_capacity(replies.len());
    let mut results = Vec::with_capacity(replies.len());
    for (member, result) in &replies {
        match result {
            Ok(reply) => {
                let reply = String::from_utf8_lossy(reply);
                lines.push(format!(
                    "broadcast: sender={me}, member={member}, reply={reply}"
                ));
                results.push(json!({ "member": member, "reply": reply }));
            }
            Err(e) => {
                lines.push(format!(
                    "broadcast: sender={me}, member={member}, error={e}"
                ));
                results.push(json!({ "member": member, "error": e.to_string() }));
            }
        }
    }
    Answer::ok(
        lines.join("\n"),
        json!({ "sender": me, "replies": results }),
    )
}

fn members(state: &ApiState) -> Answer {
    let hedge = state.hedge();
    let me = hedge.member_id();
    let leader = hedge.leader();
    let leader_id = leader.as_ref().map(|l| l.id.as_str());
    let members = hedge.members();
    let text = members
        .iter()
        .map(|m| {
            let mut line = format!("{} {}", m.id, m.address.as_deref().unwrap_or("-"));
            if Some(m.id.as_str()) == leader_id {
                line.push_str(" (leader)");
            }
            if m.id == me {
                line.push_str(" (self)");
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n");
    let list: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "incarnation": m.incarnation,
                "leader": Some(m.id.as_str()) == leader_id,
                "self": m.id == me,
            })
        })
        .collect();
    Answer::ok(
        text,
        json!({
            "self": me,
            "leader": leader_id,
            "token": leader.as_ref().map(|l| l.token),
            "members": list,
        }),
    )
}

fn leader(state: &ApiState) -> Answer {
    let hedge = state.hedge();
    match hedge.leader() {
        Some(leader) => {
            let is_self = leader.id == hedge.member_id();
            Answer::ok(
                format!(
                    "leader={}, token={}{}",
                    leader.id,
                    leader.token,
                    if is_self { " (self)" } else { "" }
                ),
                json!({
                    "leader": leader.id,
                    "token": leader.token,
                    "self": hedge.member_id(),
                    "is_leader": is_self && hedge.is_leader(),
                }),
            )
        }
        None => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known yet (an election is under way)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_resolves_with_its_method() {
        for (method, path, _) in ROUTES {
            let path = path.replace("<name>", "jobs");
            let route = Route::resolve(&path).unwrap_or_else(|| panic!("{path}"));
            assert!(route.allows(&method.parse().unwrap()), "{path}");
        }
        assert_eq!(
            Route::resolve("/semaphore/jobs/acquire"),
            Some(Route::Acquire("jobs".into()))
        );
        assert!(Route::Get.allows(&Method::GET) && Route::Get.allows(&Method::POST));
        assert!(!Route::Put.allows(&Method::GET));
        for unknown in [
            "/send/",
            "/nope",
            "/semaphore//acquire",
            "/semaphore/jobs",
            "/semaphore/jobs/steal",
        ] {
            assert_eq!(Route::resolve(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn an_empty_message_is_the_go_demos_default() {
        assert_eq!(message(""), "hello");
        assert_eq!(message("hello-world"), "hello-world");
    }
}
