//! The status a reconcile writes, and the events its transitions publish. Pure: the status is
//! computed from the old status and what the reconcile found, and is written only when it differs
//! from the old one, so an unchanged group is never patched.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};

use crate::conditions::{
    self, CONFIG_READY, Cond, DEGRADED, MEMBERS_SEEN, READY, SCHEMA_READY, Status,
};
use crate::crd::HedgeGroupStatus;
use crate::provision::GroupState;

/// What a reconcile found, condition by condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The generation reconciled.
    pub generation: Option<i64>,
    /// The group's name in Spanner, when the spec is valid.
    pub group: Option<String>,
    /// `SchemaReady`.
    pub schema: Cond,
    /// `ConfigReady`.
    pub config: Cond,
    /// `MembersSeen`.
    pub members: Cond,
    /// `Degraded`, when something is wrong; `None` means not degraded.
    pub degraded: Option<Cond>,
    /// The schema version, `None` when it was not learned (the old value is kept).
    pub schema_version: Option<i64>,
    /// The leader and members, `None` when they were not read (the old values are kept).
    pub group_state: Option<GroupState>,
    /// The Deployment that carries the group's configuration (`Some(None)`: none); `None` when
    /// it was not learned (the old value is kept).
    pub deployment: Option<Option<String>>,
}

impl Report {
    /// The report of a reconcile that stopped at a spec it will not act on (`reason`:
    /// `InvalidSpec`, `DatabaseNotAllowed`): the configuration is not applied, the schema and
    /// members conditions are carried over, and the group is degraded.
    pub fn invalid(
        old: Option<&HedgeGroupStatus>,
        generation: Option<i64>,
        reason: &str,
        message: &str,
    ) -> Self {
        let schema = carried(old, SCHEMA_READY)
            .unwrap_or_else(|| Cond::new(SCHEMA_READY, Status::Unknown, reason, message));
        let members = carried(old, MEMBERS_SEEN)
            .unwrap_or_else(|| Cond::new(MEMBERS_SEEN, Status::Unknown, reason, message));
        Self {
            generation,
            group: old.and_then(|s| s.group.clone()),
            schema,
            config: Cond::new(CONFIG_READY, Status::False, reason, message),
            members,
            degraded: Some(Cond::new(DEGRADED, Status::True, reason, message)),
            schema_version: None,
            group_state: None,
            deployment: None,
        }
    }

    /// This report after a failed step: degraded with `reason`, the rest as it was.
    #[must_use]
    pub fn failed(mut self, reason: &str, message: &str) -> Self {
        self.degraded = Some(Cond::new(DEGRADED, Status::True, reason, message));
        self
    }
}

/// The old status's condition of `type_`, as a [`Cond`].
pub fn carried(old: Option<&HedgeGroupStatus>, type_: &'static str) -> Option<Cond> {
    let c = conditions::find(&old?.conditions, type_)?;
    let status = match c.status.as_str() {
        "True" => Status::True,
        "False" => Status::False,
        _ => Status::Unknown,
    };
    Some(Cond::new(
        type_,
        status,
        c.reason.clone(),
        c.message.clone(),
    ))
}

/// The `Ready` condition that follows from the others.
fn ready(r: &Report) -> Cond {
    if let Some(d) = &r.degraded {
        return Cond::new(READY, Status::False, d.reason.clone(), d.message.clone());
    }
    for c in [&r.schema, &r.config] {
        if c.status != Status::True {
            return Cond::new(READY, Status::False, c.reason.clone(), c.message.clone());
        }
    }
    // Configured but no member ever joined: not a group that works.
    if r.members.status == Status::False {
        return Cond::new(
            READY,
            Status::False,
            r.members.reason.clone(),
            r.members.message.clone(),
        );
    }
    Cond::new(
        READY,
        Status::True,
        "Ready",
        "the schema and the members' configuration are in place",
    )
}

