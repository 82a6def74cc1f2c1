//! Peer authentication: every request proves that its sender knows the group secret, without
//! sending the secret.
//!
//! # The scheme
//!
//! The sender signs `hedge-v1 \n group \n sender \n timestamp \n method \n path` with
//! HMAC-SHA256 under the group secret and sends the group, its member id, the timestamp
//! (milliseconds since the Unix epoch) and the signature in headers
//! ([`wire::HEADER_GROUP`](super::wire::HEADER_GROUP) and the others). The receiver, before any
//! handler runs:
//!
//! 1. refuses a request whose group is not its own ([`AuthError::WrongGroup`]);
//! 2. refuses a timestamp more than [`CLOCK_WINDOW`] away from its own clock, so a captured
//!    signature cannot be replayed later than that;
//! 3. recomputes the HMAC and compares it in constant time (aws-lc-rs `hmac::verify`).
//!
//! Member ids and group names contain no whitespace (they are validated on the builder), so
//! the newline-separated input is unambiguous.
//!
//! What it does not do: it does not sign the body (a body can be a stream of any length), so an
//! attacker who can *read and rewrite* traffic could, within the clock window, replay a signed
//! header with another body. Enable TLS (see [`super::TlsConfig`]) on networks you do not trust;
//! with TLS the signature still proves group membership, and TLS protects the rest.
//!
//! The secret is held in a [`GroupSecret`], whose `Debug` prints nothing of it; it is never
//! logged.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use http::HeaderMap;

use super::wire::{HEADER_GROUP, HEADER_SENDER, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// How far a request's timestamp may be from the receiver's clock. Pods of a cluster keep their
/// clocks within milliseconds of each other with NTP; this only has to absorb that and the
/// request's time in flight.
pub const CLOCK_WINDOW: Duration = Duration::from_secs(60);

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The group secret environment variable.
pub const ENV_GROUP_SECRET: &str = "HEDGE_GROUP_SECRET";
/// The environment variable naming a file that holds the group secret (a mounted Secret).
pub const ENV_GROUP_SECRET_FILE: &str = "HEDGE_GROUP_SECRET_FILE";

/// Why a request was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or not valid text.
    #[error("missing or malformed header {0}")]
    MissingHeader(&'static str),
    /// The request is for another group.
    #[error("the request is for group {got:?}, this member is in group {expected:?}")]
    WrongGroup {
        /// The receiver's group.
        expected: String,
        /// The request's group.
        got: String,
    },
    /// The timestamp is too far from the receiver's clock.
    #[error(
        "the request's timestamp is {skew_ms} ms away from this member's clock (limit {limit_ms} ms): \
         check the clocks (NTP) of both members"
    )]
    Stale {
        /// The difference, in milliseconds.
        skew_ms: u64,
        /// The limit, in milliseconds.
        limit_ms: u64,
    },
    /// The signature does not match: the sender does not know the group secret.
    #[error("bad signature: the sender does not know the group secret")]
    BadSignature,
}

/// Problems with the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret was configured.
    #[error(
        "no group secret: set {ENV_GROUP_SECRET}, or {ENV_GROUP_SECRET_FILE} to a file holding it \
         (the operator mounts the group's Secret)"
    )]
    Missing,
    /// The secret is too short to resist guessing.
    #[error("the group secret is {0} bytes; it needs at least {MIN_SECRET_LEN}")]
    TooShort(usize),
    /// The secret file could not be read.
    #[error("cannot read the group secret file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The group secret. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct GroupSecret(Vec<u8>);

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSecret(<redacted>)")
    }
}

impl GroupSecret {
    /// A secret from bytes (surrounding whitespace is trimmed, as files often end in a newline).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SecretError> {
        let bytes = secret.as_ref().trim_ascii();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Reads the secret from a file (a mounted Kubernetes Secret).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| SecretError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(bytes)
    }

    /// Reads the secret named by the variables: [`ENV_GROUP_SECRET_FILE`] first, then
    /// [`ENV_GROUP_SECRET`].
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, SecretError> {
        if let Some(path) = get(ENV_GROUP_SECRET_FILE).filter(|p| !p.is_empty()) {
            return Self::from_file(path);
        }
        match get(ENV_GROUP_SECRET).filter(|s| !s.is_empty()) {
            Some(secret) => Self::new(secret),
            None => Err(SecretError::Missing),
        }
    }

    /// A random secret, for tests and single-process groups.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }
}

/// Signs outgoing requests and verifies incoming ones for one member of one group.
#[derive(Clone)]
pub struct Authenticator {
    group: String,
    member_id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("group", &self.group)
            .field("member_id", &self.member_id)
            .finish_non_exhaustive()
    }
}

/// The headers that authenticate one request.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The timestamp header value.
    pub timestamp: String,
    /// The signature header value.
    pub signature: String,
}

