//! Carries out a [`Plan`]: the Secret, the ConfigMap, the NetworkPolicy, the releases and last the
//! Deployment, which references the others. (The schema is ensured before, see
//! [`crate::controller`].) Every Kubernetes write is a server-side apply, except the generated
//! Secret, which is created once and never overwritten: the operator's own objects under
//! [`FIELD_MANAGER`], forced (they are the operator's); a Deployment under the group's own field
//! manager, not forced, and conditional on the `resourceVersion` read.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::crd::FIELD_MANAGER;
use crate::plan::{NetworkPolicyStep, Plan, Release};
use crate::provision::ProvisionError;
use crate::resources;
use crate::spec::ValidGroup;

/// A write that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A Kubernetes write failed.
    #[error("failed to {verb} {kind} `{name}`: {source}")]
    Kube {
        /// What was done.
        verb: &'static str,
        /// The kind written.
        kind: &'static str,
        /// The object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Spanner call failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

fn kube_error(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ApplyError {
    let name = name.to_owned();
    move |source| ApplyError::Kube {
        verb,
        kind,
        name,
        source,
    }
}

fn is_status(e: &kube::Error, check: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if check(s))
}

impl ApplyError {
    /// Whether the write failed with 409: the object changed since it was read (a
    /// `resourceVersion` precondition), or a field is owned by another manager. The next
    /// reconcile reads again and decides anew.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApplyError::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// Creates the generated Secret with a fresh value; an existing one (created since it was
/// observed) is read back, never overwritten.
pub async fn create_secret(client: &Client, v: &ValidGroup) -> Result<Secret, ApplyError> {
    let secret = resources::generated_secret(v, &resources::new_secret_value());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let api = Api::<Secret>::namespaced(client.clone(), &v.namespace);
    match api.create(&pp, &secret).await {
        Ok(created) => Ok(created),
        Err(e) if is_status(&e, kube::core::Status::is_already_exists) => api
            .get(v.secret.name())
            .await
            .map_err(kube_error("read", "Secret", v.secret.name())),
        Err(e) => Err(kube_error("create", "Secret", v.secret.name())(e)),
    }
}

/// Applies `plan` (the Secret already created), stopping at the first failure (the next
/// reconcile plans again from what is there then).
pub async fn apply(client: &Client, v: &ValidGroup, plan: &Plan) -> Result<(), ApplyError> {
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let ns = v.namespace.as_str();

    if let Some(cm) = &plan.config_map {
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .patch(&v.config_map, &ssa, &Patch::Apply(cm))
            .await
            .map_err(kube_error("apply", "ConfigMap", &v.config_map))?;
    }

    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    match &plan.network_policy {
        NetworkPolicyStep::Keep => {}
        NetworkPolicyStep::Apply(np) => {
            policies
                .patch(&v.network_policy, &ssa, &Patch::Apply(np.as_ref()))
                .await
                .map_err(kube_error("apply", "NetworkPolicy", &v.network_policy))?;
        }
        NetworkPolicyStep::Delete => match policies
            .delete(&v.network_policy, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, kube::core::Status::is_not_found) => {}
            Err(e) => return Err(kube_error("delete", "NetworkPolicy", &v.network_policy)(e)),
        },
    }

    let versions = release(client, ns, &plan.releases).await?;

    if let Some((name, body)) = &plan.deployment {
        // A release of the same Deployment just now moved its resource version: the apply is
        // conditional on the version that release left, not the one first read.
        let mut body = body.clone();
        if let Some((_, version)) = versions.iter().rev().find(|(d, _)| d == name) {
            body["metadata"]["resourceVersion"] = serde_json::json!(version);
        }
        // Not forced: a field another manager owns (a variable the user defines) is a conflict
        // to report, never a value to take over.
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(
                name,
                &PatchParams::apply(&v.field_manager),
                &Patch::Apply(&body),
            )
            .await
            .map_err(kube_error("apply", "Deployment", name))?;
    }
    Ok(())
}

/// Gives fields of Deployments back, each under its field manager (in order; a later release of
/// the same Deployment is conditional on the version the earlier one left). A Deployment that is
/// gone needs nothing. Returns each released Deployment's resource version afterwards.
pub async fn release(
    client: &Client,
    namespace: &str,
    releases: &[Release],
) -> Result<Vec<(String, String)>, ApplyError> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    let mut versions: Vec<(String, String)> = Vec::new();
    for r in releases {
        let mut body = r.body.clone();
        if let Some((_, version)) = versions.iter().rev().find(|(d, _)| *d == r.deployment) {
            body["metadata"]["resourceVersion"] = serde_json::json!(version);
        }
        // Forced: the fields are the manager's own; nothing of another manager changes.
        let pp = PatchParams::apply(&r.manager).force();
        match api.patch(&r.deployment, &pp, &Patch::Apply(&body)).await {
            Ok(d) => {
                if let Some(version) = d.metadata.resource_version {
                    versions.push((r.deployment.clone(), version));
                }
            }
            Err(e) if is_status(&e, kube::core::Status::is_not_found) => {}
            Err(e) => return Err(kube_error("release", "Deployment", &r.deployment)(e)),
        }
    }
    Ok(versions)
}
