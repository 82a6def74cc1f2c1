//! What a reconcile must change, decided from the valid spec and what was observed. Pure: the
//! plan tests run it on YAML fixtures. Every step compares the desired object with the observed
//! one and is left out when they agree, so an unchanged group plans no writes at all.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::crd::DeletionPolicy;
use crate::resources::{self, DeploymentProblem, includes};
use crate::spec::{SecretSource, ValidGroup};

/// What the operator saw before deciding.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The group's ConfigMap.
    pub config_map: Option<ConfigMap>,
    /// The group's Secret (generated or existing).
    pub secret: Option<Secret>,
    /// The referenced Deployment, when there is one and it exists.
    pub deployment: Option<Deployment>,
    /// The group's NetworkPolicy.
    pub network_policy: Option<NetworkPolicy>,
}

/// The NetworkPolicy step.
#[derive(Clone, Debug, PartialEq)]
pub enum NetworkPolicyStep {
    /// Nothing to do.
    Keep,
    /// Apply this policy.
    Apply(Box<NetworkPolicy>),
    /// Delete the operator's policy (it was disabled).
    Delete,
}

/// Why the members' configuration is not complete; reported in `ConfigReady`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// The referenced Deployment does not exist (yet).
    #[error("Deployment `{0}` was not found")]
    DeploymentNotFound(String),
    /// The Deployment cannot be configured.
    #[error(transparent)]
    Deployment(#[from] DeploymentProblem),
    /// The existing Secret named in the spec does not exist.
    #[error("Secret `{0}` was not found")]
    SecretNotFound(String),
    /// The Secret has no `HEDGE_GROUP_SECRET` key.
    #[error("Secret `{0}` has no non-empty key HEDGE_GROUP_SECRET")]
    SecretUnusable(String),
}

impl ConfigProblem {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigProblem::DeploymentNotFound(_) => "DeploymentNotFound",
            ConfigProblem::Deployment(DeploymentProblem::ContainerNotFound { .. }) => {
                "ContainerNotFound"
            }
            ConfigProblem::Deployment(DeploymentProblem::NoContainers(_)) => "NoContainers",
            ConfigProblem::SecretNotFound(_) => "SecretNotFound",
            ConfigProblem::SecretUnusable(_) => "SecretUnusable",
        }
    }
}

/// Everything one reconcile of a live group changes in Kubernetes, in the order it is applied.
/// (The Spanner schema is not planned here: [`crate::provision::Provisioner::ensure_schema`]
/// compares and changes only what is missing by itself.)
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Create the generated Secret (its value is drawn when it is created).
    pub create_secret: bool,
    /// Apply this ConfigMap.
    pub config_map: Option<ConfigMap>,
    /// The NetworkPolicy.
    pub network_policy: NetworkPolicyStep,
    /// Apply this body to the named Deployment.
    pub deployment: Option<(String, Value)>,
    /// What keeps the configuration from being complete.
    pub problems: Vec<ConfigProblem>,
}

impl Plan {
    /// The number of Kubernetes writes the plan makes.
    pub fn writes(&self) -> usize {
        usize::from(self.create_secret)
            + usize::from(self.config_map.is_some())
            + usize::from(!matches!(self.network_policy, NetworkPolicyStep::Keep))
            + usize::from(self.deployment.is_some())
    }
}

