//! The `HedgeGroup` custom resource (`hedge.dev/v1alpha1`, short name `hg`), generated from these
//! types: the `///` comments become the CRD's field descriptions, and the `x_kube` rules its CEL
//! validations (`x-kubernetes-validations`), checked by the API server before the operator sees a
//! spec. The operator checks every rule again in Rust ([`crate::spec`]): the CEL rules give early
//! feedback at `kubectl apply`, the Rust checks are the authority.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the custom resource.
pub const API_GROUP: &str = "hedge.dev";
/// The finalizer that applies the deletion policy before a `HedgeGroup` goes away.
pub const FINALIZER: &str = "hedge.dev/cleanup";
/// The field manager of the objects the operator owns (ConfigMap, NetworkPolicy) and of the
/// status. A referenced Deployment is written with a field manager of its own per group
/// ([`crate::spec::ValidGroup::field_manager`]).
pub const FIELD_MANAGER: &str = "hedge-operator";
/// Annotation on a HedgeGroup: `"true"` deletes it without touching Spanner (as `Retain`), for a
/// database that is gone or unreachable for good. The Deployment is still released.
pub const SKIP_CLEANUP_ANNOTATION: &str = "hedge.dev/skip-cleanup";
/// Annotation on a HedgeGroup: `"true"` confirms `deletionPolicy: DropTables`. Without it the
/// tables are kept and only the group's rows are deleted.
pub const CONFIRM_DROP_TABLES_ANNOTATION: &str = "hedge.dev/confirm-drop-tables";
/// Annotation on a Deployment: the group (`<namespace>/<name>`) whose configuration its pod
/// template carries. One Deployment serves one group; another group that names it is refused.
pub const CLAIM_ANNOTATION: &str = "hedge.dev/group";
/// The command that regenerates the committed CRD YAML.
pub const REGENERATE_COMMAND: &str = "cargo run -p hedge-operator -- crd > crds/hedgegroup.yaml";

/// A hedge group: the pods of a Deployment that elect a leader, keep a membership and talk to each
/// other through hedge, with Cloud Spanner as their shared state. The operator provisions the
/// Spanner tables, writes the members' configuration (a ConfigMap and a Secret), optionally wires
/// them into a Deployment, and reports the leader and the members here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hedge.dev",
    version = "v1alpha1",
    kind = "HedgeGroup",
    namespaced,
    status = "HedgeGroupStatus",
    shortname = "hg",
    category = "hedge",
    derive = "PartialEq",
    derive = "Default",
    doc = "A hedge group: leader election with fencing tokens and membership on Cloud Spanner for the pods of a Deployment.",
    printcolumn = r#"{"name": "Leader", "type": "string", "jsonPath": ".status.leader"}"#,
    printcolumn = r#"{"name": "Token", "type": "integer", "jsonPath": ".status.token"}"#,
    printcolumn = r#"{"name": "Members", "type": "integer", "jsonPath": ".status.members"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.networkPolicy) || !has(self.networkPolicy.enabled) || !self.networkPolicy.enabled \
     || has(self.selector) || has(self.deployment)"
).message("networkPolicy.enabled needs the members: set selector or deployment"))]
pub struct HedgeGroupSpec {
    /// The Spanner database, `projects/<project>/instances/<instance>/databases/<database>`.
    /// Immutable: members in two databases would elect two leaders.
    #[schemars(
        length(max = 220),
        regex(
            pattern = r"^projects/[A-Za-z0-9._:-]{1,64}/instances/[A-Za-z0-9._:-]{1,64}/databases/[A-Za-z0-9._:-]{1,64}$"
        )
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "database is immutable (members in two databases would elect two leaders): create a new HedgeGroup"
    ))]
    pub database: String,

    /// The table names. Several groups may share one set of tables: rows are keyed by group.
    /// Immutable for the same reason as the database.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "tables are immutable (members on two lock tables would elect two leaders): create a new HedgeGroup"
    ))]
    pub tables: TablesSpec,

    /// Election timings; unset values are derived from the lease the way the hedge client's
    /// defaults are.
    #[serde(default)]
    pub election: ElectionSpec,

    /// Membership timings.
    #[serde(default)]
    pub membership: MembershipSpec,

    /// The port of the member-to-member transport.
    #[serde(default = "default_peer_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub peer_port: i32,

    /// The member pods, for the NetworkPolicy. Defaults to the selector of the referenced
    /// Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// A Deployment in the same namespace whose pod template the operator configures: one `env`
    /// item per `HEDGE_*` variable (`valueFrom` the group's ConfigMap and Secret), the
    /// downward-API variables POD_NAME, POD_UID and POD_IP, and the peer port. Each is a field of
    /// its own, so the Deployment's owner (kubectl, Helm, Argo CD, Flux) can keep applying its
    /// manifest. One Deployment serves one group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentTarget>,

    /// The secret that authenticates peer traffic.
    #[serde(default)]
    pub group_secret: GroupSecretSpec,

    /// A NetworkPolicy that admits the peer port only from the members.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// What happens to the group's Spanner data when the HedgeGroup is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How the operator and the members reach Spanner.
    #[serde(default)]
    pub spanner: SpannerSpec,
}

