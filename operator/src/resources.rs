//! The objects the operator writes, built from a [`ValidGroup`] (and, for the Deployment, what the
//! Deployment holds now). Pure: no I/O, so the plan tests see exactly what would be applied.

use std::collections::BTreeMap;

use hedge::config::{ENV_GROUP_SECRET, ENV_POD_IP, ENV_POD_NAME, ENV_POD_UID};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvFromSource, Secret};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{CLAIM_ANNOTATION, FIELD_MANAGER};
use crate::managed::{self, Shape};
use crate::spec::{CONFIG_MAP_SUFFIX, SECRET_SUFFIX, ValidGroup};

/// The label every object the operator creates carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The pod-template annotation whose change rolls the members when their configuration changes
/// (a variable is read only when a container starts).
pub const CONFIG_HASH_ANNOTATION: &str = "hedge.dev/config-hash";
/// The name of the peer port on the member containers.
pub const PEER_PORT_NAME: &str = "hedge-peer";

/// The labels of the operator's objects.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())])
}

fn owned_meta(v: &ValidGroup, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels()),
        owner_references: Some(vec![v.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The group's ConfigMap: exactly the variables [`hedge::Config::from_env`] reads, rendered by
/// [`hedge::Config::to_env`] so that the operator and the members can never disagree.
pub fn config_map(v: &ValidGroup) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(v, &v.config_map),
        data: Some(v.config.to_env()),
        ..ConfigMap::default()
    }
}

/// A generated group Secret holding `value` under `HEDGE_GROUP_SECRET`.
pub fn generated_secret(v: &ValidGroup, value: &str) -> Secret {
    Secret {
        metadata: owned_meta(v, v.secret.name()),
        data: Some(BTreeMap::from([(
            ENV_GROUP_SECRET.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// A fresh group secret: 32 random bytes as 64 hex digits.
pub fn new_secret_value() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether a Secret holds a usable group secret.
pub fn secret_is_usable(secret: &Secret) -> bool {
    let in_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(ENV_GROUP_SECRET))
        .is_some_and(|v| !v.0.is_empty());
    let in_string_data = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(ENV_GROUP_SECRET))
        .is_some_and(|v| !v.is_empty());
    in_data || in_string_data
}

/// The NetworkPolicy: members may reach each other's peer port, and that is all it admits.
///
/// Policies add up, so this one only ever narrows: it never opens a port to any source. A policy
/// that selects pods isolates them for ingress on every port, so enabling it means the
/// workload's other ports need a policy of their own (documented on the CRD field and in the
/// README).
pub fn network_policy(v: &ValidGroup, members: &LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owned_meta(v, &v.network_policy),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(members.clone()),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(i32::from(v.peer_port()))),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

/// How server-side apply merges a Deployment's fields (its OpenAPI list types), for the fields
/// the operator sets.
pub fn deployment_schema(names: &[&str]) -> Shape {
    match names {
        ["metadata", "ownerReferences"] => Shape::Keyed(&["uid"]),
        ["spec", "selector"] => Shape::Atomic,
        ["spec", "template", "spec", "containers" | "initContainers"] => Shape::Keyed(&["name"]),
        ["spec", "template", "spec", _, "env"] => Shape::Keyed(&["name"]),
        ["spec", "template", "spec", _, "ports"] => Shape::Keyed(&["containerPort", "protocol"]),
        _ => Shape::Granular,
    }
}

/// How server-side apply merges the fields of the operator's own objects (ConfigMap,
/// NetworkPolicy).
pub fn owned_object_schema(names: &[&str]) -> Shape {
    match names {
        ["metadata", "ownerReferences"] => Shape::Keyed(&["uid"]),
        ["spec", "podSelector"] => Shape::Atomic,
        _ => Shape::Granular,
    }
}

/// A digest of the Secret's group secret: it goes into the config hash, so that a rotated or
/// re-created Secret rolls the pods (and the members never disagree on it), while the secret
/// itself appears nowhere.
pub fn secret_digest(secret: &Secret) -> String {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(ENV_GROUP_SECRET))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(ENV_GROUP_SECRET))
                .map(|v| v.as_bytes().to_vec())
        })
        .unwrap_or_default();
    hex(&Sha256::digest(&value)[..8])
}