/// Decides the changes that bring the observed state to the spec.
pub fn plan(v: &ValidGroup, o: &Observed) -> Plan {
    let mut problems = Vec::new();

    let mut create_secret = false;
    match (&v.secret, &o.secret) {
        (SecretSource::Generated(_), None) => create_secret = true,
        (SecretSource::Existing(name), None) => {
            problems.push(ConfigProblem::SecretNotFound(name.clone()))
        }
        (source, Some(secret)) if !resources::secret_is_usable(secret) => {
            problems.push(ConfigProblem::SecretUnusable(source.name().to_owned()));
        }
        _ => {}
    }

    let desired_cm = resources::config_map(v);
    let config_map = (!same(o.config_map.as_ref(), &desired_cm)).then_some(desired_cm);

    let mut deployment = None;
    if let Some(target) = &v.deployment {
        match &o.deployment {
            None => problems.push(ConfigProblem::DeploymentNotFound(target.name.clone())),
            Some(d) => match resources::target_containers(v, d) {
                Err(p) => problems.push(p.into()),
                // Pods that reference a Secret that is missing do not start: configure the
                // Deployment only once the Secret is usable (or about to be created).
                Ok(_) if !problems.is_empty() => {}
                Ok(targets) => {
                    let body = resources::deployment_apply(v, d, &targets);
                    let observed = serde_json::to_value(d).unwrap_or(Value::Null);
                    if !includes(&observed, &body) {
                        deployment = Some((target.name.clone(), body));
                    }
                }
            },
        }
    }

    let network_policy = if v.network_policy_enabled {
        let members = v
            .selector
            .clone()
            .or_else(|| o.deployment.as_ref().map(|d| d.spec.selector.clone()));
        match members {
            // Without a selector the Deployment is missing, which is already reported.
            None => NetworkPolicyStep::Keep,
            Some(members) => {
                let desired = resources::network_policy(v, &members);
                if same(o.network_policy.as_ref(), &desired) {
                    NetworkPolicyStep::Keep
                } else {
                    NetworkPolicyStep::Apply(Box::new(desired))
                }
            }
        }
    } else if o
        .network_policy
        .as_ref()
        .is_some_and(|np| owned_by(&np.metadata, v))
    {
        NetworkPolicyStep::Delete
    } else {
        NetworkPolicyStep::Keep
    };

    Plan {
        create_secret,
        config_map,
        network_policy,
        deployment,
        problems,
    }
}

fn same<T: serde::Serialize>(observed: Option<&T>, desired: &T) -> bool {
    let (Some(observed), Ok(desired)) = (observed, serde_json::to_value(desired)) else {
        return false;
    };
    serde_json::to_value(observed).is_ok_and(|o| includes(&o, &desired))
}

fn owned_by(meta: &ObjectMeta, v: &ValidGroup) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == v.owner.uid)
}

/// What the clean-up saw.
#[derive(Clone, Debug, Default)]
pub struct CleanupObserved {
    /// Other users of the tables: HedgeGroups on the same database and tables, and groups with
    /// rows in them (read only for [`DeletionPolicy::DropTables`]).
    pub other_users: Vec<String>,
    /// The referenced Deployment, when it exists.
    pub deployment: Option<Deployment>,
}

/// What the clean-up of a deleted group does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupPlan {
    /// Delete the group's lock and member rows.
    pub delete_rows: bool,
    /// Drop the tables.
    pub drop_tables: bool,
    /// The other users that keep the tables from being dropped.
    pub tables_kept_for: Vec<String>,
    /// Give back the operator's fields of this Deployment with this apply body.
    pub release_deployment: Option<(String, Value)>,
}

/// Decides the clean-up by the deletion policy. `DropTables` never drops tables another group
/// still uses: then it deletes only this group's rows.
pub fn plan_cleanup(v: &ValidGroup, o: &CleanupObserved) -> CleanupPlan {
    let (delete_rows, drop_tables, tables_kept_for) = match v.deletion_policy {
        DeletionPolicy::Retain => (false, false, Vec::new()),
        DeletionPolicy::DeleteRows => (true, false, Vec::new()),
        DeletionPolicy::DropTables if o.other_users.is_empty() => (true, true, Vec::new()),
        DeletionPolicy::DropTables => (true, false, o.other_users.clone()),
    };
    let release_deployment = o
        .deployment
        .as_ref()
        .filter(|d| resources::managed_by_operator(&d.metadata))
        .map(|d| {
            let name = d.metadata.name.clone().unwrap_or_default();
            (name, resources::deployment_release(v, d))
        });
    CleanupPlan {
        delete_rows,
        drop_tables,
        tables_kept_for,
        release_deployment,
    }
}
