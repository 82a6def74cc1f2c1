//! The log's types and rules, as pure functions shared by every backend.
//!
//! The log keeps, per group and key, a sequence of **versions**. Each version records the value
//! (bytes), the writer (member id and incarnation), the fencing token the writer held when it
//! wrote (if any), a unique entry id, the request id that makes retries idempotent, the commit
//! timestamp, and a **sequence number**.
//!
//! # Why a sequence number
//!
//! Two commits can share a commit timestamp (two versions written in one transaction; on the
//! memory store, whose clock stands still under paused time, any two writes), so ordering by
//! timestamp alone makes "latest" ambiguous (hedge's Go `Get` has that flaw). Every put assigns
//! `seq = last_seq + 1` from the key's row **in the put's own transaction**, so two puts to the
//! same key always conflict and serialise, their sequence numbers follow commit order, and
//! "latest" is the greatest `seq`: never a tie. The key row keeps `last_seq` even when every
//! version has been trimmed, so a sequence number is never reused for another value.
//!
//! # Limits
//!
//! | what | limit | why |
//! |---|---|---|
//! | key | 1 to [`MAX_KEY_BYTES`] bytes of UTF-8, no control characters | a key column of Spanner (`STRING(1024)`); keys are part of the primary key, whose total Spanner caps at 8 KiB |
//! | value | 1 to [`MAX_VALUE_BYTES`] bytes | Spanner stores at most 10 MiB in one cell; the value travels base64-encoded in the commit request, which Spanner caps at 100 MiB |
//! | request id | 1 to [`MAX_REQUEST_ID_BYTES`] bytes, no control characters | the `STRING(128)` column of the unique index |
//! | keys listed per page | 1 to [`MAX_LIST_LIMIT`] | one strong read returns them all |
//!
//! Each put is one commit of at most three mutations (the version, the key row, and for an
//! overwrite one range delete), far below Spanner's 80,000 mutations per commit; trimming is one
//! range delete whatever the number of versions it drops.

use std::str::Utf8Error;
use std::time::{Duration, SystemTime};

use super::Candidate;
use super::lease::ObservedLock;

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes: Spanner's limit for one cell (10 MiB).
pub const MAX_VALUE_BYTES: usize = 10 * 1024 * 1024;
/// The longest request (idempotency) id, in bytes of UTF-8.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The most keys one listing returns.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// The largest sequence number: stored as Spanner `INT64`.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Input the log refuses, before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogInputError {
    /// An empty key.
    #[error("a log key must not be empty")]
    EmptyKey,
    /// A key over [`MAX_KEY_BYTES`].
    #[error("log key of {len} bytes is longer than the {max} bytes allowed")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// [`MAX_KEY_BYTES`].
        max: usize,
    },
    /// A key, prefix or request id with a control character (NUL, newline...).
    #[error("{what} {value:?} contains a control character")]
    ControlCharacter {
        /// What was checked.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// An empty value.
    #[error("a log value must not be empty")]
    EmptyValue,
    /// A value over [`MAX_VALUE_BYTES`].
    #[error(
        "log value of {len} bytes is larger than the {max} bytes allowed (Spanner's limit for \
         one cell); store large objects elsewhere and log a reference"
    )]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
        /// [`MAX_VALUE_BYTES`].
        max: usize,
    },
    /// A request id that is empty or over [`MAX_REQUEST_ID_BYTES`].
    #[error("request id of {len} bytes must be 1 to {max} bytes long")]
    InvalidRequestId {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_REQUEST_ID_BYTES`].
        max: usize,
    },
    /// A fenced put without a token to check.
    #[error("a fenced put needs the fencing token to check")]
    FenceWithoutToken,
    /// A token that Spanner cannot store (above `i64::MAX`).
    #[error("fencing token {0} is out of range")]
    TokenOutOfRange(u64),
    /// A count of zero where at least one is needed (a page of keys, the versions to read or
    /// to keep).
    #[error("{what} must be at least 1")]
    Zero {
        /// What was zero.
        what: &'static str,
    },
    /// A listing limit over [`MAX_LIST_LIMIT`].
    #[error("at most {max} keys can be listed at once, not {limit}")]
    ListLimit {
        /// The limit given.
        limit: u32,
        /// [`MAX_LIST_LIMIT`].
        max: u32,
    },
    /// A prefix longer than any key can be.
    #[error("key prefix of {len} bytes is longer than any key ({max} bytes)")]
    PrefixTooLong {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_KEY_BYTES`].
        max: usize,
    },
}

