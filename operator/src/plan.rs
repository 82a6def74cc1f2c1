//! What a reconcile must change, decided from the valid spec and what was observed. Pure: the
//! plan tests run it on YAML fixtures.
//!
//! Every write is a server-side apply, and a step is left out only when the apply would change
//! nothing: the fields the operator's manager owns (`metadata.managedFields`) are exactly those
//! the desired object sets, each with the desired value ([`managed::apply_is_noop`]). A field it
//! no longer wants (a dropped ConfigMap key, a narrowed selector) is a difference, so the apply
//! that removes it is sent; an unchanged group plans no writes at all.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::crd::{DeletionPolicy, FIELD_MANAGER};
use crate::managed::{self, Schema};
use crate::resources::{self, DeploymentProblem};
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
    /// The Deployment this group configured before (`status.deployment`) when the spec no longer
    /// names it, and it still exists.
    pub previous_deployment: Option<Deployment>,
    /// The other groups (`<namespace>/<name>`) whose spec names the referenced Deployment.
    pub deployment_claimants: BTreeSet<String>,
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
    /// Another group's configuration is in the Deployment.
    #[error(
        "Deployment `{deployment}` is claimed by HedgeGroup {group}: one Deployment serves one group"
    )]
    DeploymentClaimed {
        /// The Deployment.
        deployment: String,
        /// The group that claims it.
        group: String,
    },
    /// A container defines one of the operator's variables itself.
    #[error(
        "container `{container}` of Deployment `{deployment}` defines {variable} itself (field manager {owners}): remove it from your manifest, the operator sets it"
    )]
    EnvVarConflict {
        /// The Deployment.
        deployment: String,
        /// The container.
        container: String,
        /// The variable.
        variable: String,
        /// Who owns it.
        owners: String,
    },
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
            ConfigProblem::DeploymentClaimed { .. } => "DeploymentClaimed",
            ConfigProblem::EnvVarConflict { .. } => "EnvVarConflict",
            ConfigProblem::SecretNotFound(_) => "SecretNotFound",
            ConfigProblem::SecretUnusable(_) => "SecretUnusable",
        }
    }
}

/// A server-side apply that gives fields of a Deployment back.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    /// The Deployment.
    pub deployment: String,
    /// The field manager whose fields go.
    pub manager: String,
    /// The apply body ([`resources::deployment_release`] or [`resources::legacy_release`]).
    pub body: Value,
}

/// Everything one reconcile of a live group changes in Kubernetes, in the order it is applied.
/// (The Spanner schema is not planned here: [`crate::provision::Provisioner::ensure_schema`]
/// compares and changes only what is missing by itself.)
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Create the generated Secret (its value is drawn when it is created; the Deployment is
    /// planned once it exists).
    pub create_secret: bool,
    /// Apply this ConfigMap.
    pub config_map: Option<ConfigMap>,
    /// The NetworkPolicy.
    pub network_policy: NetworkPolicyStep,
    /// Give back fields in Deployments first: the previous Deployment's, a stale claim's, the
    /// fields of the operator's earlier releases.
    pub releases: Vec<Release>,
    /// Apply this body to the named Deployment, under the group's field manager.
    pub deployment: Option<(String, Value)>,
    /// What keeps the configuration from being complete.
    pub problems: Vec<ConfigProblem>,
    /// The Deployment that carries the group's configuration once the plan is applied.
    pub configured_deployment: Option<String>,
}

