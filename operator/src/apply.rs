//! Carries out a [`Plan`]: the Secret, the ConfigMap, the NetworkPolicy and last the Deployment,
//! which references the others. (The schema is ensured before, see [`crate::controller`].) Every Kubernetes write is a server-side apply with the operator's field
//! manager, except the generated Secret, which is created once and never overwritten.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::crd::FIELD_MANAGER;
use crate::plan::{CleanupPlan, NetworkPolicyStep, Plan};
use crate::provision::{ProvisionError, Provisioner};
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

/// Applies `plan`, stopping at the first failure (the next reconcile plans again from what is
/// there then). Returns whether the generated Secret was created.
pub async fn apply(client: &Client, v: &ValidGroup, plan: &Plan) -> Result<bool, ApplyError> {
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let ns = v.namespace.as_str();
    let mut secret_created = false;

    if plan.create_secret {
        let secret = resources::generated_secret(v, &resources::new_secret_value());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match Api::<Secret>::namespaced(client.clone(), ns)
            .create(&pp, &secret)
            .await
        {
            Ok(_) => secret_created = true,
            // Created since it was observed: the existing value stays, never overwritten.
            Err(e) if is_status(&e, kube::core::Status::is_already_exists) => {}
            Err(e) => return Err(kube_error("create", "Secret", v.secret.name())(e)),
        }
    }

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

    if let Some((name, body)) = &plan.deployment {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(name, &ssa, &Patch::Apply(body))
            .await
            .map_err(kube_error("apply", "Deployment", name))?;
    }
    Ok(secret_created)
}

/// Applies a clean-up: gives the Deployment's fields back first (so that no new pod references
/// the objects about to be collected), then deletes the rows, then drops the tables.
pub async fn apply_cleanup(
    client: &Client,
    provisioner: &dyn Provisioner,
    v: &ValidGroup,
    plan: &CleanupPlan,
) -> Result<(), ApplyError> {
    if let Some((name, body)) = &plan.release_deployment {
        let ssa = PatchParams::apply(FIELD_MANAGER).force();
        match Api::<Deployment>::namespaced(client.clone(), &v.namespace)
            .patch(name, &ssa, &Patch::Apply(body))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, kube::core::Status::is_not_found) => {}
            Err(e) => return Err(kube_error("release", "Deployment", name)(e)),
        }
    }
    if plan.delete_rows {
        provisioner
            .delete_group_rows(&v.database, &v.tables, &v.group)
            .await?;
    }
    if plan.drop_tables {
        provisioner.drop_schema(&v.database, &v.tables).await?;
    }
    Ok(())
}