impl Authenticator {
    /// An authenticator for `member_id` of `group` under `secret`.
    pub fn new(
        group: impl Into<String>,
        member_id: impl Into<String>,
        secret: &GroupSecret,
    ) -> Self {
        Self {
            group: group.into(),
            member_id: member_id.into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret.0),
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Signs a request from this member to `method path`, now.
    pub fn sign(&self, method: &str, path: &str) -> Credentials {
        self.sign_at(method, path, unix_millis(SystemTime::now()))
    }

    fn sign_at(&self, method: &str, path: &str, timestamp_ms: u64) -> Credentials {
        let timestamp = timestamp_ms.to_string();
        let input = signing_input(&self.group, &self.member_id, &timestamp, method, path);
        let tag = hmac::sign(&self.key, input.as_bytes());
        Credentials {
            timestamp,
            signature: hex(tag.as_ref()),
        }
    }

    /// Verifies a request's headers; returns the sender's member id.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
    ) -> Result<String, AuthError> {
        self.verify_at(headers, method, path, SystemTime::now())
    }

    fn verify_at(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::MissingHeader(name))
        };
        let group = text(HEADER_GROUP)?;
        if group != self.group {
            return Err(AuthError::WrongGroup {
                expected: self.group.clone(),
                got: group.chars().take(253).collect(),
            });
        }
        let sender = text(HEADER_SENDER)?;
        if sender.is_empty() || sender.len() > 253 || sender.chars().any(char::is_whitespace) {
            return Err(AuthError::MissingHeader(HEADER_SENDER));
        }
        let timestamp = text(HEADER_TIMESTAMP)?;
        let at: u64 = timestamp
            .parse()
            .map_err(|_| AuthError::MissingHeader(HEADER_TIMESTAMP))?;
        let skew = unix_millis(now).abs_diff(at);
        let limit = u64::try_from(CLOCK_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if skew > limit {
            return Err(AuthError::Stale {
                skew_ms: skew,
                limit_ms: limit,
            });
        }
        let signature = unhex(text(HEADER_SIGNATURE)?).ok_or(AuthError::BadSignature)?;
        let input = signing_input(group, sender, timestamp, method, path);
        hmac::verify(&self.key, input.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(sender.to_owned())
    }
}

fn signing_input(group: &str, sender: &str, timestamp: &str, method: &str, path: &str) -> String {
    format!("hedge-v1\n{group}\n{sender}\n{timestamp}\n{method}\n{path}")
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(group: &str, sender: &str, c: &Credentials) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_GROUP, HeaderValue::from_str(group).unwrap());
        h.insert(HEADER_SENDER, HeaderValue::from_str(sender).unwrap());
        h.insert(
            HEADER_TIMESTAMP,
            HeaderValue::from_str(&c.timestamp).unwrap(),
        );
        h.insert(
            HEADER_SIGNATURE,
            HeaderValue::from_str(&c.signature).unwrap(),
        );
        h
    }

    fn secret(s: &str) -> GroupSecret {
        GroupSecret::new(s).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_names_its_sender() {
        let s = secret("0123456789abcdef0123");
        let a = Authenticator::new("g", "a", &s);
        let b = Authenticator::new("g", "b", &s);
        let c = a.sign("POST", "/hedge/v1/send");
        assert_eq!(
            b.verify(&headers("g", "a", &c), "POST", "/hedge/v1/send"),
            Ok("a".into())
        );
    }

    #[test]
    fn forged_moved_or_stale_requests_are_refused() {
        let a = Authenticator::new("g", "a", &secret("0123456789abcdef0123"));
        let other = Authenticator::new("g", "x", &secret("another secret, 20 b"));
        let c = a.sign("POST", "/hedge/v1/send");
        // Another secret.
        assert_eq!(
            other.verify(&headers("g", "a", &c), "POST", "/hedge/v1/send"),
            Err(AuthError::BadSignature)
        );
        // The signature of one route used on another, or by another sender.
        assert_eq!(
            a.verify(&headers("g", "a", &c), "POST", "/hedge/v1/broadcast"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            a.verify(&headers("g", "b", &c), "POST", "/hedge/v1/send"),
            Err(AuthError::BadSignature)
        );
        // Another group.
        assert!(matches!(
            a.verify(&headers("h", "a", &c), "POST", "/hedge/v1/send"),
            Err(AuthError::WrongGroup { .. })
        ));
        // Too old.
        let later = SystemTime::now() + CLOCK_WINDOW + Duration::from_secs(1);
        assert!(matches!(
            a.verify_at(&headers("g", "a", &c), "POST", "/hedge/v1/send", later),
            Err(AuthError::Stale { .. })
        ));
        // Missing headers and garbage signatures.
        assert_eq!(
            a.verify(&HeaderMap::new(), "POST", "/hedge/v1/send"),
            Err(AuthError::MissingHeader(HEADER_GROUP))
        );
        let mut garbage = c.clone();
        garbage.signature = "zz".repeat(32);
        assert_eq!(
            a.verify(&headers("g", "a", &garbage), "POST", "/hedge/v1/send"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(matches!(
            GroupSecret::new("short"),
            Err(SecretError::TooShort(5))
        ));
        let s = secret("  0123456789abcdef0123\n");
        assert_eq!(s.0, b"0123456789abcdef0123");
        assert!(!format!("{s:?}").contains("0123"));
        assert!(matches!(
            GroupSecret::from_vars(|_| None),
            Err(SecretError::Missing)
        ));
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(unhex("abc"), None);
    }
}
