//! A `HedgeGroup` checked and resolved into everything the operator needs: the group's name in
//! Spanner, the database, the tables, the members' [`hedge::Config`], and the names of the objects
//! it owns. Pure: every later step works from a [`ValidGroup`], never from the raw spec.

use std::time::Duration;

use hedge::config::{ConfigError, DatabasePath, DatabasePathError};
use hedge::names::{TableNames, TableNamesError};
use hedge::{Config, ElectionTimings, MembershipTimings};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::{Resource, ResourceExt};

use sha2::{Digest, Sha256};

use crate::crd::{
    CONFIRM_DROP_TABLES_ANNOTATION, DeletionPolicy, DeploymentTarget, ElectionSpec, HedgeGroup,
    MembershipSpec, SKIP_CLEANUP_ANNOTATION,
};

/// The longest Kubernetes object name (a DNS subdomain).
const MAX_OBJECT_NAME: usize = 253;
/// The suffix of the generated ConfigMap's name.
pub const CONFIG_MAP_SUFFIX: &str = "-hedge-config";
/// The suffix of the generated Secret's name.
pub const SECRET_SUFFIX: &str = "-hedge-secret";
/// The suffix of the NetworkPolicy's name.
pub const NETWORK_POLICY_SUFFIX: &str = "-hedge-peers";

/// Why a spec cannot be reconciled; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum InvalidSpec {
    /// The object has no name, namespace or uid (never the case for objects from the API server).
    #[error("the HedgeGroup has no {0}")]
    MissingMetadata(&'static str),
    /// The database path is malformed.
    #[error("spec.database: {0}")]
    Database(#[from] DatabasePathError),
    /// A table name is invalid, or two are equal.
    #[error("spec.tables: {0}")]
    Tables(#[from] TableNamesError),
    /// A timing is out of range or out of order, or the group name is unusable.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A millisecond value that is not positive.
    #[error("spec.{field} must be at least 1 (got {value})")]
    NotPositive {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A port outside 1..=65535.
    #[error("spec.peerPort must be between 1 and 65535 (got {0})")]
    Port(i32),
    /// A generated object's name would be too long.
    #[error(
        "the HedgeGroup's name is too long: `{0}` exceeds {MAX_OBJECT_NAME} characters; use a shorter name"
    )]
    NameTooLong(String),
    /// The NetworkPolicy was asked for without any way to find the members.
    #[error("spec.networkPolicy.enabled needs the members: set spec.selector or spec.deployment")]
    NoMemberSelector,
    /// An empty name where one is required.
    #[error("spec.{0} must not be empty")]
    Empty(&'static str),
    /// An emulator host that is not `host:port`.
    #[error("spec.spanner.emulatorHost must be host:port (got {0:?})")]
    EmulatorHost(String),
}

/// Where the members' group secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// The operator generates this Secret once and never overwrites it.
    Generated(String),
    /// The user's Secret; the operator only reads it.
    Existing(String),
}

impl SecretSource {
    /// The Secret's name.
    pub fn name(&self) -> &str {
        match self {
            SecretSource::Generated(n) | SecretSource::Existing(n) => n,
        }
    }
}

/// A `HedgeGroup` whose spec passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidGroup {
    /// The HedgeGroup's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its generation, for `observedGeneration`.
    pub generation: Option<i64>,
    /// The owner reference every owned object carries (controller, block owner deletion).
    pub owner: OwnerReference,
    /// The group's name in Spanner.
    pub group: String,
    /// The Spanner database.
    pub database: DatabasePath,
    /// The tables.
    pub tables: TableNames,
    /// The members' configuration; its [`Config::to_env`] is the ConfigMap's data.
    pub config: Config,
    /// The members, for the NetworkPolicy (the spec's selector; the Deployment's when unset).
    pub selector: Option<LabelSelector>,
    /// The Deployment to configure.
    pub deployment: Option<DeploymentTarget>,
    /// The ConfigMap's name.
    pub config_map: String,
    /// The group secret.
    pub secret: SecretSource,
    /// The NetworkPolicy's name (also when none is wanted, to remove a stale one).
    pub network_policy: String,
    /// Whether the NetworkPolicy is wanted.
    pub network_policy_enabled: bool,
    /// The deletion policy.
    pub deletion_policy: DeletionPolicy,
    /// `hedge.dev/skip-cleanup: "true"`: delete without touching Spanner.
    pub skip_cleanup: bool,
    /// `hedge.dev/confirm-drop-tables: "true"`: `DropTables` may drop the tables.
    pub drop_tables_confirmed: bool,
    /// The field manager of this group's fields in its Deployment ([`field_manager`]).
    pub field_manager: String,
}

