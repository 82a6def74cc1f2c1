//! The watches that drive the reconciler, and the controller loop.
//!
//! * HedgeGroups: the full objects, cached for the reconciler; a change reconciles when its
//!   generation, finalizers or annotations change (never for the operator's own status writes).
//! * The operator's ConfigMaps and NetworkPolicies (by its label): cached, and a change
//!   reconciles their owner.
//! * Deployments: metadata only (no pod templates of the whole cluster in memory), and only a new
//!   generation reconciles the groups that name the Deployment: the status ticks of a rollout
//!   (replica counts, conditions) never do.
//!
//! Every watch error is logged at warn, counted (`hedge_operator_watch_errors_total`) and
//! reported to [`WatchHealth`], which turns `/readyz` to failing when errors persist.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::controller::{Context, error_policy, reconcile};
use crate::crd::{FIELD_MANAGER, HedgeGroup};
use crate::metrics::Metrics;
use crate::resources::MANAGED_BY_LABEL;
use crate::server::WatchHealth;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HedgeGroup CRD is not installed.
    #[error(
        "the HedgeGroup CRD (hedgegroups.hedge.dev) is not installed in this cluster: install the \
         Helm chart, or run `hedge-operator crd | kubectl apply --server-side -f -`"
    )]
    CrdMissing,
    /// The API server could not be asked.
    #[error("cannot list HedgeGroups: {0}")]
    Kube(#[source] kube::Error),
    /// The watches were started already.
    #[error("the controller of this context is already running")]
    AlreadyRunning,
}

/// Checks that the CRD is installed (listing HedgeGroups answers 404 when it is not).
pub async fn check_crd(api: &Api<HedgeGroup>) -> Result<(), RunError> {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => Err(RunError::CrdMissing),
        Err(e) => Err(RunError::Kube(e)),
    }
}

/// Reports each item of a watch to the health tracker and the metrics; errors at warn.
fn observed<S, T>(
    stream: S,
    watch: &'static str,
    health: Arc<WatchHealth>,
    metrics: Metrics,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    stream.inspect(move |item| match item {
        Ok(_) => health.ok(),
        Err(e) => {
            warn!(watch, "watch failed: {e}");
            metrics.watch_error(watch);
            health.error();
        }
    })
}

/// The groups that name Deployment `name` in `namespace`, now or as the one they configured.
fn groups_of(
    groups: &reflector::Store<HedgeGroup>,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<HedgeGroup>> {
    groups
        .state()
        .into_iter()
        .filter(|hg| hg.namespace() == namespace)
        .filter(|hg| {
            hg.spec.deployment.as_ref().is_some_and(|t| t.name == name)
                || hg
                    .status
                    .as_ref()
                    .and_then(|s| s.deployment.as_deref())
                    .is_some_and(|d| d == name)
        })
        .map(|hg| ObjectRef::from_obj(hg.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` is cancelled: the watches of this module (in
/// `namespace`, or all namespaces) feed the reconciler, at most `settings.concurrency` at once.
/// `started` is called once the CRD check passed (it marks the operator ready).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: CancellationToken,
    health: Arc<WatchHealth>,
    started: impl FnOnce(),
) -> Result<(), RunError> {
    let writers = ctx
        .writers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or(RunError::AlreadyRunning)?;
    let client = ctx.client.clone();
    let (groups, config_maps, policies, deployments) = match namespace {
        Some(ns) => (
            Api::<HedgeGroup>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Deployment>>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    check_crd(&groups).await?;
    started();

    let metrics = ctx.metrics.clone();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let group_changes = predicates::generation
        .combine(predicates::finalizers)
        .combine(predicates::annotations);
    let group_stream = observed(
        reflector::reflector(
            writers.groups,
            watcher(groups, watcher::Config::default().any_semantic()),
        ),
        "hedgegroups",
        health.clone(),
        metrics.clone(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(group_changes, Default::default());
    let config_map_stream = observed(
        reflector::reflector(writers.config_maps, watcher(config_maps, owned.clone())),
        "configmaps",
        health.clone(),
        metrics.clone(),
    )
    .default_backoff()
    .touched_objects();
    let policy_stream = observed(
        reflector::reflector(writers.network_policies, watcher(policies, owned)),
        "networkpolicies",
        health.clone(),
        metrics.clone(),
    )
    .default_backoff()
    .touched_objects();
    let deployment_stream = observed(
        watcher(deployments, watcher::Config::default()),
        "deployments",
        health.clone(),
        metrics.clone(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());

    let store = ctx.stores.groups.clone();
    Controller::for_stream(group_stream, ctx.stores.groups.clone())
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency))
        .owns_stream(config_map_stream)
        .owns_stream(policy_stream)
        .watches_stream(
            deployment_stream,
            move |d: PartialObjectMeta<Deployment>| groups_of(&store, d.namespace(), &d.name_any()),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((object, _)) => debug!(%object, "reconciled"),
                Err(controller::Error::QueueError(e)) => {
                    warn!("controller queue error: {e}");
                    metrics.watch_error("queue");
                    health.error();
                }
                Err(e) => debug!("controller: {e}"),
            }
            std::future::ready(())
        })
        .await;
    Ok(())
}
