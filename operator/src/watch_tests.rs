//! The whole controller ([`crate::watches::run`]: its watches, caches, predicates and queue)
//! against the fake API server's lists and watches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conditions::{self, READY};
use crate::controller::Context;
use crate::crd::HedgeGroup;
use crate::fixtures::{self, ApiServerVerifier, FakeProvisioner, deployment_path};
use crate::server::WatchHealth;
use crate::watches;

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "not {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no reconcile has started for `quiet`.
async fn wait_quiet(ctx: &Context, quiet: Duration) {
    let mut last = ctx.metrics.reconciles_started();
    let mut since = Instant::now();
    let start = Instant::now();
    while since.elapsed() < quiet {
        assert!(start.elapsed() < Duration::from_secs(20), "never quiet");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = ctx.metrics.reconciles_started();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

fn start(
    api_ctx: (Arc<Context>, ApiServerVerifier),
) -> (
    Arc<Context>,
    ApiServerVerifier,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), watches::RunError>>,
) {
    let (ctx, api) = api_ctx;
    let shutdown = CancellationToken::new();
    let health = Arc::new(WatchHealth::default());
    let task = tokio::spawn(watches::run(
        ctx.clone(),
        None,
        shutdown.clone(),
        health,
        || {},
    ));
    (ctx, api, shutdown, task)
}

/// How many reconciles 100 status-only changes of a referenced Deployment (a rollout's replica
/// counts and conditions) cause, with the whole controller running against the fake. A spec
/// change after them must reconcile once, which shows the watch delivered everything before it;
/// that one is not counted. (Without the generation predicate on the Deployment watch this was
/// 82 here: the queue merges only the changes that arrive while a reconcile is pending.)
pub(crate) async fn reconciles_per_100_deployment_status_changes() -> u64 {
    let (ctx, api, _) = Context::test(Arc::new(FakeProvisioner::default()));
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    api.apply_as("kubectl", &fixtures::deployment_manifest("web"), false)
        .unwrap();
    let (ctx, api, shutdown, task) = start((ctx, api));

    wait_for("Ready", Duration::from_secs(20), || {
        api.group("orders")
            .status
            .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    })
    .await;
    wait_quiet(&ctx, Duration::from_millis(300)).await;
    assert_eq!(api.rollouts("web"), 1);

    let before = ctx.metrics.reconciles_started();
    for i in 0..100 {
        api.update(
            &deployment_path("web"),
            "kube-controller-manager",
            "status",
            |d| {
                d["status"] = json!({"observedGeneration": 2, "replicas": 3,
                                     "readyReplicas": i % 4, "updatedReplicas": 3});
            },
        );
        // Spread out as a rollout's status ticks are, so the queue cannot merge them.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A spec change of the owner's after them: exactly one reconcile.
    api.update(&deployment_path("web"), "kubectl", "", |d| {
        d["spec"]["replicas"] = json!(4);
    });
    wait_for(
        "reconciled after the spec change",
        Duration::from_secs(20),
        || ctx.metrics.reconciles_started() > before,
    )
    .await;
    wait_quiet(&ctx, Duration::from_millis(300)).await;
    let per_100 = ctx.metrics.reconciles_started() - before - 1;
    assert_eq!(api.rollouts("web"), 1, "no rollout");

    // The Deployment watch is metadata only.
    let deployment_watch = api
        .exchanges()
        .into_iter()
        .find(|e| e.uri.starts_with("/apis/apps/v1/deployments?") && e.uri.contains("watch=true"))
        .expect("a Deployment watch");
    assert!(deployment_watch.uri.contains("resourceVersion="));

    shutdown.cancel();
    task.await.unwrap().unwrap();
    per_100
}

#[tokio::test]
async fn status_changes_of_a_referenced_deployment_reconcile_nothing() {
    assert_eq!(reconciles_per_100_deployment_status_changes().await, 0);
}

/// The group's own status writes never reconcile it again (a generation predicate), so a
/// failing group is retried by its backoff, not by its status.
#[tokio::test]
async fn a_group_settles_without_reconciling_on_its_own_status_writes() {
    let (ctx, api, _) = Context::test(Arc::new(FakeProvisioner::default()));
    api.seed(&HedgeGroup::test("orders"));
    let (ctx, api, shutdown, task) = start((ctx, api));
    wait_for("Ready", Duration::from_secs(20), || {
        api.group("orders")
            .status
            .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    })
    .await;
    wait_quiet(&ctx, Duration::from_millis(300)).await;
    // One reconcile: the status write, the ConfigMap and the Secret it made trigger none that
    // changes anything (the owned ConfigMap's creation may wake it once more).
    assert!(
        ctx.metrics.reconciles_started() <= 2,
        "{}",
        ctx.metrics.reconciles_started()
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
