//! `/semaphore/<name>/acquire` and `/semaphore/<name>/release`: the group's semaphores
//! ([`hedge::Semaphore`]) over HTTP.
//!
//! A permit acquired through the API is held by this member (renewed in the background) until
//! a release names its semaphore, or the member stops. The query string carries the options:
//!
//! * `acquire?limit=N` creates the semaphore with `N` permits if it does not exist (an existing
//!   one with another limit is 409); without `limit` the semaphore must exist (404 otherwise).
//! * `acquire?wait_ms=T` waits up to `T` ms for a free permit (default
//!   [`DEFAULT_ACQUIRE_WAIT`], at most [`MAX_ACQUIRE_WAIT`]; 0: one attempt); a semaphore still
//!   full then is 409.
//! * `release` releases the oldest permit of the semaphore this member holds, or the permit
//!   whose id is the body; 409 when it holds none.

use std::time::Duration;

use hedge::{Permit, Semaphore, SemaphoreError};
use http::StatusCode;
use serde_json::json;

use super::ApiState;
use super::answer::Answer;

/// How long an acquire waits for a free permit by default.
pub const DEFAULT_ACQUIRE_WAIT: Duration = Duration::from_secs(5);
/// The longest wait an acquire may ask for.
pub const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(60);

/// The status of a semaphore failure.
pub fn semaphore_status(error: &SemaphoreError) -> StatusCode {
    match error {
        SemaphoreError::Input(_) => StatusCode::BAD_REQUEST,
        SemaphoreError::LimitMismatch { .. } => StatusCode::CONFLICT,
        SemaphoreError::Unknown { .. } => StatusCode::NOT_FOUND,
        SemaphoreError::Lost { .. } => StatusCode::GONE,
        SemaphoreError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        SemaphoreError::Timings(_) | SemaphoreError::Store(_) | SemaphoreError::Aborted(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The options of an acquire, from its query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireQuery {
    /// Create the semaphore with this limit if it does not exist.
    pub limit: Option<u32>,
    /// How long to wait for a free permit.
    pub wait: Duration,
}

/// Parses `limit=N&wait_ms=T` (other parameters are refused, so that a typo is not ignored).
pub fn parse_acquire_query(query: Option<&str>) -> Result<AcquireQuery, Answer> {
    let mut parsed = AcquireQuery {
        limit: None,
        wait: DEFAULT_ACQUIRE_WAIT,
    };
    let bad = |message: String| Answer::error(StatusCode::BAD_REQUEST, message);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                let limit = value
                    .parse::<u32>()
                    .map_err(|_| bad(format!("limit={value:?} is not a number of permits")))?;
                parsed.limit = Some(limit);
            }
            "wait_ms" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("wait_ms={value:?} is not a number")))?;
                let wait = Duration::from_millis(ms);
                if wait > MAX_ACQUIRE_WAIT {
                    return Err(bad(format!(
                        "wait_ms={ms} is over the {} ms allowed",
                        MAX_ACQUIRE_WAIT.as_millis()
                    )));
                }
                parsed.wait = wait;
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (acquire takes limit and wait_ms)"
                )));
            }
        }
    }
    Ok(parsed)
}

async fn semaphore(
    state: &ApiState,
    name: &str,
    limit: Option<u32>,
) -> Result<Semaphore, SemaphoreError> {
    match limit {
        Some(limit) => state.hedge().semaphore(name, limit).await,
        None => state.hedge().open_semaphore(name).await,
    }
}

/// `POST /semaphore/<name>/acquire`.
pub async fn acquire(state: &ApiState, name: &str, query: Option<&str>) -> Answer {
    let query = match parse_acquire_query(query) {
        Ok(query) => query,
        Err(answer) => return answer,
    };
    let me = state.hedge().member_id();
    let semaphore = match semaphore(state, name, query.limit).await {
        Ok(semaphore) => semaphore,
        Err(e) => return Answer::error(semaphore_status(&e), format!("acquire failed: {e}")),
    };
    let attempt = if query.wait.is_zero() {
        semaphore.try_acquire().await
    } else {
        match tokio::time::timeout(query.wait, semaphore.acquire()).await {
            Ok(result) => result.map(Some),
            // Dropping the acquire cancels it without leaving a permit behind.
            Err(_) => Ok(None),
        }
    };
    let permit = match attempt {
        Ok(Some(permit)) => permit,
        Ok(None) => {
            return Answer::error(
                StatusCode::CONFLICT,
                format!(
                    "semaphore {name} is full (limit {}): no permit within {} ms",
                    semaphore.limit(),
                    query.wait.as_millis()
                ),
            );
        }
        Err(e) => return Answer::error(semaphore_status(&e), format!("acquire failed: {e}")),
    };
    let (id, token) = (permit.id().to_owned(), permit.token());
    let held = {
        let mut permits = state.permits();
        let held = permits.entry(name.to_owned()).or_default();
        held.push(permit);
        held.len()
    };
    Answer::ok(
        format!(
            "acquired: sender={me}, semaphore={name}, limit={}, permit={id}, token={token}, \
             held by this member={held}",
            semaphore.limit()
        ),
        json!({
            "sender": me,
            "semaphore": name,
            "limit": semaphore.limit(),
            "permit": id,
            "token": token,
            "held": held,
        }),
    )
}

/// Takes the permit to release: the one named `id`, or the oldest.
fn take_permit(state: &ApiState, name: &str, id: &str) -> Option<Permit> {
    let mut permits = state.permits();
    let held = permits.get_mut(name)?;
    let index = if id.is_empty() {
        0
    } else {
        held.iter().position(|p| p.id() == id)?
    };
    let permit = (index < held.len()).then(|| held.remove(index));
    if held.is_empty() {
        permits.remove(name);
    }
    permit
}

/// `POST /semaphore/<name>/release` (the body: a permit id, or empty for the oldest).
pub async fn release(state: &ApiState, name: &str, body: &str) -> Answer {
    let id = body.trim();
    let me = state.hedge().member_id();
    let Some(permit) = take_permit(state, name, id) else {
        // Say whether the semaphore exists at all: a typo in its name is a 404.
        if let Err(e) = state.hedge().open_semaphore(name).await {
            return Answer::error(semaphore_status(&e), format!("release failed: {e}"));
        }
        let which = if id.is_empty() {
            "no permit".to_owned()
        } else {
            format!("no permit {id:?}")
        };
        return Answer::error(
            StatusCode::CONFLICT,
            format!("this member holds {which} of semaphore {name} (acquire one first)"),
        );
    };
    let (id, token) = (permit.id().to_owned(), permit.token());
    match permit.release().await {
        Ok(()) => Answer::ok(
            format!("released: sender={me}, semaphore={name}, permit={id}, token={token}"),
            json!({ "sender": me, "semaphore": name, "permit": id, "token": token }),
        ),
        Err(e) => Answer::error(semaphore_status(&e), format!("release failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acquire_query_has_defaults_and_refuses_typos() {
        assert_eq!(
            parse_acquire_query(None).unwrap(),
            AcquireQuery {
                limit: None,
                wait: DEFAULT_ACQUIRE_WAIT
            }
        );
        assert_eq!(
            parse_acquire_query(Some("limit=2&wait_ms=0")).unwrap(),
            AcquireQuery {
                limit: Some(2),
                wait: Duration::ZERO
            }
        );
        for bad in ["limit=two", "wait_ms=-1", "wait_ms=600000", "limt=2"] {
            let answer = parse_acquire_query(Some(bad)).unwrap_err();
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
