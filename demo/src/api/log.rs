//! `/put` and `/get`: the group's log ([`hedge::Log`]) as hedge's Go demo exposes it.
//!
//! * `POST /put` with the body `<key> <value>` (split at the first space; the value may contain
//!   spaces) appends a version and answers `put: sender=<member>, key=<key>, value=<value>`.
//! * `POST /get` with the body `<key>` (or `GET /get?key=<key>`) answers
//!   `get: sender=<member>, key=<key>, value=<value>` with the latest version, 404 when the key
//!   has none.

use hedge::KvError;
use http::StatusCode;
use serde_json::json;

use super::ApiState;
use super::answer::Answer;

/// The status of a log failure: the input is refused (400), or the store failed (503 when
/// retrying may help, 500 otherwise).
pub fn log_status(error: &KvError) -> StatusCode {
    match error {
        KvError::Input(_) => StatusCode::BAD_REQUEST,
        KvError::Fenced { .. } => StatusCode::CONFLICT,
        KvError::NotLeader { .. } => StatusCode::SERVICE_UNAVAILABLE,
        KvError::NotUtf8 { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        KvError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        KvError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Splits a `/put` body into key and value at the first space (a final newline, as `echo`
/// leaves it, is dropped).
pub fn parse_put(body: &str) -> Result<(&str, &str), Answer> {
    let body = body.strip_suffix('\n').unwrap_or(body);
    match body.split_once(' ') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key, value)),
        _ => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            "the body must be \"<key> <value>\", e.g. curl localhost:8081/put -d \"samplekey samplevalue\"",
        )),
    }
}

/// `POST /put`.
pub async fn put(state: &ApiState, body: &str) -> Answer {
    let (key, value) = match parse_put(body) {
        Ok(kv) => kv,
        Err(answer) => return answer,
    };
    let me = state.hedge().member_id();
    match state.hedge().log().put(key, value).await {
        Ok(entry) => Answer::ok(
            format!("put: sender={me}, key={key}, value={value}"),
            json!({
                "sender": me,
                "key": key,
                "value": value,
                "seq": entry.seq,
                "token": entry.token,
            }),
        ),
        Err(e) => Answer::error(log_status(&e), format!("put failed: {e}")),
    }
}

/// `GET /get?key=<key>` or `POST /get` with the key as the body.
pub async fn get(state: &ApiState, key: &str) -> Answer {
    let key = key.strip_suffix('\n').unwrap_or(key);
    if key.is_empty() {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "name the key: curl localhost:8081/get -d \"samplekey\"",
        );
    }
    let me = state.hedge().member_id();
    match state.hedge().log().get(key).await {
        Ok(Some(entry)) => {
            let value = String::from_utf8_lossy(&entry.value);
            Answer::ok(
                format!("get: sender={me}, key={key}, value={value}"),
                json!({
                    "sender": me,
                    "key": key,
                    "value": value,
                    "seq": entry.seq,
                    "writer": entry.writer,
                    "token": entry.token,
                }),
            )
        }
        Ok(None) => Answer::error(StatusCode::NOT_FOUND, format!("no value for key {key:?}")),
        Err(e) => Answer::error(log_status(&e), format!("get failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_is_a_key_and_a_value() {
        assert_eq!(
            parse_put("samplekey samplevalue").unwrap(),
            ("samplekey", "samplevalue")
        );
        assert_eq!(parse_put("k a b c\n").unwrap(), ("k", "a b c"));
        for bad in ["", "samplekey", "samplekey ", " value"] {
            assert_eq!(
                parse_put(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }
}
