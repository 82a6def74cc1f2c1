//! Status conditions per the Kubernetes API conventions: one entry per type, `lastTransitionTime`
//! changed only when the status changes, `observedGeneration` on each. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The group is usable: schema and configuration are in place and nothing is degraded.
pub const READY: &str = "Ready";
/// The Spanner tables exist at the operator's schema version.
pub const SCHEMA_READY: &str = "SchemaReady";
/// The ConfigMap, Secret (and Deployment, NetworkPolicy when asked for) are in place.
pub const CONFIG_READY: &str = "ConfigReady";
/// A member has joined (a live member row); false when none has within the grace period after
/// the configuration was in place.
pub const MEMBERS_SEEN: &str = "MembersSeen";
/// Something is wrong that the operator cannot fix by itself (an invalid spec, an unreachable
/// Spanner, a failing API call).
pub const DEGRADED: &str = "Degraded";

/// The three values of a condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
    Unknown,
}

impl Status {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition before it gets its times and generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// The condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// A CamelCase reason.
    pub reason: String,
    /// A human-readable message.
    pub message: String,
}

impl Cond {
    /// A condition of `type_`.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The condition of `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

/// The new conditions: each keeps its old `lastTransitionTime` unless its status changed, so that
/// a reconcile that changes nothing produces exactly the conditions it found. Old conditions of
/// other types are dropped (the operator owns every condition of its resource).
pub fn merge(
    old: &[Condition],
    new: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let previous = find(old, c.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == c.status.as_str() => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.type_.to_owned(),
                status: c.status.as_str().to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn last_transition_time_changes_only_when_the_status_changes() {
        let first = merge(
            &[],
            &[Cond::new(READY, Status::False, "Pending", "wait")],
            Some(1),
            &at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));

        let same_status = merge(
            &first,
            &[Cond::new(READY, Status::False, "Other", "still")],
            Some(2),
            &at(20),
        );
        assert_eq!(
            same_status[0].last_transition_time,
            at(10),
            "reason changes keep the time"
        );
        assert_eq!(same_status[0].observed_generation, Some(2));

        let flipped = merge(
            &same_status,
            &[Cond::new(READY, Status::True, "Ready", "ok")],
            Some(2),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert!(is_true(&flipped, READY));
    }
}