impl ValidGroup {
    /// Where the group's tables are, for the provisioner.
    pub fn target(&self) -> crate::provision::Target {
        crate::provision::Target {
            database: self.database.clone(),
            tables: self.tables.clone(),
            emulator_host: self.config.spanner_emulator_host.clone(),
        }
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.config.peer_port
    }
}

/// The group's name in Spanner: `<namespace>/<name>`, unique in a cluster, and never the same for
/// two HedgeGroups, so that one group's deletion policy never touches another's rows.
pub fn group_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The longest field manager name the API server accepts.
const MAX_FIELD_MANAGER: usize = 128;

/// The field manager of group `<namespace>/<name>` in its Deployment:
/// `hedge-operator/<namespace>.<name>`, or, when that is longer than the API server accepts, its
/// first characters and a hash of the whole. One per group, so that two groups never share (and
/// silently take over) each other's fields.
pub fn field_manager(namespace: &str, name: &str) -> String {
    let full = format!("{}/{namespace}.{name}", crate::crd::FIELD_MANAGER);
    if full.len() <= MAX_FIELD_MANAGER {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let keep = MAX_FIELD_MANAGER - hash.len() - 1;
    let mut prefix = full;
    while prefix.len() > keep {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

fn annotation_is_true(hg: &HedgeGroup, key: &str) -> bool {
    hg.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Checks every rule of the spec and resolves defaults.
pub fn validate(hg: &HedgeGroup) -> Result<ValidGroup, InvalidSpec> {
    let name = hg
        .metadata
        .name
        .clone()
        .ok_or(InvalidSpec::MissingMetadata("name"))?;
    let namespace = hg
        .namespace()
        .ok_or(InvalidSpec::MissingMetadata("namespace"))?;
    // Needs the name (checked above) and the uid.
    let owner = hg
        .controller_owner_ref(&())
        .ok_or(InvalidSpec::MissingMetadata("uid"))?;
    let spec = &hg.spec;

    let database: DatabasePath = spec.database.parse()?;
    let tables = TableNames {
        locks: spec.tables.locks.clone(),
        members: spec.tables.members.clone(),
        schema: spec.tables.schema.clone(),
        log_keys: spec.tables.log_keys.clone(),
        log: spec.tables.log.clone(),
        semaphores: spec.tables.semaphores.clone(),
        permits: spec.tables.permits.clone(),
    };
    tables.validate()?;

    let peer_port = u16::try_from(spec.peer_port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(InvalidSpec::Port(spec.peer_port))?;

    let group = group_name(&namespace, &name);
    let mut config = Config::new(group.clone());
    config.database = Some(database.clone());
    config.tables = tables.clone();
    config.election = election_timings(&spec.election)?;
    config.membership = membership_timings(&spec.membership)?;
    config.peer_port = peer_port;
    config.spanner_emulator_host = match &spec.spanner.emulator_host {
        Some(host) if host.trim().is_empty() => {
            return Err(InvalidSpec::Empty("spanner.emulatorHost"));
        }
        Some(host) if host.chars().any(char::is_whitespace) || !host.contains(':') => {
            return Err(InvalidSpec::EmulatorHost(host.clone()));
        }
        other => other.clone(),
    };
    // The member id is each pod's own (POD_NAME); the placeholder only satisfies validation.
    config.member_id = "operator".into();
    config.validate()?;

    let config_map = object_name(&name, CONFIG_MAP_SUFFIX)?;
    let network_policy = object_name(&name, NETWORK_POLICY_SUFFIX)?;
    let secret = match &spec.group_secret.existing_secret {
        Some(existing) if existing.is_empty() => {
            return Err(InvalidSpec::Empty("groupSecret.existingSecret"));
        }
        Some(existing) => SecretSource::Existing(existing.clone()),
        None => SecretSource::Generated(object_name(&name, SECRET_SUFFIX)?),
    };
    if let Some(d) = &spec.deployment {
        if d.name.is_empty() {
            return Err(InvalidSpec::Empty("deployment.name"));
        }
        if d.containers.iter().any(String::is_empty) {
            return Err(InvalidSpec::Empty("deployment.containers[]"));
        }
    }
    let network_policy_enabled = spec.network_policy.enabled;
    if network_policy_enabled && spec.selector.is_none() && spec.deployment.is_none() {
        return Err(InvalidSpec::NoMemberSelector);
    }

    Ok(ValidGroup {
        generation: hg.meta().generation,
        owner,
        group,
        database,
        tables,
        config,
        selector: spec.selector.clone(),
        deployment: spec.deployment.clone(),
        config_map,
        secret,
        network_policy,
        network_policy_enabled,
        deletion_policy: spec.deletion_policy,
        skip_cleanup: annotation_is_true(hg, SKIP_CLEANUP_ANNOTATION),
        drop_tables_confirmed: annotation_is_true(hg, CONFIRM_DROP_TABLES_ANNOTATION),
        field_manager: field_manager(&namespace, &name),
        name,
        namespace,
    })
}

fn object_name(name: &str, suffix: &str) -> Result<String, InvalidSpec> {
    let full = format!("{name}{suffix}");
    if full.len() > MAX_OBJECT_NAME {
        return Err(InvalidSpec::NameTooLong(full));
    }
    Ok(full)
}

fn millis(field: &'static str, value: Option<i64>) -> Result<Option<Duration>, InvalidSpec> {
    match value {
        None => Ok(None),
        Some(v) => u64::try_from(v)
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or(InvalidSpec::NotPositive { field, value: v }),
    }
}

/// The election timings of a spec: unset values derive from the lease the way the client's
/// defaults do, so setting only `leaseMs` always gives a valid set.
pub fn election_timings(spec: &ElectionSpec) -> Result<ElectionTimings, InvalidSpec> {
    let lease = millis("election.leaseMs", spec.lease_ms)?;
    let base = lease.map_or_else(ElectionTimings::default, ElectionTimings::from_lease);
    let timings = ElectionTimings {
        lease: base.lease,
        renew_interval: millis("election.renewIntervalMs", spec.renew_interval_ms)?
            .unwrap_or(base.renew_interval),
        poll_interval: millis("election.pollIntervalMs", spec.poll_interval_ms)?
            .unwrap_or(base.poll_interval),
        safety_margin: millis("election.safetyMarginMs", spec.safety_margin_ms)?
            .unwrap_or(base.safety_margin),
    };
    timings.validate()?;
    Ok(timings)
}

/// The membership timings of a spec, with the client's defaults for unset values.
pub fn membership_timings(spec: &MembershipSpec) -> Result<MembershipTimings, InvalidSpec> {
    let base = MembershipTimings::default();
    let timings = MembershipTimings {
        heartbeat_interval: millis("membership.heartbeatIntervalMs", spec.heartbeat_interval_ms)?
            .unwrap_or(base.heartbeat_interval),
        ttl: millis("membership.ttlMs", spec.ttl_ms)?.unwrap_or(base.ttl),
    };
    timings.validate()?;
    Ok(timings)
}
