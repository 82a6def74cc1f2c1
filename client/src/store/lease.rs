//! The lease rules, as pure functions shared by every backend.
//!
//! A backend reads the lock row inside its atomic step, asks these functions what to do, and
//! writes the answer in the same step. Keeping the rules here means the memory store, which the
//! fast tests exercise, and the Spanner store decide exactly alike.

use std::time::{Duration, SystemTime};

/// The largest fencing token: tokens are stored as Spanner `INT64`, so every backend stops at
/// `i64::MAX`.
pub const MAX_TOKEN: u64 = i64::MAX as u64;

/// The token space of a lock is used up (only a hand-edited row can get there: the clock floor
/// reaches it in the year 294,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the lock's fencing token {previous} is the largest there is: no greater token can be granted; delete the row by hand to start again from the clock"
)]
pub struct TokensExhausted {
    /// The token recorded in the row.
    pub previous: u64,
}

/// A lock row as an atomic step observed it, with its age measured on the store's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLock {
    /// The holder, `None` once released.
    pub holder: Option<String>,
    /// The holder's incarnation (`None` once released, or for rows written before schema
    /// version 3).
    pub holder_incarnation: Option<String>,
    /// The last token granted.
    pub token: u64,
    /// The lease the holder asked for at its last grant or renewal.
    pub lease: Duration,
    /// Time since the last grant or renewal committed, on the store's clock. A read that lands
    /// in the same instant as that commit (or, with coarse clocks, seemingly before it) sees
    /// zero: such a lock is alive, never expired (spindle's W4).
    pub age: Duration,
    /// When the current term was granted, on the store's clock.
    pub granted_at: SystemTime,
}

impl ObservedLock {
    /// Whether the holder's lease has run out (or the lock was released).
    pub fn is_free(&self) -> bool {
        self.holder.is_none() || self.age >= self.lease
    }

    /// The holder, while its lease runs.
    pub fn live_holder(&self) -> Option<LockHolder> {
        if self.is_free() {
            return None;
        }
        Some(LockHolder {
            id: self.holder.clone()?,
            incarnation: self.holder_incarnation.clone(),
            token: self.token,
            remaining: self.lease.saturating_sub(self.age),
            since: self.granted_at,
        })
    }
}

/// The holder of a lock as seen by a strong read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The holder's member id.
    pub id: String,
    /// The holder's incarnation, when recorded.
    pub incarnation: Option<String>,
    /// The fencing token of the holder's term.
    pub token: u64,
    /// How much of the holder's lease was left when the store looked, on the store's clock.
    pub remaining: Duration,
    /// When the term was granted, on the store's clock.
    pub since: SystemTime,
}

/// The answer to an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The lock is ours, under this fencing token.
    Granted {
        /// The fencing token of the new term.
        token: u64,
    },
    /// Someone else holds the lock.
    Held(LockHolder),
}

/// The answer to a renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease was extended.
    Renewed,
    /// The term is over; the reason says why.
    Lost(LossCause),
}

/// Why a renewal found the term over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The lease ran out before the renewal arrived (nobody else took the lock yet).
    Expired,
    /// Another term holds the lock now.
    Deposed {
        /// The holder now, if the lock is held.
        holder: Option<String>,
        /// The newest token.
        token: u64,
    },
    /// The lock was released (by this member's term, or deleted by someone).
    Released,
}

/// The answer to a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lock is free now.
    Released,
    /// The term no longer held the lock; nothing changed.
    NotHolder,
}

/// What an acquire step must write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireDecision {
    /// Write a new term with this token (holder, lease, heartbeat = now, granted_at = now).
    Grant {
        /// The new fencing token.
        token: u64,
    },
    /// Write nothing; report the holder.
    Held(LockHolder),
}

/// The next fencing token: greater than the last one, and never below the store clock in
/// microseconds since the Unix epoch; at most [`MAX_TOKEN`].
///
/// The clock floor is what keeps tokens increasing when a lock row is deleted (by a person, or a
/// clean-up gone wrong, spindle's W6/W7): the next grant then starts from the clock, which is past
/// every token granted before, since no lock is granted more than once a microsecond. (The
/// memory store also keeps a high-water mark per lock, since its clock can stand still.)
pub fn next_token(previous: Option<u64>, now_unix_micros: u64) -> Result<u64, TokensExhausted> {
    let after_previous = match previous {
        None => 1,
        Some(p) if p >= MAX_TOKEN => return Err(TokensExhausted { previous: p }),
        Some(p) => p + 1,
    };
    Ok(after_previous.max(now_unix_micros.min(MAX_TOKEN)))
}

/// Decides an acquire from the row the step read (`None`: no row).
pub fn decide_acquire(
    row: Option<&ObservedLock>,
    now_unix_micros: u64,
) -> Result<AcquireDecision, TokensExhausted> {
    match row.and_then(ObservedLock::live_holder) {
        Some(holder) => Ok(AcquireDecision::Held(holder)),
        None => Ok(AcquireDecision::Grant {
            token: next_token(row.map(|r| r.token), now_unix_micros)?,
        }),
    }
}

/// Decides a renewal by `holder` of term `token`: `Ok` means write heartbeat = now and the lease.
pub fn decide_renew(row: Option<&ObservedLock>, holder: &str, token: u64) -> Result<(), LossCause> {
    let Some(row) = row else {
        return Err(LossCause::Released);
    };
    let ours = row.token == token && row.holder.as_deref() == Some(holder);
    if ours && !row.is_free() {
        return Ok(());
    }
    if ours {
        return Err(LossCause::Expired);
    }
    if row.token == token && row.holder.is_none() {
        return Err(LossCause::Released);
    }
    Err(LossCause::Deposed {
        holder: row.live_holder().map(|h| h.id),
        token: row.token,
    })
}