/// How a put treats the versions already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PutMode {
    /// Add a new version; the older ones stay (until trimmed).
    #[default]
    Append,
    /// Replace every version of the key with this one (hedge's `NoAppend`): the key then holds
    /// exactly one version, with a fresh sequence number, so a `(key, seq)` pair never names
    /// two different values.
    Overwrite,
}

/// One put, as the store receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Who writes: member id and incarnation.
    pub writer: Candidate,
    /// The fencing token recorded with the version: the writer's token when it leads, or the
    /// token checked by `fence`.
    pub token: Option<u64>,
    /// Append or overwrite.
    pub mode: PutMode,
    /// The idempotency key: a put whose request id already names a version of the key writes
    /// nothing and returns that version (a backend may find out from its read, or from the
    /// unique index refusing the write). `None` makes no such check.
    pub request_id: Option<String>,
    /// Fence the put on this lock of the group: it commits only if `token` is the lock's
    /// current token and its holder's lease runs, checked in the put's own transaction.
    pub fence: Option<String>,
}

impl PutRequest {
    /// Checks the key, the value, the request id and the fence.
    pub fn validate(&self) -> Result<(), LogInputError> {
        validate_key(&self.key)?;
        validate_value(&self.value)?;
        if let Some(id) = &self.request_id {
            validate_request_id(id)?;
        }
        if self.fence.is_some() && self.token.is_none() {
            return Err(LogInputError::FenceWithoutToken);
        }
        if let Some(token) = self.token.filter(|t| *t > MAX_SEQ) {
            return Err(LogInputError::TokenOutOfRange(token));
        }
        Ok(())
    }
}

/// One version of a log key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The key.
    pub key: String,
    /// The version's sequence number: greater than every earlier version's of the key.
    pub seq: u64,
    /// A unique id (a UUID).
    pub id: String,
    /// The value.
    pub value: Vec<u8>,
    /// The writer's member id.
    pub writer: String,
    /// The writer's incarnation (the process that wrote).
    pub writer_incarnation: String,
    /// The fencing token the writer held (or that the put was fenced on), if any.
    pub token: Option<u64>,
    /// The put's request (idempotency) id, if it had one.
    pub request_id: Option<String>,
    /// The commit timestamp, on the store's clock.
    pub committed_at: SystemTime,
}

impl LogEntry {
    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(&self.value)
    }
}

/// What a put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new version was written.
    Written(LogEntry),
    /// The request id already named this version: nothing was written (a retried put).
    Replayed(LogEntry),
    /// The fence failed: the token is not the lock's current one. Nothing was written.
    Fenced {
        /// The lock's current token, `None` when nobody holds it.
        current: Option<u64>,
    },
}

/// Which end of a key's versions a read starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogOrder {
    /// Greatest sequence number first.
    NewestFirst,
    /// Smallest sequence number first.
    OldestFirst,
}

/// Which versions of a key to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogQuery {
    /// From which end.
    pub order: LogOrder,
    /// At most this many (`None`: all).
    pub limit: Option<u32>,
}

impl LogQuery {
    /// The latest version.
    pub fn latest() -> Self {
        Self::newest(1)
    }

    /// The `n` newest versions, newest first.
    pub fn newest(n: u32) -> Self {
        Self {
            order: LogOrder::NewestFirst,
            limit: Some(n),
        }
    }

    /// The oldest version still kept.
    pub fn oldest() -> Self {
        Self {
            order: LogOrder::OldestFirst,
            limit: Some(1),
        }
    }

    /// Every version, newest first.
    pub fn all() -> Self {
        Self {
            order: LogOrder::NewestFirst,
            limit: None,
        }
    }

    /// Checks the limit.
    pub fn validate(&self) -> Result<(), LogInputError> {
        if self.limit == Some(0) {
            return Err(LogInputError::Zero {
                what: "the number of versions to read",
            });
        }
        Ok(())
    }
}

/// Which versions of a key a trim drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Keep the `n` newest versions, drop the rest (`n` ≥ 1).
    KeepNewest(u32),
    /// Drop every version committed more than this long ago, on the store's clock (this may
    /// drop the latest version too).
    MaxAge(Duration),
}

impl Retention {
    /// Checks the count.
    pub fn validate(&self) -> Result<(), LogInputError> {
        match self {
            Retention::KeepNewest(0) => Err(LogInputError::Zero {
                what: "the number of versions to keep",
            }),
            _ => Ok(()),
        }
    }
}