/// The hash in the pod template's [`CONFIG_HASH_ANNOTATION`]: it covers everything the members
/// read at start (the ConfigMap's data, the Secret's name and its value's digest) and the
/// containers the operator configures, so a change to any of them rolls the pods and nothing
/// else does.
pub fn config_hash(v: &ValidGroup, secret_digest: &str, containers: &[String]) -> String {
    let mut sorted = containers.to_vec();
    sorted.sort();
    let input = json!({
        "data": v.config.to_env(),
        "secret": v.secret.name(),
        "secretDigest": secret_digest,
        "containers": sorted,
    });
    let digest = Sha256::digest(input.to_string().as_bytes());
    hex(&digest[..8])
}

/// Why the Deployment cannot be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentProblem {
    /// A container named in `spec.deployment.containers` does not exist.
    #[error("container `{container}` is not in Deployment `{deployment}`")]
    ContainerNotFound {
        /// The Deployment.
        deployment: String,
        /// The container.
        container: String,
    },
    /// The pod template has no containers.
    #[error("Deployment `{0}` has no containers")]
    NoContainers(String),
}

fn containers(deployment: &Deployment) -> &[Container] {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .map_or(&[], |s| s.containers.as_slice())
}

/// The containers the operator configures: those named in the spec, or else the first one only
/// (a sidecar is never configured unless named).
pub fn target_containers(
    v: &ValidGroup,
    deployment: &Deployment,
) -> Result<Vec<String>, DeploymentProblem> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let present: Vec<String> = containers(deployment)
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let wanted = v
        .deployment
        .as_ref()
        .map(|d| d.containers.clone())
        .unwrap_or_default();
    if wanted.is_empty() {
        return present
            .first()
            .map(|first| vec![first.clone()])
            .ok_or(DeploymentProblem::NoContainers(name));
    }
    for c in &wanted {
        if !present.contains(c) {
            return Err(DeploymentProblem::ContainerNotFound {
                deployment: name,
                container: c.clone(),
            });
        }
    }
    Ok(wanted)
}

/// The `env` items the operator sets in each member container: one per `HEDGE_*` variable, read
/// from the group's ConfigMap (or, for the group secret, its Secret) by `valueFrom`, and the
/// downward-API `POD_NAME`, `POD_UID` and `POD_IP`.
///
/// `env` is a list keyed by name, so each item is a field of its own: the Deployment's owner can
/// keep applying its own manifest (its `env` and `envFrom`) without removing these, and the
/// operator never touches `envFrom`.
pub fn env_items(v: &ValidGroup) -> Vec<Value> {
    let mut items: Vec<Value> = v
        .config
        .to_env()
        .into_keys()
        .map(|key| {
            json!({"name": key, "valueFrom": {"configMapKeyRef": {"name": v.config_map, "key": key}}})
        })
        .collect();
    items.push(
        json!({"name": ENV_GROUP_SECRET, "valueFrom": {"secretKeyRef": {
        "name": v.secret.name(), "key": ENV_GROUP_SECRET}}}),
    );
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    items.push(field(ENV_POD_NAME, "metadata.name"));
    items.push(field(ENV_POD_UID, "metadata.uid"));
    items.push(field(ENV_POD_IP, "status.podIP"));
    items
}

/// A variable of the operator's that a container already defines differently, under another
/// field manager (the user's own `HEDGE_GROUP`, say). It is reported, never overwritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvConflict {
    /// The container.
    pub container: String,
    /// The variable.
    pub variable: String,
    /// The field managers that own it.
    pub owners: Vec<String>,
}

/// The operator's variables that the target containers define with another value.
pub fn env_conflicts(
    v: &ValidGroup,
    deployment: &Deployment,
    targets: &[String],
) -> Vec<EnvConflict> {
    let ours = env_items(v);
    let mut conflicts = Vec::new();
    for c in containers(deployment)
        .iter()
        .filter(|c| targets.contains(&c.name))
    {
        for existing in c.env.iter().flatten() {
            let Some(wanted) = ours.iter().find(|o| o["name"] == existing.name.as_str()) else {
                continue;
            };
            let existing_json = serde_json::to_value(existing).unwrap_or(Value::Null);
            if existing_json == *wanted {
                continue;
            }
            let path = vec![
                "f:spec".to_owned(),
                "f:template".into(),
                "f:spec".into(),
                "f:containers".into(),
                managed::item_key(&json!({"name": c.name}), &["name"]),
                "f:env".into(),
                managed::item_key(&json!({"name": existing.name}), &["name"]),
            ];
            conflicts.push(EnvConflict {
                container: c.name.clone(),
                variable: existing.name.clone(),
                owners: managed::other_owners(&deployment.metadata, &path, &v.field_manager),
            });
        }
    }
    conflicts
}

