//! One answer of the HTTP API, in both of its forms: plain text for curl, JSON for clients that
//! send `Accept: application/json`. Errors are answers too: a 4xx or 5xx status with a message.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// An answer: a status, its text form and its JSON form.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The plain-text body (without the final newline, which rendering adds).
    pub text: String,
    /// The JSON body.
    pub json: Value,
    /// The methods the route accepts, for a 405's `Allow` header.
    pub allow: Option<&'static str>,
}

impl Answer {
    /// A 200 answer.
    pub fn ok(text: impl Into<String>, json: Value) -> Self {
        Self {
            status: StatusCode::OK,
            text: text.into(),
            json,
            allow: None,
        }
    }

    /// An error: `error: <message>` as text, `{"error": message, "status": code}` as JSON.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            text: format!("error: {message}"),
            json: json!({ "error": message, "status": status.as_u16() }),
            allow: None,
        }
    }

    /// A 405 for a route that accepts only `allow`.
    pub fn method_not_allowed(path: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} accepts {allow} only"),
            )
        }
    }

    /// The HTTP response: JSON when `json`, text otherwise.
    pub fn render(self, json: bool) -> Response<Full<Bytes>> {
        let (body, content_type) = if json {
            (format!("{}\n", self.json), JSON)
        } else {
            (format!("{}\n", self.text), TEXT)
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Whether the client asked for JSON (`Accept: application/json`, alone or among others).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(JSON))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_form() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_json(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Application/JSON;q=0.9"),
        );
        assert!(wants_json(&headers));
    }

    #[test]
    fn errors_carry_their_message_in_both_forms() {
        let answer = Answer::method_not_allowed("/put", "POST");
        let response = answer.clone().render(false);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        assert_eq!(answer.text, "error: /put accepts POST only");
        assert_eq!(answer.json["status"], 405);
        assert_eq!(answer.json["error"], "/put accepts POST only");
    }
}
