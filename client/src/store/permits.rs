//! The semaphore's types and rules, as pure functions shared by every backend.
//!
//! A semaphore is a row with its limit and the last permit token granted; each permit held is a
//! row of its own, with a **lease** judged on the store's clock exactly like a lock's: a permit
//! counts while `age < lease` since its last renewal committed. Acquiring is one transaction
//! that reads the semaphore row and every permit row of the semaphore, counts the unexpired
//! ones against the limit, and, when there is room, writes the new permit, the new last token,
//! and deletes the expired rows it saw. A dead holder's permit therefore stops counting by
//! itself, `lease` after its last renewal: nothing depends on a leader pinging holders (the Go
//! original's flaw), and a holder's identity is its member id, incarnation and permit id, never
//! an address.
//!
//! A semaphore is never deleted by use: a drained semaphore keeps its row and stays usable.

use std::time::Duration;

use super::Candidate;
use super::lease::{self, TokensExhausted};

/// The largest limit: an acquire reads every permit row of the semaphore in one transaction.
pub const MAX_PERMIT_LIMIT: u32 = 1000;

/// The longest permit id, in bytes (the `STRING(64)` key column).
pub const MAX_PERMIT_ID_BYTES: usize = 64;

/// Input the semaphores refuse, before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PermitInputError {
    /// A limit of zero: nobody could ever acquire.
    #[error("a semaphore's limit must be at least 1")]
    ZeroLimit,
    /// A limit over [`MAX_PERMIT_LIMIT`].
    #[error("a semaphore's limit of {limit} is above the {max} hedge supports")]
    LimitTooLarge {
        /// The limit given.
        limit: u32,
        /// [`MAX_PERMIT_LIMIT`].
        max: u32,
    },
    /// A group or semaphore name hedge cannot store.
    #[error(transparent)]
    Name(#[from] crate::config::ConfigError),
    /// A permit id that is empty, too long, or has control characters.
    #[error("invalid permit id {0:?}: use 1 to 64 printable characters")]
    PermitId(String),
    /// A permit lease of zero or over [`crate::config::MAX_LEASE`].
    #[error("a permit lease of {0:?} is out of range (above zero, at most an hour)")]
    Lease(Duration),
}

/// Checks a limit.
pub fn validate_limit(limit: u32) -> Result<(), PermitInputError> {
    match limit {
        0 => Err(PermitInputError::ZeroLimit),
        l if l > MAX_PERMIT_LIMIT => Err(PermitInputError::LimitTooLarge {
            limit: l,
            max: MAX_PERMIT_LIMIT,
        }),
        _ => Ok(()),
    }
}

/// Checks a semaphore key (group and name as stored in `STRING(253)` columns).
pub fn validate_key(key: &SemaphoreKey) -> Result<(), PermitInputError> {
    crate::config::validate_name("group name", &key.group)?;
    crate::config::validate_name("semaphore name", &key.name)?;
    Ok(())
}

/// Checks a permit id.
pub fn validate_permit_id(id: &str) -> Result<(), PermitInputError> {
    if id.is_empty() || id.len() > MAX_PERMIT_ID_BYTES || id.chars().any(char::is_control) {
        return Err(PermitInputError::PermitId(id.to_owned()));
    }
    Ok(())
}

impl PermitRequest {
    /// Checks the permit id, the holder's names and the lease.
    pub fn validate(&self) -> Result<(), PermitInputError> {
        validate_permit_id(&self.permit_id)?;
        crate::config::validate_name("member id", &self.holder.id)?;
        crate::config::validate_name("incarnation", &self.holder.incarnation)?;
        validate_lease(self.lease)
    }
}

/// Checks a permit lease.
pub fn validate_lease(lease: Duration) -> Result<(), PermitInputError> {
    if lease.is_zero() || lease > crate::config::MAX_LEASE {
        return Err(PermitInputError::Lease(lease));
    }
    Ok(())
}

/// Identifies one semaphore: its group and its name within the group (keyed by the pair, never
/// by a concatenation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SemaphoreKey {
    /// The hedge group.
    pub group: String,
    /// The semaphore's name within the group.
    pub name: String,
}

impl SemaphoreKey {
    /// A key for semaphore `name` of `group`.
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for SemaphoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.name)
    }
}

/// A request for one permit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermitRequest {
    /// The permit's id, chosen by the caller (a fresh UUID per acquire, kept across its
    /// retries): an acquire whose reply was lost is recognised by it and answered with the
    /// same permit.
    pub permit_id: String,
    /// The holder: member id and incarnation.
    pub holder: Candidate,
    /// The permit's lease, counted from the commit.
    pub lease: Duration,
}

/// A permit row as an atomic step observed it, with its age on the store's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPermit {
    /// The permit's id.
    pub permit_id: String,
    /// The holder's member id.
    pub holder: String,
    /// The holder's incarnation.
    pub holder_incarnation: String,
    /// The permit's fencing token.
    pub token: u64,
    /// The lease asked for at the last grant or renewal.
    pub lease: Duration,
    /// Time since the last grant or renewal committed (a negative age reads as zero: alive).
    pub age: Duration,
}

