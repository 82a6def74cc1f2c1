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

use crate::crd::FIELD_MANAGER;
use crate::spec::{CONFIG_MAP_SUFFIX, SECRET_SUFFIX, ValidGroup};

/// The label every object the operator creates carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The pod-template annotation whose change rolls the members when their configuration changes
/// (envFrom is read only when a container starts).
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

/// The NetworkPolicy: the peer port admits only the members; every other TCP and UDP port admits
/// every source, as it would without a policy. A policy that selects pods denies all ingress it
/// does not admit, so a policy with only the peer rule would cut the workload's other traffic.
pub fn network_policy(v: &ValidGroup, members: &LabelSelector) -> NetworkPolicy {
    let port = i32::from(v.peer_port());
    let range = |protocol: &str, from: i32, to: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(from)),
        end_port: Some(to),
    };
    let mut other_ports = Vec::new();
    if port > 1 {
        other_ports.push(range("TCP", 1, port - 1));
    }
    if port < 65535 {
        other_ports.push(range("TCP", port + 1, 65535));
    }
    other_ports.push(range("UDP", 1, 65535));
    NetworkPolicy {
        metadata: owned_meta(v, &v.network_policy),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(members.clone()),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        protocol: Some("TCP".into()),
                        port: Some(IntOrString::Int(port)),
                        end_port: None,
                    }]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(other_ports),
                },
            ]),
            egress: None,
        }),
    }
}

/// The hash in the pod template's [`CONFIG_HASH_ANNOTATION`]: it covers everything the members
/// read at start (the ConfigMap's data, the Secret's name) and the containers the operator
/// configures, so a change to any of them rolls the pods and nothing else does.
pub fn config_hash(v: &ValidGroup, containers: &[String]) -> String {
    let mut sorted = containers.to_vec();
    sorted.sort();
    let input = json!({
        "data": v.config.to_env(),
        "secret": v.secret.name(),
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

/// The containers the operator configures: those named in the spec, or all of them.
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
        if present.is_empty() {
            return Err(DeploymentProblem::NoContainers(name));
        }
        return Ok(present);
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

/// Whether an envFrom entry is one of the operator's: the group's ConfigMap or Secret, including
/// the generated names when the spec has since switched to an existing Secret.
fn is_ours(v: &ValidGroup, entry: &EnvFromSource) -> bool {
    let generated = |suffix: &str| format!("{}{suffix}", v.name);
    let cm = entry.config_map_ref.as_ref().map(|r| r.name.as_str());
    let secret = entry.secret_ref.as_ref().map(|r| r.name.as_str());
    cm == Some(v.config_map.as_str())
        || cm == Some(generated(CONFIG_MAP_SUFFIX).as_str())
        || secret == Some(v.secret.name())
        || secret == Some(generated(SECRET_SUFFIX).as_str())
}

fn env_from_json(entry: &EnvFromSource) -> Option<Value> {
    serde_json::to_value(entry).ok()
}

/// The server-side apply body for the Deployment: only the fields the operator owns.
///
/// `envFrom` is an atomic list, so whoever applies it owns all of it: the body keeps the entries
/// that are already there (in their order) and appends the group's ConfigMap and Secret, so that
/// the user's own entries survive the operator's apply.
pub fn deployment_apply(v: &ValidGroup, deployment: &Deployment, targets: &[String]) -> Value {
    let port = i32::from(v.peer_port());
    let fragments: Vec<Value> = containers(deployment)
        .iter()
        .filter(|c| targets.contains(&c.name))
        .map(|c| {
            let observed = c.env_from.clone().unwrap_or_default();
            let mut env_from: Vec<Value> = observed
                .iter()
                .filter(|e| !is_ours(v, e) || refers_to_current(v, e))
                .filter_map(env_from_json)
                .collect();
            for ours in [
                json!({"configMapRef": {"name": v.config_map}}),
                json!({"secretRef": {"name": v.secret.name()}}),
            ] {
                if !env_from.iter().any(|e| includes(e, &ours)) {
                    env_from.push(ours);
                }
            }
            let field = |name: &str, path: &str| {
                json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
            };
            let mut fragment = json!({
                "name": c.name,
                "envFrom": env_from,
                "env": [
                    field(ENV_POD_NAME, "metadata.name"),
                    field(ENV_POD_UID, "metadata.uid"),
                    field(ENV_POD_IP, "status.podIP"),
                ],
            });
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
        "metadata": {"name": deployment.metadata.name, "namespace": v.namespace},
        "spec": {"template": {
            "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: config_hash(v, targets)}},
            "spec": {"containers": fragments},
        }},
    })
}

fn refers_to_current(v: &ValidGroup, entry: &EnvFromSource) -> bool {
    entry
        .config_map_ref
        .as_ref()
        .is_some_and(|r| r.name == v.config_map)
        || entry
            .secret_ref
            .as_ref()
            .is_some_and(|r| r.name == v.secret.name())
}

/// The apply body that gives back the operator's fields of a Deployment on deletion: the same
/// containers with only the user's own `envFrom` entries (the operator owns that atomic list, and
/// giving it up empty would drop them), and nothing else.
pub fn deployment_release(v: &ValidGroup, deployment: &Deployment) -> Value {
    let fragments: Vec<Value> = containers(deployment)
        .iter()
        .filter_map(|c| {
            let keep: Vec<Value> = c
                .env_from
                .iter()
                .flatten()
                .filter(|e| !is_ours(v, e))
                .filter_map(env_from_json)
                .collect();
            (!keep.is_empty()).then(|| json!({"name": c.name, "envFrom": keep}))
        })
        .collect();
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment.metadata.name, "namespace": v.namespace},
    });
    if !fragments.is_empty() {
        body["spec"] = json!({"template": {"spec": {"containers": fragments}}});
    }
    body
}

/// Whether an object was last written by the operator's server-side apply.
pub fn managed_by_operator(meta: &ObjectMeta) -> bool {
    meta.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
    })
}

/// Whether `observed` already holds everything in `desired`: every key of a desired object is in
/// the observed one with an included value, and every item of a desired array is included in some
/// observed item. Fields the API server adds (defaults, metadata) never count as a difference, so
/// an unchanged group compares equal and is not written again.
pub fn includes(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d.iter().all(|(k, dv)| {
            o.get(k).is_some_and(|ov| includes(ov, dv)) || (dv.is_null() && !o.contains_key(k))
        }),
        (Value::Array(o), Value::Array(d)) => {
            d.iter().all(|dv| o.iter().any(|ov| includes(ov, dv)))
        }
        (o, d) => o == d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_ignores_fields_the_server_adds_but_sees_changed_values() {
        let observed = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "extra": true});
        assert!(includes(&observed, &json!({"b": {"c": [2]}})));
        assert!(includes(&observed, &json!({"a": 1, "missing": null})));
        assert!(!includes(&observed, &json!({"a": 2})));
        assert!(!includes(&observed, &json!({"b": {"c": [3]}})));
        assert!(!includes(&observed, &json!({"new": 1})));
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(new_secret_value().len(), 64);
    }
}