/// Decides a release by `holder` of term `token`: `true` means clear the holder.
pub fn decide_release(row: Option<&ObservedLock>, holder: &str, token: u64) -> bool {
    row.is_some_and(|r| r.token == token && r.holder.as_deref() == Some(holder))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: Option<&str>, token: u64, lease_ms: u64, age_ms: u64) -> ObservedLock {
        ObservedLock {
            holder: holder.map(str::to_owned),
            holder_incarnation: holder.map(|h| format!("{h}-1")),
            token,
            lease: Duration::from_millis(lease_ms),
            age: Duration::from_millis(age_ms),
            granted_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_missing_row_is_granted_from_the_clock_floor() {
        assert_eq!(
            decide_acquire(None, 0),
            Ok(AcquireDecision::Grant { token: 1 })
        );
        assert_eq!(
            decide_acquire(None, 500),
            Ok(AcquireDecision::Grant { token: 500 })
        );
    }

    #[test]
    fn a_live_lease_is_held_even_at_age_zero() {
        // W4: a read in the same instant as the renewal commit must not see an expired lock.
        let r = row(Some("a"), 7, 1000, 0);
        assert!(
            matches!(decide_acquire(Some(&r), 0), Ok(AcquireDecision::Held(h)) if h.id == "a" && h.token == 7)
        );
    }

    #[test]
    fn the_lease_ends_exactly_at_its_length() {
        // One microsecond before the lease's end it is held; at its end it is free.
        let lease = Duration::from_secs(1);
        let mut r = row(Some("a"), 7, 1000, 0);
        r.age = lease - Duration::from_micros(1);
        assert!(!r.is_free());
        assert_eq!(
            r.live_holder().map(|h| h.remaining),
            Some(Duration::from_micros(1))
        );
        assert_eq!(decide_renew(Some(&r), "a", 7), Ok(()));
        r.age = lease;
        assert!(r.is_free());
        assert_eq!(decide_renew(Some(&r), "a", 7), Err(LossCause::Expired));
        assert_eq!(
            decide_acquire(Some(&r), 0),
            Ok(AcquireDecision::Grant { token: 8 })
        );
    }

    #[test]
    fn an_expired_or_released_lock_is_granted_with_a_greater_token() {
        let expired = row(Some("a"), 7, 1000, 1000);
        assert_eq!(
            decide_acquire(Some(&expired), 0),
            Ok(AcquireDecision::Grant { token: 8 })
        );
        let released = row(None, 7, 1000, 0);
        assert_eq!(
            decide_acquire(Some(&released), 0),
            Ok(AcquireDecision::Grant { token: 8 })
        );
        assert_eq!(
            decide_acquire(Some(&released), 100),
            Ok(AcquireDecision::Grant { token: 100 })
        );
    }

    #[test]
    fn only_the_exact_live_term_renews() {
        let r = row(Some("a"), 7, 1000, 10);
        assert_eq!(decide_renew(Some(&r), "a", 7), Ok(()));
        // W8: a deposed holder (old token) cannot extend the new holder's lease.
        assert!(matches!(
            decide_renew(Some(&r), "a", 6),
            Err(LossCause::Deposed { token: 7, .. })
        ));
        assert!(matches!(
            decide_renew(Some(&r), "b", 7),
            Err(LossCause::Deposed { .. })
        ));
        let expired = row(Some("a"), 7, 1000, 1500);
        assert_eq!(
            decide_renew(Some(&expired), "a", 7),
            Err(LossCause::Expired)
        );
        let released = row(None, 7, 1000, 0);
        assert_eq!(
            decide_renew(Some(&released), "a", 7),
            Err(LossCause::Released)
        );
        assert_eq!(decide_renew(None, "a", 7), Err(LossCause::Released));
    }

    #[test]
    fn only_the_exact_term_releases() {
        let r = row(Some("a"), 7, 1000, 10);
        assert!(decide_release(Some(&r), "a", 7));
        assert!(!decide_release(Some(&r), "a", 6));
        assert!(!decide_release(Some(&r), "b", 7));
        assert!(!decide_release(None, "a", 7));
    }

    #[test]
    fn tokens_never_go_back_and_never_repeat() {
        assert_eq!(next_token(Some(41), 10), Ok(42));
        assert_eq!(next_token(Some(41), 1_000_000), Ok(1_000_000));
        // The last token is never granted twice: the space is exhausted instead.
        assert_eq!(next_token(Some(MAX_TOKEN - 1), 0), Ok(MAX_TOKEN));
        assert_eq!(
            next_token(Some(MAX_TOKEN), 0),
            Err(TokensExhausted {
                previous: MAX_TOKEN
            })
        );
        assert_eq!(
            next_token(Some(u64::MAX), u64::MAX),
            Err(TokensExhausted { previous: u64::MAX })
        );
        // The clock floor never exceeds what INT64 can store.
        assert_eq!(next_token(None, u64::MAX), Ok(MAX_TOKEN));
        let expired = row(Some("a"), MAX_TOKEN, 1000, 5000);
        assert!(decide_acquire(Some(&expired), 0).is_err());
    }
}