impl Plan {
    /// The number of Kubernetes writes the plan makes.
    pub fn writes(&self) -> usize {
        usize::from(self.create_secret)
            + usize::from(self.config_map.is_some())
            + usize::from(!matches!(self.network_policy, NetworkPolicyStep::Keep))
            + self.releases.len()
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
    let config_map = (!unchanged(o.config_map.as_ref(), &desired_cm)).then_some(desired_cm);

    let mut releases = Vec::new();
    if let Some(previous) = &o.previous_deployment
        && managed::has_manager(&previous.metadata, &v.field_manager)
    {
        releases.push(Release {
            deployment: previous.metadata.name.clone().unwrap_or_default(),
            manager: v.field_manager.clone(),
            body: resources::deployment_release(previous),
        });
    }

    let mut deployment = None;
    let mut configured_deployment = None;
    if let Some(target) = &v.deployment {
        match &o.deployment {
            None => problems.push(ConfigProblem::DeploymentNotFound(target.name.clone())),
            Some(d) => {
                let planned = plan_deployment(v, o, d, &mut problems, &mut releases);
                let ours_there = managed::has_manager(&d.metadata, &v.field_manager);
                if planned.is_some() || ours_there {
                    configured_deployment = Some(target.name.clone());
                }
                deployment = planned.map(|body| (target.name.clone(), body));
            }
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
                if unchanged(o.network_policy.as_ref(), &desired) {
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
        releases,
        deployment,
        problems,
        configured_deployment,
    }
}

/// The Deployment's apply body, when it must be sent; problems and releases on the way.
fn plan_deployment(
    v: &ValidGroup,
    o: &Observed,
    d: &Deployment,
    problems: &mut Vec<ConfigProblem>,
    releases: &mut Vec<Release>,
) -> Option<Value> {
    let name = d.metadata.name.clone().unwrap_or_default();
    if let Some(claimant) = resources::claimed_by(d).filter(|g| *g != v.group) {
        if o.deployment_claimants.contains(&claimant) {
            problems.push(ConfigProblem::DeploymentClaimed {
                deployment: name,
                group: claimant,
            });
            return None;
        }
        // The claiming group is gone or names another Deployment now: its fields are stale.
        // Give them back under its manager, as its own clean-up would have.
        if let Some((ns, group_name)) = claimant.split_once('/') {
            releases.push(Release {
                deployment: name.clone(),
                manager: crate::spec::field_manager(ns, group_name),
                body: resources::deployment_release(d),
            });
        }
    }
    let targets = match resources::target_containers(v, d) {
        Ok(targets) => targets,
        Err(p) => {
            problems.push(p.into());
            return None;
        }
    };
    let conflicts = resources::env_conflicts(v, d, &targets);
    for c in &conflicts {
        problems.push(ConfigProblem::EnvVarConflict {
            deployment: name.clone(),
            container: c.container.clone(),
            variable: c.variable.clone(),
            owners: if c.owners.is_empty() {
                "unknown".into()
            } else {
                c.owners.join(", ")
            },
        });
    }
    // Pods that reference a Secret that is missing do not start: configure the Deployment only
    // once the Secret is usable.
    let secret = o.secret.as_ref()?;
    if !problems.is_empty() {
        return None;
    }
    let observed = serde_json::to_value(d).unwrap_or(Value::Null);
    let schema: Schema<'_> = &resources::deployment_schema;
    // What an earlier release set under the operator's old field manager goes, once; what it
    // keeps owning afterwards (the user's envFrom entries) is left as it is.
    if managed::has_manager(&d.metadata, FIELD_MANAGER) {
        let legacy = resources::legacy_release(v, d);
        if !managed::apply_is_noop(&observed, &d.metadata, FIELD_MANAGER, &legacy, schema) {
            releases.push(Release {
                deployment: name.clone(),
                manager: FIELD_MANAGER.to_owned(),
                body: legacy,
            });
        }
    }
    let body = resources::deployment_apply(v, d, &targets, &resources::secret_digest(secret));
    let noop = releases.is_empty()
        && managed::apply_is_noop(&observed, &d.metadata, &v.field_manager, &body, schema);
    (!noop).then_some(body)
}

/// Whether applying `desired` (one of the operator's own objects) would change nothing.
fn unchanged<T: serde::Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>>(
    observed: Option<&T>,
    desired: &T,
) -> bool {
    let (Some(observed), Ok(desired_json)) = (observed, serde_json::to_value(desired)) else {
        return false;
    };
    let Ok(observed_json) = serde_json::to_value(observed) else {
        return false;
    };
    managed::apply_is_noop(
        &observed_json,
        observed.metadata(),
        FIELD_MANAGER,
        &desired_json,
        &resources::owned_object_schema,
    )
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
    /// rows in them (read only for a confirmed [`DeletionPolicy::DropTables`]).
    pub other_users: Vec<String>,
    /// The Deployments that may carry the group's fields (the spec's and `status.deployment`),
    /// those that exist.
    pub deployments: Vec<Deployment>,
}

/// What the clean-up of a deleted group does.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanupPlan {
    /// Give the group's fields in these Deployments back first.
    pub releases: Vec<Release>,
    /// Delete the group's lock and member rows.
    pub delete_rows: bool,
    /// Drop the tables.
    pub drop_tables: bool,
    /// The other users that keep the tables from being dropped.
    pub tables_kept_for: Vec<String>,
    /// `DropTables` without the confirmation annotation: the tables stay.
    pub drop_unconfirmed: bool,
}

/// Decides the clean-up by the deletion policy. `DropTables` never drops tables another group
/// still uses, nor without `hedge.dev/confirm-drop-tables: "true"`: then it deletes only this
/// group's rows. With `hedge.dev/skip-cleanup: "true"` Spanner is not touched at all.
pub fn plan_cleanup(v: &ValidGroup, o: &CleanupObserved) -> CleanupPlan {
    let policy = if v.skip_cleanup {
        DeletionPolicy::Retain
    } else {
        v.deletion_policy
    };
    let drop_unconfirmed = policy == DeletionPolicy::DropTables && !v.drop_tables_confirmed;
    let (delete_rows, drop_tables, tables_kept_for) = match policy {
        DeletionPolicy::Retain => (false, false, Vec::new()),
        DeletionPolicy::DeleteRows => (true, false, Vec::new()),
        DeletionPolicy::DropTables if drop_unconfirmed => (true, false, Vec::new()),
        DeletionPolicy::DropTables if o.other_users.is_empty() => (true, true, Vec::new()),
        DeletionPolicy::DropTables => (true, false, o.other_users.clone()),
    };
    let releases = o
        .deployments
        .iter()
        .filter(|d| managed::has_manager(&d.metadata, &v.field_manager))
        .map(|d| Release {
            deployment: d.metadata.name.clone().unwrap_or_default(),
            manager: v.field_manager.clone(),
            body: resources::deployment_release(d),
        })
        .collect();
    CleanupPlan {
        releases,
        delete_rows,
        drop_tables,
        tables_kept_for,
        drop_unconfirmed,
    }
}