impl ObservedPermit {
    /// Whether the permit's lease has run out.
    pub fn is_expired(&self) -> bool {
        self.age >= self.lease
    }

    fn holder(&self) -> PermitHolder {
        PermitHolder {
            permit_id: self.permit_id.clone(),
            holder: self.holder.clone(),
            holder_incarnation: self.holder_incarnation.clone(),
            token: self.token,
            remaining: self.lease.saturating_sub(self.age),
        }
    }
}

/// A live permit, as seen by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermitHolder {
    /// The permit's id.
    pub permit_id: String,
    /// The holder's member id.
    pub holder: String,
    /// The holder's incarnation.
    pub holder_incarnation: String,
    /// The permit's fencing token.
    pub token: u64,
    /// How much of its lease was left when the store looked.
    pub remaining: Duration,
}

/// A semaphore row as an atomic step observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedSemaphore {
    /// The limit.
    pub limit: u32,
    /// The last permit token granted (0: none yet).
    pub last_token: u64,
}

/// A semaphore as a strong read sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreState {
    /// The limit.
    pub limit: u32,
    /// The last permit token granted.
    pub last_token: u64,
    /// The permits whose lease runs, ordered by token.
    pub holders: Vec<PermitHolder>,
}

/// The answer to a definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefineOutcome {
    /// The semaphore did not exist and was created with the limit.
    Created,
    /// The semaphore exists with the same limit.
    Exists,
    /// The semaphore exists with another limit; nothing changed.
    LimitMismatch {
        /// The limit it has.
        existing: u32,
    },
}

/// The answer to an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermitOutcome {
    /// The permit is held, under this token (also when the request's permit id was already
    /// held: a retried acquire).
    Granted {
        /// The permit's fencing token.
        token: u64,
    },
    /// Every permit is taken.
    Full {
        /// The live permits.
        holders: Vec<PermitHolder>,
        /// How long until the first of them expires unless renewed.
        next_expiry: Option<Duration>,
    },
    /// No semaphore of that name exists in the group.
    UnknownSemaphore,
}

/// The answer to a permit renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermitRenewal {
    /// The lease was extended.
    Renewed,
    /// The permit's lease ran out before the renewal arrived: it no longer counts.
    Expired,
    /// The permit is gone (released, reclaimed after expiry, or its semaphore deleted).
    Gone,
}

/// What a definition must write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefineDecision {
    /// Create the semaphore row with the limit and last token 0.
    Create,
    /// Write nothing; report this outcome.
    Report(DefineOutcome),
}

/// Decides a definition from the semaphore row's limit (`None`: no row).
pub fn decide_define(existing: Option<u32>, limit: u32) -> DefineDecision {
    match existing {
        None => DefineDecision::Create,
        Some(l) if l == limit => DefineDecision::Report(DefineOutcome::Exists),
        Some(existing) => DefineDecision::Report(DefineOutcome::LimitMismatch { existing }),
    }
}

/// What an acquire must write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermitDecision {
    /// Write nothing; report the outcome (full, unknown, or the request's live permit again).
    Report(PermitOutcome),
    /// Write the request's permit with this token (heartbeat and acquired_at = now), set the
    /// semaphore's last token to it, and delete these expired permits.
    Grant {
        /// The new permit's token.
        token: u64,
        /// Expired permits to delete (never the request's own id).
        reclaim: Vec<String>,
    },
}

/// Decides an acquire from the semaphore row (`None`: no such semaphore) and every permit row
/// of the semaphore.
pub fn decide_acquire(
    semaphore: Option<ObservedSemaphore>,
    permits: &[ObservedPermit],
    permit_id: &str,
    now_unix_micros: u64,
) -> Result<PermitDecision, TokensExhausted> {
    let Some(semaphore) = semaphore else {
        return Ok(PermitDecision::Report(PermitOutcome::UnknownSemaphore));
    };
    if let Some(own) = permits
        .iter()
        .find(|p| p.permit_id == permit_id && !p.is_expired())
    {
        return Ok(PermitDecision::Report(PermitOutcome::Granted {
            token: own.token,
        }));
    }
    let live: Vec<&ObservedPermit> = permits.iter().filter(|p| !p.is_expired()).collect();
    if live.len() >= usize::try_from(semaphore.limit).unwrap_or(usize::MAX) {
        let mut holders: Vec<PermitHolder> = live.iter().map(|p| p.holder()).collect();
        holders.sort_by_key(|h| h.token);
        let next_expiry = holders.iter().map(|h| h.remaining).min();
        return Ok(PermitDecision::Report(PermitOutcome::Full {
            holders,
            next_expiry,
        }));
    }
    let token = lease::next_token(Some(semaphore.last_token), now_unix_micros)?;
    let reclaim = permits
        .iter()
        .filter(|p| p.is_expired() && p.permit_id != permit_id)
        .map(|p| p.permit_id.clone())
        .collect();
    Ok(PermitDecision::Grant { token, reclaim })
}