/// The spec's defaults are the ones the API server fills in (serde's), not Rust's zeros.
impl Default for HedgeGroupSpec {
    fn default() -> Self {
        Self {
            database: String::new(),
            tables: TablesSpec::default(),
            election: ElectionSpec::default(),
            membership: MembershipSpec::default(),
            peer_port: default_peer_port(),
            selector: None,
            deployment: None,
            group_secret: GroupSecretSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            deletion_policy: DeletionPolicy::default(),
            spanner: SpannerSpec::default(),
        }
    }
}

fn default_peer_port() -> i32 {
    i32::from(hedge::config::DEFAULT_PEER_PORT)
}

/// The names of hedge's tables.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
// Spanner table names are case-insensitive: every name must differ from the others in lower case.
#[x_kube(validation = Rule::new(
    "[self.locks, self.members, self.schema, self.logKeys, self.log, self.semaphores, self.permits]\
     .all(t, [self.locks, self.members, self.schema, self.logKeys, self.log, self.semaphores, \
     self.permits].filter(u, u.lowerAscii() == t.lowerAscii()).size() == 1)"
).message("the tables must have different names (compared case-insensitively)"))]
pub struct TablesSpec {
    /// One row per lock: holder, fencing token, lease.
    #[serde(default = "default_locks_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub locks: String,
    /// One row per member: address and heartbeat.
    #[serde(default = "default_members_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub members: String,
    /// The schema version of this table set.
    #[serde(default = "default_schema_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub schema: String,
    /// One row per key of the log: its last sequence number.
    #[serde(default = "default_log_keys_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub log_keys: String,
    /// One row per version of a log key (interleaved in `logKeys`).
    #[serde(default = "default_log_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub log: String,
    /// One row per semaphore: its limit and last permit token.
    #[serde(default = "default_semaphores_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub semaphores: String,
    /// One row per permit held (interleaved in `semaphores`).
    #[serde(default = "default_permits_table")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"))]
    pub permits: String,
}

fn default_locks_table() -> String {
    hedge::store::TableNames::default().locks
}
fn default_members_table() -> String {
    hedge::store::TableNames::default().members
}
fn default_schema_table() -> String {
    hedge::store::TableNames::default().schema
}
fn default_log_keys_table() -> String {
    hedge::store::TableNames::default().log_keys
}
fn default_log_table() -> String {
    hedge::store::TableNames::default().log
}
fn default_semaphores_table() -> String {
    hedge::store::TableNames::default().semaphores
}
fn default_permits_table() -> String {
    hedge::store::TableNames::default().permits
}

impl Default for TablesSpec {
    fn default() -> Self {
        let t = hedge::store::TableNames::default();
        Self {
            locks: t.locks,
            members: t.members,
            schema: t.schema,
            log_keys: t.log_keys,
            log: t.log,
            semaphores: t.semaphores,
            permits: t.permits,
        }
    }
}

