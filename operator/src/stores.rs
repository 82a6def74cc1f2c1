//! The caches the controller's watches fill (kube-runtime reflector stores): every HedgeGroup it
//! watches, and the ConfigMaps and NetworkPolicies the operator owns. A reconcile reads these
//! instead of asking the API server; only the Secret (never listed or watched, so the operator
//! cannot read every Secret of the cluster) and the referenced Deployment (watched as metadata
//! only) are read by `get`.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;

use crate::crd::HedgeGroup;

/// The readers.
#[derive(Clone)]
pub struct Stores {
    /// Every watched HedgeGroup.
    pub groups: Store<HedgeGroup>,
    /// The operator's ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// The operator's NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
}

/// The writers, taken by the controller's watches (or, in tests, filled from the fake API
/// server).
pub struct Writers {
    /// Every watched HedgeGroup.
    pub groups: Writer<HedgeGroup>,
    /// The operator's ConfigMaps.
    pub config_maps: Writer<ConfigMap>,
    /// The operator's NetworkPolicies.
    pub network_policies: Writer<NetworkPolicy>,
}

/// Empty stores and their writers.
pub fn stores() -> (Stores, Mutex<Option<Writers>>) {
    let (groups, groups_writer) = reflector::store();
    let (config_maps, config_maps_writer) = reflector::store();
    let (network_policies, network_policies_writer) = reflector::store();
    (
        Stores {
            groups,
            config_maps,
            network_policies,
        },
        Mutex::new(Some(Writers {
            groups: groups_writer,
            config_maps: config_maps_writer,
            network_policies: network_policies_writer,
        })),
    )
}

impl Stores {
    /// The cached ConfigMap `name` in `namespace`.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
            .map(|c| c.as_ref().clone())
    }

    /// The cached NetworkPolicy `name` in `namespace`.
    pub fn network_policy(&self, namespace: &str, name: &str) -> Option<NetworkPolicy> {
        self.network_policies
            .get(&ObjectRef::new(name).within(namespace))
            .map(|c| c.as_ref().clone())
    }
}

impl Writers {
    /// Replaces every store's content, as a watch's initial list does (tests).
    pub fn replace(
        &mut self,
        groups: Vec<HedgeGroup>,
        config_maps: Vec<ConfigMap>,
        network_policies: Vec<NetworkPolicy>,
    ) {
        fn fill<K>(writer: &mut Writer<K>, objects: Vec<K>)
        where
            K: kube::Resource<DynamicType = ()> + Clone + 'static,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        fill(&mut self.groups, groups);
        fill(&mut self.config_maps, config_maps);
        fill(&mut self.network_policies, network_policies);
    }
}