/// Decides a renewal of permit `token` from its row (`None`: no row).
pub fn decide_renew(row: Option<&ObservedPermit>, token: u64) -> PermitRenewal {
    match row {
        Some(p) if p.token == token && !p.is_expired() => PermitRenewal::Renewed,
        Some(p) if p.token == token => PermitRenewal::Expired,
        _ => PermitRenewal::Gone,
    }
}

/// The live permits of a semaphore, ordered by token.
pub fn live_holders(permits: &[ObservedPermit]) -> Vec<PermitHolder> {
    let mut holders: Vec<PermitHolder> = permits
        .iter()
        .filter(|p| !p.is_expired())
        .map(ObservedPermit::holder)
        .collect();
    holders.sort_by_key(|h| h.token);
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(id: &str, token: u64, age_ms: u64) -> ObservedPermit {
        ObservedPermit {
            permit_id: id.into(),
            holder: format!("holder-{id}"),
            holder_incarnation: "1".into(),
            token,
            lease: Duration::from_millis(1000),
            age: Duration::from_millis(age_ms),
        }
    }

    const SEM: ObservedSemaphore = ObservedSemaphore {
        limit: 2,
        last_token: 10,
    };

    #[test]
    fn the_limit_counts_only_unexpired_permits() {
        let permits = [permit("a", 9, 100), permit("b", 10, 999)];
        let full = decide_acquire(Some(SEM), &permits, "c", 0).unwrap();
        assert!(matches!(
            full,
            PermitDecision::Report(PermitOutcome::Full { ref holders, next_expiry: Some(n) })
                if holders.len() == 2 && n == Duration::from_millis(1)
        ));
        // b's lease runs out: its slot is free, and its row is reclaimed by the grant.
        let permits = [permit("a", 9, 100), permit("b", 10, 1000)];
        assert_eq!(
            decide_acquire(Some(SEM), &permits, "c", 0).unwrap(),
            PermitDecision::Grant {
                token: 11,
                reclaim: vec!["b".into()]
            }
        );
    }

    #[test]
    fn a_retried_acquire_gets_its_own_permit_back() {
        let permits = [permit("a", 9, 100), permit("c", 10, 5)];
        assert_eq!(
            decide_acquire(Some(SEM), &permits, "c", 0).unwrap(),
            PermitDecision::Report(PermitOutcome::Granted { token: 10 })
        );
        // Its own expired permit does not count and is written anew, not reclaimed.
        let permits = [permit("a", 9, 100), permit("c", 10, 1000)];
        assert_eq!(
            decide_acquire(Some(SEM), &permits, "c", 0).unwrap(),
            PermitDecision::Grant {
                token: 11,
                reclaim: vec![]
            }
        );
    }

    #[test]
    fn tokens_increase_from_the_clock_floor_and_unknown_semaphores_are_reported() {
        assert_eq!(
            decide_acquire(Some(SEM), &[], "x", 5_000).unwrap(),
            PermitDecision::Grant {
                token: 5_000,
                reclaim: vec![]
            }
        );
        assert_eq!(
            decide_acquire(None, &[], "x", 0).unwrap(),
            PermitDecision::Report(PermitOutcome::UnknownSemaphore)
        );
        let exhausted = ObservedSemaphore {
            limit: 1,
            last_token: lease::MAX_TOKEN,
        };
        assert!(decide_acquire(Some(exhausted), &[], "x", 0).is_err());
    }

    #[test]
    fn definitions_never_change_a_limit() {
        assert_eq!(decide_define(None, 3), DefineDecision::Create);
        assert_eq!(
            decide_define(Some(3), 3),
            DefineDecision::Report(DefineOutcome::Exists)
        );
        assert_eq!(
            decide_define(Some(2), 3),
            DefineDecision::Report(DefineOutcome::LimitMismatch { existing: 2 })
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(validate_limit(0), Err(PermitInputError::ZeroLimit));
        assert!(validate_limit(MAX_PERMIT_LIMIT + 1).is_err());
        validate_limit(MAX_PERMIT_LIMIT).unwrap();
        assert!(validate_key(&SemaphoreKey::new("g", "")).is_err());
        assert!(validate_key(&SemaphoreKey::new("g", "a b")).is_err());
        assert!(validate_permit_id(&"p".repeat(65)).is_err());
        assert!(validate_lease(Duration::ZERO).is_err());
    }

    #[test]
    fn only_a_live_permit_with_its_token_renews() {
        assert_eq!(
            decide_renew(Some(&permit("a", 9, 10)), 9),
            PermitRenewal::Renewed
        );
        assert_eq!(
            decide_renew(Some(&permit("a", 9, 1000)), 9),
            PermitRenewal::Expired
        );
        assert_eq!(
            decide_renew(Some(&permit("a", 9, 10)), 8),
            PermitRenewal::Gone
        );
        assert_eq!(decide_renew(None, 9), PermitRenewal::Gone);
    }
}