/// The server-side apply body for the Deployment, under the group's own field manager: the
/// claim annotation, the config hash in the pod template, and per target container the `env`
/// items and the peer port. `metadata.resourceVersion` makes it conditional: a Deployment
/// changed since it was read fails with 409 and the reconcile runs again, instead of writing
/// over an edit it did not see.
pub fn deployment_apply(
    v: &ValidGroup,
    deployment: &Deployment,
    targets: &[String],
    secret_digest: &str,
) -> Value {
    let port = i32::from(v.peer_port());
    let fragments: Vec<Value> = containers(deployment)
        .iter()
        .filter(|c| targets.contains(&c.name))
        .map(|c| {
            let mut fragment = json!({"name": c.name, "env": env_items(v)});
            // A port the user already declares under another name stays theirs: taking it over
            // would rename it under them.
            let declared_elsewhere = c.ports.iter().flatten().any(|p| {
                p.container_port == port
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    && p.name.as_deref() != Some(PEER_PORT_NAME)
            });
            if !declared_elsewhere {
                fragment["ports"] =
                    json!([{"name": PEER_PORT_NAME, "containerPort": port, "protocol": "TCP"}]);
            }
            fragment
        })
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment.metadata.name,
            "namespace": v.namespace,
            "resourceVersion": deployment.metadata.resource_version,
            "annotations": {CLAIM_ANNOTATION: v.group},
        },
        "spec": {"template": {
            "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: config_hash(v, secret_digest, targets)}},
            "spec": {"containers": fragments},
        }},
    })
}

/// The apply body that gives back every field a manager owns in a Deployment: an apply with no
/// fields removes each field the manager set that no other manager owns (server-side apply's
/// own way to let go). Conditional on the resource version read.
pub fn deployment_release(deployment: &Deployment) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment.metadata.name,
            "namespace": deployment.metadata.namespace,
            "resourceVersion": deployment.metadata.resource_version,
        },
    })
}

/// Whether an envFrom entry is one the operator's earlier releases added: the group's ConfigMap
/// or Secret, by their generated names or the current ones.
fn is_ours(v: &ValidGroup, entry: &EnvFromSource) -> bool {
    let generated = |suffix: &str| format!("{}{suffix}", v.name);
    let cm = entry.config_map_ref.as_ref().map(|r| r.name.as_str());
    let secret = entry.secret_ref.as_ref().map(|r| r.name.as_str());
    cm == Some(v.config_map.as_str())
        || cm == Some(generated(CONFIG_MAP_SUFFIX).as_str())
        || secret == Some(v.secret.name())
        || secret == Some(generated(SECRET_SUFFIX).as_str())
}

/// The apply body, under the field manager of the operator's earlier releases
/// ([`crate::crd::FIELD_MANAGER`]), that gives back what those releases set in a Deployment.
/// They applied the whole atomic `envFrom` list, the user's entries included: this body keeps
/// owning the user's entries (dropping them would remove them from the pods) and drops the
/// group's.
pub fn legacy_release(v: &ValidGroup, deployment: &Deployment) -> Value {
    let fragments: Vec<Value> = containers(deployment)
        .iter()
        .filter_map(|c| {
            let keep: Vec<Value> = c
                .env_from
                .iter()
                .flatten()
                .filter(|e| !is_ours(v, e))
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect();
            (!keep.is_empty()).then(|| json!({"name": c.name, "envFrom": keep}))
        })
        .collect();
    let mut body = deployment_release(deployment);
    if !fragments.is_empty() {
        body["spec"] = json!({"template": {"spec": {"containers": fragments}}});
    }
    body
}

/// The group that claims a Deployment ([`CLAIM_ANNOTATION`]), if any.
pub fn claimed_by(deployment: &Deployment) -> Option<String> {
    deployment
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLAIM_ANNOTATION))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(new_secret_value().len(), 64);
    }
}
