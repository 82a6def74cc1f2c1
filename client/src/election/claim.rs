//! One election loop per lock and member incarnation in a process.
//!
//! Two loops for the same lock and the same incarnation would share one identity in the store:
//! each would see the other's grant as its own, and one's step-down would end the other's term.
//! The first loop claims the pair; a second is refused until the first ends.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::ElectionError;
use crate::store::{Candidate, LockKey};

static RUNNING: LazyLock<Mutex<HashSet<(LockKey, String)>>> = LazyLock::new(Mutex::default);

fn running() -> MutexGuard<'static, HashSet<(LockKey, String)>> {
    // The set is consistent after every insert or remove: a poisoned lock is still usable.
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running loop's claim on its lock and incarnation; released on drop.
#[derive(Debug)]
pub(super) struct Claim {
    entry: (LockKey, String),
}

impl Claim {
    /// Claims `key` for `candidate`'s incarnation, or says another loop holds the claim.
    pub(super) fn take(key: &LockKey, candidate: &Candidate) -> Result<Self, ElectionError> {
        let entry = (key.clone(), candidate.incarnation.clone());
        if !running().insert(entry.clone()) {
            return Err(ElectionError::AlreadyRunning {
                key: key.clone(),
                member: candidate.id.clone(),
            });
        }
        Ok(Self { entry })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        running().remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_ends() {
        let key = LockKey::new("claims", "leader");
        let candidate = Candidate::new("a");
        let first = Claim::take(&key, &candidate).expect("first");
        assert!(matches!(
            Claim::take(&key, &candidate),
            Err(ElectionError::AlreadyRunning { .. })
        ));
        // Another incarnation (another process start) or another lock is independent.
        let _other = Claim::take(&key, &Candidate::new("a")).expect("other incarnation");
        let _lock = Claim::take(&LockKey::new("claims", "jobs"), &candidate).expect("other lock");
        drop(first);
        Claim::take(&key, &candidate).expect("free again");
    }
}