/// A timestamp as the API server stores it: whole seconds. Comparing anything finer with what was
/// read back would see a change on every reconcile.
pub fn api_time(t: SystemTime) -> Option<Time> {
    let ts = Timestamp::try_from(t).ok()?;
    Timestamp::from_second(ts.as_second()).ok().map(Time)
}

/// The status to write.
pub fn desired(old: Option<&HedgeGroupStatus>, r: &Report, now: &Time) -> HedgeGroupStatus {
    let degraded = r
        .degraded
        .clone()
        .unwrap_or_else(|| Cond::new(DEGRADED, Status::False, "AsExpected", "nothing is wrong"));
    let new = [
        ready(r),
        r.schema.clone(),
        r.config.clone(),
        r.members.clone(),
        degraded,
    ];
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut status = HedgeGroupStatus {
        conditions: conditions::merge(old_conditions, &new, r.generation, now),
        observed_generation: r.generation,
        group: r
            .group
            .clone()
            .or_else(|| old.and_then(|s| s.group.clone())),
        schema_version: r
            .schema_version
            .or_else(|| old.and_then(|s| s.schema_version)),
        deployment: match &r.deployment {
            Some(d) => d.clone(),
            None => old.and_then(|s| s.deployment.clone()),
        },
        ..HedgeGroupStatus::default()
    };
    match &r.group_state {
        Some(state) => {
            status.members = i64::try_from(state.members).ok();
            if let Some(leader) = &state.leader {
                status.leader = Some(leader.id.clone());
                status.token = Some(i64::try_from(leader.token).unwrap_or(i64::MAX));
                status.leader_since = api_time(leader.since);
            }
        }
        None => {
            if let Some(old) = old {
                status.members = old.members;
                status.leader = old.leader.clone();
                status.token = old.token;
                status.leader_since = old.leader_since.clone();
            }
        }
    }
    status
}

/// The events of the transitions from `old` to `new`: readiness gained or lost, degradation
/// begun (or its reason changed), the schema created or upgraded, a new leader. A status that
/// did not change publishes nothing.
pub fn transitions(old: Option<&HedgeGroupStatus>, new: &HedgeGroupStatus) -> Vec<Event> {
    let mut events = Vec::new();
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let event = |type_, reason: &str, action: &str, note: String| Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };

    let was_degraded = conditions::find(old_conditions, DEGRADED).filter(|c| c.status == "True");
    if let Some(now) = conditions::find(&new.conditions, DEGRADED).filter(|c| c.status == "True")
        && was_degraded.is_none_or(|w| w.reason != now.reason)
    {
        events.push(event(
            EventType::Warning,
            &now.reason,
            "Reconcile",
            now.message.clone(),
        ));
    }

    if let Some(v) = new.schema_version {
        match old.and_then(|s| s.schema_version) {
            None => events.push(event(
                EventType::Normal,
                "SchemaProvisioned",
                "Provision",
                format!("the tables are at schema version {v}"),
            )),
            Some(before) if before < v => events.push(event(
                EventType::Normal,
                "SchemaUpgraded",
                "Provision",
                format!("the tables were upgraded from schema version {before} to {v}"),
            )),
            _ => {}
        }
    }

    let was_ready = conditions::is_true(old_conditions, READY);
    let is_ready = conditions::is_true(&new.conditions, READY);
    if is_ready && !was_ready {
        events.push(event(
            EventType::Normal,
            "Ready",
            "Reconcile",
            "the schema and the members' configuration are in place".into(),
        ));
    } else if was_ready
        && !is_ready
        && let Some(c) = conditions::find(&new.conditions, READY)
    {
        events.push(event(
            EventType::Warning,
            "NotReady",
            "Reconcile",
            format!("{}: {}", c.reason, c.message),
        ));
    }

    let old_term = old.map(|s| (s.leader.clone(), s.token));
    if let (Some(leader), Some(token)) = (&new.leader, new.token)
        && old_term != Some((Some(leader.clone()), Some(token)))
    {
        events.push(event(
            EventType::Normal,
            "LeaderElected",
            "Elect",
            format!("member {leader} leads with fencing token {token}"),
        ));
    }
    events
}
