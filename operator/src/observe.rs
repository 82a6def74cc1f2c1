//! The reads a reconcile makes before it decides: the group's objects in Kubernetes (and, for a
//! clean-up, the other users of its tables). Read-only.

use std::collections::BTreeSet;

use hedge::DatabasePath;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::HedgeGroup;
use crate::plan::{CleanupObserved, Observed};
use crate::provision::{ProvisionError, Provisioner};
use crate::spec::{self, ValidGroup};

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

/// Reads everything [`crate::plan::plan`] needs, concurrently.
pub async fn observe(client: &Client, v: &ValidGroup) -> Result<Observed, ObserveError> {
    let ns = v.namespace.as_str();
    let deployment = async {
        match &v.deployment {
            Some(d) => get::<Deployment>(client, ns, "Deployment", &d.name).await,
            None => Ok(None),
        }
    };
    let (config_map, secret, deployment, network_policy) = futures::try_join!(
        get::<ConfigMap>(client, ns, "ConfigMap", &v.config_map),
        get::<Secret>(client, ns, "Secret", v.secret.name()),
        deployment,
        get::<NetworkPolicy>(client, ns, "NetworkPolicy", &v.network_policy),
    )?;
    Ok(Observed {
        config_map,
        secret,
        deployment,
        network_policy,
    })
}

/// Reads everything [`crate::plan::plan_cleanup`] needs. The other users of the tables are read
/// only when the policy may drop them: every other HedgeGroup on the same database and tables,
/// and every other group with rows in the tables.
pub async fn observe_cleanup(
    client: &Client,
    provisioner: &dyn Provisioner,
    v: &ValidGroup,
) -> Result<CleanupObserved, ObserveError> {
    let deployment = match &v.deployment {
        Some(d) => get::<Deployment>(client, &v.namespace, "Deployment", &d.name).await?,
        None => None,
    };
    let mut other_users = Vec::new();
    if v.deletion_policy == crate::crd::DeletionPolicy::DropTables {
        let all = Api::<HedgeGroup>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| ObserveError::Kube {
                kind: "HedgeGroup",
                name: "*".into(),
                source,
            })?;
        let mut known = BTreeSet::from([v.group.clone()]);
        for other in all.items {
            let Some(ns) = other.namespace() else {
                continue;
            };
            let name = other.name_any();
            let group = spec::group_name(&ns, &name);
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
        match provisioner.groups_in_tables(&v.database, &v.tables).await? {
            Some(groups) => {
                other_users.extend(groups.difference(&known).map(|g| format!("group {g}")))
            }
            None => other_users
                .push("groups that cannot be listed (the provisioner cannot read them)".into()),
        }
    }
    Ok(CleanupObserved {
        other_users,
        deployment,
    })
}
