//! The reads a reconcile makes before it decides: the group's objects in Kubernetes (and, for a
//! clean-up, the other users of its tables). Read-only.

use std::collections::BTreeSet;

use hedge::DatabasePath;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::plan::Observed;
use crate::provision::{ProvisionError, Provisioner};
use crate::spec::{self, ValidGroup};
use crate::stores::Stores;

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A Kubernetes read failed.
    #[error("failed to read {kind} `{name}`: {source}")]
    Kube {
        /// The kind read.
        kind: &'static str,
        /// The object (or `*` for a list).
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Spanner read failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

async fn get<K>(
    client: &Client,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<K>, ObserveError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ObserveError::Kube {
            kind,
            name: name.to_owned(),
            source,
        })
}

/// Reads everything [`crate::plan::plan`] needs: the owned ConfigMap and NetworkPolicy from the
/// watch caches, the Secret and the Deployments by `get` (concurrently). `previous` is the
/// Deployment the group configured before (`status.deployment`).
pub async fn observe(
    client: &Client,
    stores: &Stores,
    v: &ValidGroup,
    previous: Option<&str>,
) -> Result<Observed, ObserveError> {
    let ns = v.namespace.as_str();
    let current = v.deployment.as_ref().map(|d| d.name.as_str());
    let deployment = async {
        match current {
            Some(name) => get::<Deployment>(client, ns, "Deployment", name).await,
            None => Ok(None),
        }
    };
    let previous_deployment = async {
        match previous.filter(|p| Some(*p) != current) {
            Some(name) => get::<Deployment>(client, ns, "Deployment", name).await,
            None => Ok(None),
        }
    };
    let (secret, deployment, previous_deployment) = futures::try_join!(
        get::<Secret>(client, ns, "Secret", v.secret.name()),
        deployment,
        previous_deployment,
    )?;
    let deployment_claimants = current
        .map(|name| claimants(stores, ns, name, &v.group))
        .unwrap_or_default();
    Ok(Observed {
        config_map: stores.config_map(ns, &v.config_map),
        secret,
        deployment,
        network_policy: stores.network_policy(ns, &v.network_policy),
        previous_deployment,
        deployment_claimants,
    })
}

/// The groups other than `own` whose spec names Deployment `name` in `namespace`.
fn claimants(stores: &Stores, namespace: &str, name: &str, own: &str) -> BTreeSet<String> {
    stores
        .groups
        .state()
        .iter()
        .filter(|hg| hg.namespace().as_deref() == Some(namespace))
        .filter(|hg| hg.spec.deployment.as_ref().is_some_and(|d| d.name == name))
        .map(|hg| spec::group_name(namespace, &hg.name_any()))
        .filter(|g| g != own)
        .collect()
}

/// Reads the Deployments a clean-up may have to release: the spec's and `status.deployment`.
pub async fn observe_cleanup_deployments(
    client: &Client,
    v: &ValidGroup,
    previous: Option<&str>,
) -> Result<Vec<Deployment>, ObserveError> {
    let mut names: Vec<&str> = v.deployment.iter().map(|d| d.name.as_str()).collect();
    names.extend(previous);
    names.sort_unstable();
    names.dedup();
    let mut found = Vec::new();
    for name in names {
        if let Some(d) = get::<Deployment>(client, &v.namespace, "Deployment", name).await? {
            found.push(d);
        }
    }
    Ok(found)
}

/// The other users of the group's tables, for `DropTables`: every other HedgeGroup the operator
/// watches on the same database and tables, and every other group with rows in the tables.
pub async fn other_table_users(
    stores: &Stores,
    provisioner: &dyn Provisioner,
    v: &ValidGroup,
) -> Result<Vec<String>, ObserveError> {
    let mut other_users = Vec::new();
    let mut known = BTreeSet::from([v.group.clone()]);
    for other in stores.groups.state() {
        let Some(ns) = other.namespace() else {
            continue;
        };
        let group = spec::group_name(&ns, &other.name_any());
        let same_tables = other.spec.database.parse::<DatabasePath>().ok().as_ref()
            == Some(&v.database)
            && other.spec.tables.locks == v.tables.locks
            && other.spec.tables.members == v.tables.members
            && other.spec.tables.schema == v.tables.schema;
        // One being deleted counts too: it may retain its rows, and two groups deleted at
        // once then keep their tables rather than race to drop them.
        if group != v.group && same_tables {
            other_users.push(format!("HedgeGroup {group}"));
        }
        known.insert(group);
    }
    // Groups with rows that no HedgeGroup here accounts for: another cluster, a program
    // outside Kubernetes, or a deleted HedgeGroup whose rows were retained.
    match provisioner.groups_in_tables(&v.target()).await? {
        Some(groups) => other_users.extend(groups.difference(&known).map(|g| format!("group {g}"))),
        None => other_users
            .push("groups that cannot be listed (the provisioner cannot read them)".into()),
    }
    Ok(other_users)
}