/// Election timings in milliseconds. Rules: every value above zero, the safety margin and the
/// renew interval below the lease, and the renew interval below lease minus safety margin.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.renewIntervalMs) || !has(self.leaseMs) || self.renewIntervalMs < self.leaseMs"
).message("renewIntervalMs must be below leaseMs"))]
#[x_kube(validation = Rule::new(
    "!has(self.safetyMarginMs) || !has(self.leaseMs) || self.safetyMarginMs < self.leaseMs"
).message("safetyMarginMs must be below leaseMs"))]
#[x_kube(validation = Rule::new(
    "!has(self.renewIntervalMs) || !has(self.safetyMarginMs) || !has(self.leaseMs) \
     || self.renewIntervalMs < self.leaseMs - self.safetyMarginMs"
).message("renewIntervalMs must be below leaseMs minus safetyMarginMs"))]
pub struct ElectionSpec {
    /// How long a grant or renewal holds the leader lock (default 5000). A crashed leader is
    /// replaced within lease + poll interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lease_ms: Option<i64>,
    /// How often the leader renews (default: derived from the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub renew_interval_ms: Option<i64>,
    /// How often a candidate tries to acquire (default: derived from the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub poll_interval_ms: Option<i64>,
    /// How long before the lease runs out the leader steps down when renewals fail (default:
    /// derived from the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub safety_margin_ms: Option<i64>,
}

/// Membership timings in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.heartbeatIntervalMs) || !has(self.ttlMs) || self.heartbeatIntervalMs < self.ttlMs"
).message("heartbeatIntervalMs must be below ttlMs"))]
pub struct MembershipSpec {
    /// How often a member refreshes its row (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval_ms: Option<i64>,
    /// How long a member row lives without a refresh (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_ms: Option<i64>,
}

/// The Deployment whose pod template the operator configures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentTarget {
    /// The Deployment's name, in the HedgeGroup's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The containers that link hedge; only the pod template's first container when empty
    /// (never the sidecars).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

/// Where the group secret comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupSecretSpec {
    /// An existing Secret in the same namespace with the key `HEDGE_GROUP_SECRET`. When unset, the
    /// operator generates a Secret named `<name>-hedge-secret` once and never overwrites it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_secret: Option<String>,
}

/// The optional NetworkPolicy for the peer port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create a NetworkPolicy `<name>-hedge-peers` that admits the peer port from the member
    /// pods. It admits nothing else: a policy that selects pods isolates them for ingress on
    /// every port, so the workload's other ports then need a NetworkPolicy of their own.
    #[serde(default)]
    pub enabled: bool,
}

/// How the operator and the members reach Spanner.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpannerSpec {
    /// The Cloud Spanner emulator (`host:port` of its gRPC endpoint), for development and tests.
    /// The operator reaches this group's database there, and writes it into the ConfigMap
    /// (`HEDGE_SPANNER_EMULATOR_HOST`), so the operator and the members always use the same
    /// endpoint. No Google credentials are sent to an emulator. Unset: Cloud Spanner itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 261),
        regex(
            pattern = r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"
        )
    )]
    pub emulator_host: Option<String>,
}

/// What happens to the group's Spanner data when the HedgeGroup is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the tables and the group's rows (the default).
    #[default]
    Retain,
    /// Delete the group's rows (locks, members, log versions, semaphores and permits); keep the tables.
    DeleteRows,
    /// Delete the group's rows, then drop the tables unless another group may still use them:
    /// another HedgeGroup on the same database and tables, rows of another group in them, or
    /// rows the operator cannot list. Needs the annotation `hedge.dev/confirm-drop-tables: "true"`
    /// (without it the tables are kept). Kept tables are named in the `CleanedUp` event.
    DropTables,
}

/// The observed state of a hedge group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HedgeGroupStatus {
    /// `Ready`, `SchemaReady`, `ConfigReady`, `MembersSeen` and `Degraded`, per the Kubernetes
    /// API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The group's name in Spanner: `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The member id of the current leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The fencing token of the current leader's term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<i64>,
    /// When the current leader's term began, on Spanner's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<Time>,
    /// The number of live members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i64>,
    /// The schema version of the group's tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// The Deployment whose pod template carries this group's configuration, so that a changed
    /// `spec.deployment` releases the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// The CRD as YAML, exactly what `hedge-operator crd` prints and `crds/hedgegroup.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(&HedgeGroup::crd())?;
    Ok(format!(
        "# Generated from operator/src/crd.rs by `hedge-operator crd`; do not edit.\n\
         # Regenerate: {REGENERATE_COMMAND}\n{yaml}"
    ))
}