/// Checks a key.
pub fn validate_key(key: &str) -> Result<(), LogInputError> {
    if key.is_empty() {
        return Err(LogInputError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LogInputError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    no_control("log key", key)
}

/// Checks a key prefix for listing (the empty prefix lists every key).
pub fn validate_prefix(prefix: &str) -> Result<(), LogInputError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(LogInputError::PrefixTooLong {
            len: prefix.len(),
            max: MAX_KEY_BYTES,
        });
    }
    no_control("key prefix", prefix)
}

/// Checks a page size for listing.
pub fn validate_list_limit(limit: u32) -> Result<(), LogInputError> {
    match limit {
        0 => Err(LogInputError::Zero {
            what: "the number of keys to list",
        }),
        l if l > MAX_LIST_LIMIT => Err(LogInputError::ListLimit {
            limit: l,
            max: MAX_LIST_LIMIT,
        }),
        _ => Ok(()),
    }
}

/// Checks a value.
pub fn validate_value(value: &[u8]) -> Result<(), LogInputError> {
    if value.is_empty() {
        return Err(LogInputError::EmptyValue);
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(LogInputError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a request (idempotency) id.
pub fn validate_request_id(id: &str) -> Result<(), LogInputError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
        return Err(LogInputError::InvalidRequestId {
            len: id.len(),
            max: MAX_REQUEST_ID_BYTES,
        });
    }
    no_control("request id", id)
}

fn no_control(what: &'static str, value: &str) -> Result<(), LogInputError> {
    if value.chars().any(char::is_control) {
        return Err(LogInputError::ControlCharacter {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// What a put's transaction read before deciding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutObservation {
    /// The key row's last sequence number (`None`: the key was never written).
    pub last_seq: Option<u64>,
    /// The version that carries the put's request id, if one does.
    pub replay: Option<LogEntry>,
    /// The fencing lock's row, when the put is fenced (`None`: no row).
    pub lock: Option<ObservedLock>,
}

/// What a put must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutDecision {
    /// Write nothing; return this version (the request id was seen before).
    Replay(LogEntry),
    /// Write nothing; the fence failed.
    Fenced {
        /// The lock's current token.
        current: Option<u64>,
    },
    /// Write a version with this sequence number, and set the key row's `last_seq` to it;
    /// with `replace_all`, delete every earlier version first (an overwrite).
    Write {
        /// The new version's sequence number.
        seq: u64,
        /// Whether the earlier versions go.
        replace_all: bool,
    },
}

/// The key's sequence numbers are used up (only a hand-edited row can get there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the log key's sequence number {0} is the largest there is")]
pub struct SeqExhausted(pub u64);

/// Decides a put from what its transaction read.
///
/// The order matters: a retried put whose first attempt committed is recognised by its request
/// id *before* the fence is checked, since the fence held when that attempt committed.
pub fn decide_put(
    request: &PutRequest,
    observed: &PutObservation,
) -> Result<PutDecision, SeqExhausted> {
    if let Some(original) = &observed.replay {
        return Ok(PutDecision::Replay(original.clone()));
    }
    if request.fence.is_some() {
        let current = observed
            .lock
            .as_ref()
            .and_then(ObservedLock::live_holder)
            .map(|h| h.token);
        if current.is_none() || current != request.token {
            return Ok(PutDecision::Fenced { current });
        }
    }
    let seq = match observed.last_seq {
        None => 1,
        Some(last) if last >= MAX_SEQ => return Err(SeqExhausted(last)),
        Some(last) => last + 1,
    };
    Ok(PutDecision::Write {
        seq,
        replace_all: request.mode == PutMode::Overwrite,
    })
}

/// The greatest sequence number a trim drops (every version at or below it goes), from the
/// key's versions newest first as `(seq, age on the store's clock)`; `None`: nothing to drop.
///
/// Within a key, commit order is sequence order (puts to one key serialise on its row), so
/// "older than an age" is a suffix of the versions, and one range delete drops it.
pub fn trim_cut(retention: Retention, newest_first: &[(u64, Duration)]) -> Option<u64> {
    match retention {
        Retention::KeepNewest(n) => newest_first
            .get(usize::try_from(n).unwrap_or(usize::MAX))
            .map(|(seq, _)| *seq),
        Retention::MaxAge(max) => newest_first
            .iter()
            .find(|(_, age)| *age > max)
            .map(|(seq, _)| *seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mode: PutMode) -> PutRequest {
        PutRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            writer: Candidate {
                id: "a".into(),
                incarnation: "1".into(),
            },
            token: None,
            mode,
            request_id: None,
            fence: None,
        }
    }

    fn lock(holder: Option<&str>, token: u64, age_ms: u64) -> ObservedLock {
        ObservedLock {
            holder: holder.map(str::to_owned),
            holder_incarnation: None,
            token,
            lease: Duration::from_secs(1),
            age: Duration::from_millis(age_ms),
            granted_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            key: "k".into(),
            seq,
            id: "id".into(),
            value: b"old".to_vec(),
            writer: "a".into(),
            writer_incarnation: "1".into(),
            token: None,
            request_id: Some("r".into()),
            committed_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn sequence_numbers_follow_the_key_row() {
        let r = request(PutMode::Append);
        assert_eq!(
            decide_put(&r, &PutObservation::default()),
            Ok(PutDecision::Write {
                seq: 1,
                replace_all: false
            })
        );
        let seen = PutObservation {
            last_seq: Some(41),
            ..PutObservation::default()
        };
        assert_eq!(
            decide_put(&request(PutMode::Overwrite), &seen),
            Ok(PutDecision::Write {
                seq: 42,
                replace_all: true
            })
        );
        let full = PutObservation {
            last_seq: Some(MAX_SEQ),
            ..PutObservation::default()
        };
        assert_eq!(decide_put(&r, &full), Err(SeqExhausted(MAX_SEQ)));
    }

    #[test]
    fn a_seen_request_id_replays_before_the_fence_is_checked() {
        let mut r = request(PutMode::Append);
        r.request_id = Some("r".into());
        r.fence = Some("leader".into());
        r.token = Some(7);
        let seen = PutObservation {
            last_seq: Some(3),
            replay: Some(entry(2)),
            lock: Some(lock(Some("b"), 9, 0)),
        };
        assert_eq!(decide_put(&r, &seen), Ok(PutDecision::Replay(entry(2))));
    }

    #[test]
    fn a_fence_needs_the_live_current_token() {
        let mut r = request(PutMode::Append);
        r.fence = Some("leader".into());
        r.token = Some(7);
        let with = |lock: Option<ObservedLock>| PutObservation {
            lock,
            ..PutObservation::default()
        };
        assert!(matches!(
            decide_put(&r, &with(Some(lock(Some("a"), 7, 10)))),
            Ok(PutDecision::Write { seq: 1, .. })
        ));
        // A newer term holds the lock.
        assert_eq!(
            decide_put(&r, &with(Some(lock(Some("b"), 8, 10)))),
            Ok(PutDecision::Fenced { current: Some(8) })
        );
        // Our lease ran out, or the lock was released, or never existed.
        for observed in [Some(lock(Some("a"), 7, 1000)), Some(lock(None, 7, 0)), None] {
            assert_eq!(
                decide_put(&r, &with(observed)),
                Ok(PutDecision::Fenced { current: None })
            );
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut r = request(PutMode::Append);
        r.key = String::new();
        assert_eq!(r.validate(), Err(LogInputError::EmptyKey));
        r.key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            r.validate(),
            Err(LogInputError::KeyTooLong { len: 1025, .. })
        ));
        r.key = "a\u{0}b".into();
        assert!(matches!(
            r.validate(),
            Err(LogInputError::ControlCharacter { .. })
        ));
        r.key = "ключ/ü".into();
        r.validate().unwrap();
        r.value.clear();
        assert_eq!(r.validate(), Err(LogInputError::EmptyValue));
        r.value = vec![0; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            r.validate(),
            Err(LogInputError::ValueTooLarge { .. })
        ));
        r.value = vec![0; MAX_VALUE_BYTES];
        r.validate().unwrap();
        r.request_id = Some(String::new());
        assert!(matches!(
            r.validate(),
            Err(LogInputError::InvalidRequestId { .. })
        ));
        r.request_id = None;
        r.fence = Some("leader".into());
        assert_eq!(r.validate(), Err(LogInputError::FenceWithoutToken));
        assert!(LogQuery::newest(0).validate().is_err());
        assert!(Retention::KeepNewest(0).validate().is_err());
        assert!(validate_list_limit(0).is_err());
        assert!(validate_list_limit(MAX_LIST_LIMIT + 1).is_err());
        validate_prefix("").unwrap();
    }

    #[test]
    fn trims_cut_a_suffix() {
        let ms = Duration::from_millis;
        let versions = [(9, ms(0)), (7, ms(10)), (4, ms(20)), (1, ms(30))];
        assert_eq!(trim_cut(Retention::KeepNewest(2), &versions), Some(4));
        assert_eq!(trim_cut(Retention::KeepNewest(4), &versions), None);
        assert_eq!(trim_cut(Retention::MaxAge(ms(10)), &versions), Some(4));
        assert_eq!(trim_cut(Retention::MaxAge(ms(30)), &versions), None);
        assert_eq!(trim_cut(Retention::MaxAge(ms(0)), &versions), Some(7));
    }
}
