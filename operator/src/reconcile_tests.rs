//! The reconciler against the fake API server of [`crate::fixtures`] (server-side apply with
//! field managers, conflicts, resource versions, finalizers, garbage collection) and a counting
//! fake Spanner. Each test names the behaviour it pins; most would fail on the operator before
//! issue #7 (envFrom taken over, one field manager for every group, a from-anywhere
//! NetworkPolicy, deletions that never finish).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crate::allowlist::Allowlist;
use crate::conditions::{self, CONFIG_READY, DEGRADED, MEMBERS_SEEN, READY, SCHEMA_READY};
use crate::controller::{Context, Error, Settings, error_policy, reconcile};
use crate::crd::{
    CLAIM_ANNOTATION, CONFIRM_DROP_TABLES_ANNOTATION, DeletionPolicy, FINALIZER, HedgeGroup,
    SKIP_CLEANUP_ANNOTATION,
};
use crate::fixtures::{
    self, ApiServerVerifier, FakeProvisioner, FakeSpanner, NS, deployment_path, group_path, leader,
};
use crate::resources::CONFIG_HASH_ANNOTATION;

const HG: &str = "/apis/hedge.dev/v1alpha1/namespaces/testns/hedgegroups";
const SSA: &str = "?&force=true&fieldManager=hedge-operator";

fn fresh() -> (Arc<Context>, ApiServerVerifier, Arc<FakeProvisioner>) {
    fresh_with(Settings::default())
}

fn fresh_with(settings: Settings) -> (Arc<Context>, ApiServerVerifier, Arc<FakeProvisioner>) {
    let spanner = Arc::new(FakeProvisioner::default());
    let (ctx, api, _) = Context::test_with(spanner.clone(), settings);
    (ctx, api, spanner)
}

/// Reconciles the group as stored in the fake, with the watch caches up to date, as the
/// controller would after a watch event.
async fn reconcile_stored(
    ctx: &Arc<Context>,
    api: &ApiServerVerifier,
    name: &str,
) -> Result<Action, Error> {
    ctx.sync_stores(api);
    reconcile(Arc::new(api.group(name)), ctx.clone()).await
}

/// Reconciles until a reconcile writes nothing (at most `limit` times); returns how many ran.
async fn settle(
    ctx: &Arc<Context>,
    api: &ApiServerVerifier,
    names: &[&str],
    limit: usize,
) -> usize {
    for round in 1..=limit {
        api.clear_log();
        for name in names {
            if api.has_group(name) {
                let _ = reconcile_stored(ctx, api, name).await;
            }
        }
        if api.writes().is_empty() {
            return round;
        }
    }
    panic!("still writing after {limit} rounds: {:#?}", api.writes());
}

fn status_patches(api: &ApiServerVerifier) -> Vec<Value> {
    api.exchanges()
        .into_iter()
        .filter(|e| e.method == Method::PATCH && e.uri.contains("/status"))
        .filter_map(|e| e.body)
        .collect()
}

fn event_reasons(api: &ApiServerVerifier) -> Vec<String> {
    api.exchanges()
        .into_iter()
        .filter(|e| e.method == Method::POST && e.uri.contains("/events"))
        .filter_map(|e| e.body?["reason"].as_str().map(str::to_owned))
        .collect()
}

fn event_notes(api: &ApiServerVerifier) -> Vec<String> {
    api.exchanges()
        .into_iter()
        .filter(|e| e.method == Method::POST && e.uri.contains("/events"))
        .filter_map(|e| e.body?["note"].as_str().map(str::to_owned))
        .collect()
}

fn condition(api: &ApiServerVerifier, name: &str, type_: &str) -> (String, String, String) {
    let status = api.group(name).status.unwrap_or_default();
    conditions::find(&status.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn container<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn env_names(d: &Value, c: &str) -> Vec<String> {
    container(d, c)["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

fn hedge_vars(d: &Value, c: &str) -> usize {
    env_names(d, c)
        .iter()
        .filter(|n| n.starts_with("HEDGE_"))
        .count()
}

fn deployment(api: &ApiServerVerifier, name: &str) -> Value {
    api.object(&deployment_path(name)).unwrap()
}

/// The user's Deployment, created by `kubectl apply --server-side` (field manager `kubectl`).
fn create_deployment(api: &ApiServerVerifier, name: &str) {
    api.apply_as("kubectl", &fixtures::deployment_manifest(name), false)
        .unwrap();
}

#[tokio::test]
async fn a_group_that_needs_the_finalizer_gets_it_first_and_nothing_else() {
    let (ctx, api, spanner) = fresh();
    let mut hg = HedgeGroup::test("orders");
    hg.spec.deletion_policy = DeletionPolicy::DeleteRows;
    api.seed(&hg);

    let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();

    assert_eq!(action, Action::await_change());
    let exchanges = api.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    assert_eq!(exchanges[0].method, Method::PATCH);
    assert_eq!(exchanges[0].uri, format!("{HG}/orders?"));
    assert_eq!(
        exchanges[0].body,
        Some(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["hedge.dev/cleanup"]},
        ]))
    );
    assert!(spanner.state().calls.is_empty());
}

#[tokio::test]
async fn a_retained_group_without_a_deployment_needs_no_finalizer_and_loses_a_stale_one() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").finalized());
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(api.group("orders").metadata.finalizers, Some(vec![]));
    assert!(conditions::is_true(
        &api.group("orders").status.unwrap().conditions,
        READY
    ));
    // Deleted, it goes at once: nothing waits on the operator.
    api.delete(&group_path("orders"));
    assert!(!api.has_group("orders"));
}

#[tokio::test]
async fn a_new_group_is_provisioned_and_its_status_patched_ready() {
    let (ctx, api, spanner) = fresh();
    api.seed(&HedgeGroup::test("orders"));

    let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();

    let Some(requeue) = action_delay(&action) else {
        panic!("{action:?}")
    };
    assert!(
        (Duration::from_secs(27)..=Duration::from_secs(33)).contains(&requeue),
        "the resync, jittered: {requeue:?}"
    );
    assert_eq!(
        spanner.state().calls,
        ["group_state", "ensure_schema", "group_state"],
        "a missing table makes the schema"
    );
    let writes = api.writes();
    assert_eq!(
        writes[..3],
        [
            "POST /api/v1/namespaces/testns/secrets?&fieldManager=hedge-operator".to_owned(),
            format!("PATCH /api/v1/namespaces/testns/configmaps/orders-hedge-config{SSA}"),
            format!("PATCH {HG}/orders/status{SSA}"),
        ],
        "{writes:#?}"
    );
    let cm = api
        .object("/api/v1/namespaces/testns/configmaps/orders-hedge-config")
        .unwrap();
    assert_eq!(cm["data"]["HEDGE_GROUP"], "testns/orders");
    assert_eq!(cm["data"]["HEDGE_SPANNER_DATABASE"], fixtures::DB);
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-orders");

    let status = &status_patches(&api)[0]["status"];
    for (type_, value) in [
        (READY, "True"),
        (SCHEMA_READY, "True"),
        (CONFIG_READY, "True"),
        (MEMBERS_SEEN, "Unknown"),
        (DEGRADED, "False"),
    ] {
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap();
        assert_eq!(c["status"], value, "{type_}: {status:#}");
        assert_eq!(c["observedGeneration"], 1);
    }
    assert_eq!(
        status["schemaVersion"],
        hedge::store::schema::SCHEMA_VERSION
    );
    assert_eq!(event_reasons(&api), ["SchemaProvisioned", "Ready"]);
}

fn action_delay(action: &Action) -> Option<Duration> {
    // Action has no getter; its Debug form holds the delay.
    let text = format!("{action:?}");
    let secs: f64 = text
        .split("requeue_after: Some(")
        .nth(1)?
        .split(')')
        .next()?
        .trim_end_matches('s')
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(secs))
}

#[tokio::test]
async fn an_unchanged_group_costs_one_spanner_read_and_no_writes() {
    let (ctx, api, spanner) = fresh();
    api.seed(&HedgeGroup::test("orders"));
    reconcile_stored(&ctx, &api, "orders").await.unwrap();

    spanner.update(|s| {
        s.leader = Some(leader("orders-7d9f-x2", 4));
        s.members = 3;
        s.calls.clear();
    });
    api.clear_log();
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    let status = &status_patches(&api)[0]["status"];
    assert_eq!(status["leader"], "orders-7d9f-x2");
    assert_eq!(status["token"], 4);
    assert_eq!(status["members"], 3);
    assert_eq!(event_reasons(&api), ["LeaderElected"]);
    assert_eq!(condition(&api, "orders", MEMBERS_SEEN).0, "True");

    spanner.update(|s| s.calls.clear());
    api.clear_log();
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(api.writes(), Vec::<String>::new());
    assert_eq!(spanner.state().calls, ["group_state"], "no schema check");
    // A new generation checks the schema again.
    let mut hg = api.group("orders");
    hg.metadata.generation = Some(2);
    api.seed(&hg);
    spanner.update(|s| s.calls.clear());
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(spanner.state().calls, ["group_state", "ensure_schema"]);
}

/// Configures Deployment `web` for group `orders` (retain policy) and returns the context.
async fn configured() -> (Arc<Context>, ApiServerVerifier, Arc<FakeProvisioner>) {
    let (ctx, api, spanner) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    create_deployment(&api, "web");
    settle(&ctx, &api, &["orders"], 5).await;
    (ctx, api, spanner)
}

#[tokio::test]
async fn the_operator_and_the_members_use_the_groups_emulator_host() {
    let (ctx, api, spanner) = fresh();
    let mut hg = HedgeGroup::test("orders");
    hg.spec.spanner.emulator_host = Some("spanner-emulator.testns.svc:9010".into());
    api.seed(&hg);
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(
        spanner.state().last_emulator_host.as_deref(),
        Some("spanner-emulator.testns.svc:9010")
    );
    let cm = api
        .object("/api/v1/namespaces/testns/configmaps/orders-hedge-config")
        .unwrap();
    assert_eq!(
        cm["data"]["HEDGE_SPANNER_EMULATOR_HOST"],
        "spanner-emulator.testns.svc:9010"
    );
}

#[tokio::test]
async fn a_referenced_deployment_gets_one_env_item_per_variable_and_never_its_env_from() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    create_deployment(&api, "web");
    reconcile_stored(&ctx, &api, "orders").await.unwrap(); // the finalizer
    reconcile_stored(&ctx, &api, "orders").await.unwrap();

    let applied = api
        .exchanges()
        .into_iter()
        .find(|e| e.method == Method::PATCH && e.uri.contains("/deployments/web"))
        .unwrap();
    assert_eq!(
        applied.uri,
        "/apis/apps/v1/namespaces/testns/deployments/web?&fieldManager=hedge-operator%2Ftestns.orders",
        "the group's own field manager, not forced"
    );
    let body = applied.body.unwrap();
    assert!(body["metadata"]["resourceVersion"].is_string(), "{body:#}");
    assert_eq!(
        body["metadata"]["annotations"][CLAIM_ANNOTATION],
        "testns/orders"
    );
    let app = container(&body, "app");
    assert_eq!(app.get("envFrom"), None, "envFrom stays the user's");
    assert_eq!(app.get("image"), None, "only the operator's fields");
    let env = app["env"].as_array().unwrap();
    let group = env.iter().find(|e| e["name"] == "HEDGE_GROUP").unwrap();
    assert_eq!(
        group["valueFrom"],
        json!({"configMapKeyRef": {"name": "orders-hedge-config", "key": "HEDGE_GROUP"}})
    );
    let secret = env
        .iter()
        .find(|e| e["name"] == "HEDGE_GROUP_SECRET")
        .unwrap();
    assert_eq!(
        secret["valueFrom"],
        json!({"secretKeyRef": {"name": "orders-hedge-secret", "key": "HEDGE_GROUP_SECRET"}})
    );
    assert_eq!(app["ports"][0]["containerPort"], 7946);
    assert_eq!(
        container(&body, "sidecar"),
        &Value::Null,
        "no container list: the first container only"
    );

    let d = deployment(&api, "web");
    assert_eq!(
        container(&d, "app")["envFrom"],
        json!([{"configMapRef": {"name": "app-settings"}}])
    );
    assert_eq!(
        env_names(&d, "app")[0],
        "RUST_LOG",
        "the user's own variable stays"
    );
    assert_eq!(api.rollouts("web"), 1);

    api.clear_log();
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(api.writes(), Vec::<String>::new());
    assert_eq!(
        api.group("orders").status.unwrap().deployment.as_deref(),
        Some("web")
    );
}

#[tokio::test]
async fn the_owners_next_apply_keeps_the_hedge_variables_and_causes_no_second_rollout() {
    let (ctx, api, _) = configured().await;
    let vars = hedge_vars(&deployment(&api, "web"), "app");
    assert!(vars >= 13, "{vars}");
    assert_eq!(api.rollouts("web"), 1);

    // `kubectl apply --server-side`, `helm upgrade` (Helm 4), Argo CD or Flux (forced) apply the
    // owner's manifest again, with a change of its own.
    let mut manifest = fixtures::deployment_manifest("web");
    manifest["spec"]["replicas"] = json!(5);
    api.apply_as("kustomize-controller", &manifest, true)
        .unwrap();
    let after = deployment(&api, "web");
    assert_eq!(
        hedge_vars(&after, "app"),
        vars,
        "the HEDGE_* variables stay"
    );
    assert_eq!(api.rollouts("web"), 1, "no rollout from the owner's apply");

    assert_eq!(
        settle(&ctx, &api, &["orders"], 3).await,
        1,
        "nothing to write back"
    );
    assert_eq!(api.rollouts("web"), 1, "exactly one rollout in all");
}

/// A Deployment configured by an operator release before issue #7 (envFrom under the field
/// manager `hedge-operator`) is migrated: the group's envFrom entries go, the user's stays, and
/// the group's env items arrive under its own field manager.
#[tokio::test]
async fn a_deployment_configured_by_an_earlier_release_is_migrated() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    create_deployment(&api, "web");
    let old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"template": {
            "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: "0123456789abcdef"}},
            "spec": {"containers": [{"name": "app",
                "envFrom": [{"configMapRef": {"name": "app-settings"}},
                            {"configMapRef": {"name": "orders-hedge-config"}},
                            {"secretRef": {"name": "orders-hedge-secret"}}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}}});
    api.apply_as("hedge-operator", &old, true).unwrap();

    let rounds = settle(&ctx, &api, &["orders"], 5).await;
    assert!(rounds <= 3, "finalizer, migration, then quiet: {rounds}");
    let d = deployment(&api, "web");
    assert_eq!(
        container(&d, "app")["envFrom"],
        json!([{"configMapRef": {"name": "app-settings"}}])
    );
    assert!(hedge_vars(&d, "app") >= 13);
    assert!(env_names(&d, "app").contains(&"POD_NAME".to_owned()));
    assert_ne!(
        d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
        "0123456789abcdef"
    );
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"hedge-operator/testns.orders"),
        "{managers:?}"
    );
}

#[tokio::test]
async fn two_groups_on_one_deployment_converge_with_zero_rollouts_after_the_first() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    api.seed(&HedgeGroup::test("billing").with_deployment("web"));
    create_deployment(&api, "web");

    settle(&ctx, &api, &["orders", "billing"], 6).await;
    assert_eq!(api.rollouts("web"), 1);
    let (status, reason, message) = condition(&api, "billing", CONFIG_READY);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeploymentClaimed")
    );
    assert!(
        message.contains("claimed by HedgeGroup testns/orders"),
        "{message}"
    );
    assert_eq!(condition(&api, "orders", CONFIG_READY).0, "True");

    for _ in 0..3 {
        settle(&ctx, &api, &["orders", "billing"], 1).await;
    }
    assert_eq!(api.rollouts("web"), 1, "no rollout after the first");
}

#[tokio::test]
async fn a_users_own_hedge_variable_is_reported_and_never_overwritten() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    let mut manifest = fixtures::deployment_manifest("web");
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "HEDGE_LEASE_MS", "value": "9000"}]);
    api.apply_as("kubectl", &manifest, false).unwrap();

    settle(&ctx, &api, &["orders"], 4).await;
    let (status, reason, message) = condition(&api, "orders", CONFIG_READY);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "EnvVarConflict")
    );
    assert!(
        message.contains("HEDGE_LEASE_MS") && message.contains("kubectl"),
        "{message}"
    );
    assert_eq!(api.rollouts("web"), 0);
    assert_eq!(
        container(&deployment(&api, "web"), "app")["env"][0]["value"],
        "9000"
    );
}

#[tokio::test]
async fn a_changed_spec_deployment_releases_the_previous_one() {
    let (ctx, api, _) = configured().await;
    create_deployment(&api, "web2");
    let mut hg = api.group("orders");
    hg.spec.deployment.as_mut().unwrap().name = "web2".into();
    hg.metadata.generation = Some(2);
    api.seed(&hg);
    settle(&ctx, &api, &["orders"], 4).await;

    let old = deployment(&api, "web");
    assert_eq!(hedge_vars(&old, "app"), 0, "{:#}", old);
    assert_eq!(env_names(&old, "app"), ["RUST_LOG"]);
    assert!(
        old["metadata"]["annotations"]
            .get(CLAIM_ANNOTATION)
            .is_none()
    );
    assert!(
        old["spec"]["template"]["metadata"]["annotations"]
            .get(CONFIG_HASH_ANNOTATION)
            .is_none()
    );
    assert!(hedge_vars(&deployment(&api, "web2"), "app") >= 13);
    assert_eq!(
        api.group("orders").status.unwrap().deployment.as_deref(),
        Some("web2")
    );
}

#[tokio::test]
async fn fields_the_operator_no_longer_wants_are_removed() {
    // A key an earlier version wrote into the ConfigMap, and a narrowed selector.
    let (ctx, api, _) = fresh();
    let mut hg = HedgeGroup::test("orders");
    hg.spec.selector =
        serde_json::from_value(json!({"matchLabels": {"app": "orders", "tier": "api"}})).unwrap();
    hg.spec.network_policy.enabled = true;
    api.seed(&hg);
    settle(&ctx, &api, &["orders"], 4).await;
    let np_path = "/apis/networking.k8s.io/v1/namespaces/testns/networkpolicies/orders-hedge-peers";
    assert_eq!(
        api.object(np_path).unwrap()["spec"]["podSelector"],
        json!({"matchLabels": {"app": "orders", "tier": "api"}})
    );
    let cm_path = "/api/v1/namespaces/testns/configmaps/orders-hedge-config";
    let mut cm = api.object(cm_path).unwrap();
    cm["data"]["HEDGE_OBSOLETE"] = json!("1");
    for field in [
        "managedFields",
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        cm["metadata"].as_object_mut().unwrap().remove(field);
    }
    api.apply_as("hedge-operator", &cm, true).unwrap();

    let mut hg = api.group("orders");
    hg.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "orders"}})).unwrap();
    hg.metadata.generation = Some(2);
    api.seed(&hg);
    settle(&ctx, &api, &["orders"], 4).await;

    assert_eq!(
        api.object(np_path).unwrap()["spec"]["podSelector"],
        json!({"matchLabels": {"app": "orders"}})
    );
    assert!(
        api.object(cm_path).unwrap()["data"]
            .get("HEDGE_OBSOLETE")
            .is_none()
    );
}

#[tokio::test]
async fn the_network_policy_admits_only_the_peer_port_from_the_members() {
    let (ctx, api, _) = fresh();
    let mut hg = HedgeGroup::test("orders").with_deployment("web");
    hg.spec.network_policy.enabled = true;
    api.seed(&hg);
    create_deployment(&api, "web");
    settle(&ctx, &api, &["orders"], 5).await;
    let np = api
        .object("/apis/networking.k8s.io/v1/namespaces/testns/networkpolicies/orders-hedge-peers")
        .unwrap();
    assert_eq!(
        np["spec"],
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"port": 7946, "protocol": "TCP"}],
            }],
        })
    );
}

#[tokio::test]
async fn a_rotated_secret_rolls_the_pods_once() {
    let (ctx, api, _) = configured().await;
    let hash = |api: &ApiServerVerifier| {
        deployment(api, "web")["spec"]["template"]["metadata"]["annotations"]
            [CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before = hash(&api);
    api.update(
        "/api/v1/namespaces/testns/secrets/orders-hedge-secret",
        "kubectl",
        "",
        |s| s["data"]["HEDGE_GROUP_SECRET"] = json!("cm90YXRlZA=="),
    );
    settle(&ctx, &api, &["orders"], 4).await;
    assert_ne!(hash(&api), before);
    assert_eq!(api.rollouts("web"), 2);
}

#[tokio::test]
async fn deletion_releases_the_deployment_and_waits_for_the_members_before_deleting_rows() {
    let (ctx, api, spanner) = fresh();
    let mut hg = HedgeGroup::test("orders").with_deployment("web");
    hg.spec.deletion_policy = DeletionPolicy::DeleteRows;
    api.seed(&hg);
    create_deployment(&api, "web");
    settle(&ctx, &api, &["orders"], 5).await;
    spanner.update(|s| {
        s.members = 2;
        s.groups.insert("testns/orders".into());
        s.calls.clear();
    });

    api.delete(&group_path("orders"));
    assert!(api.has_group("orders"), "the finalizer holds it");
    let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(
        hedge_vars(&deployment(&api, "web"), "app"),
        0,
        "released first"
    );
    assert_eq!(
        spanner.state().calls,
        ["group_state"],
        "no rows deleted under live members"
    );
    let (_, reason, message) = condition(&api, "orders", DEGRADED);
    assert_eq!(reason, "WaitingForMembers");
    assert!(message.contains("2 live member(s)"), "{message}");

    spanner.update(|s| s.members = 0);
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert!(spanner.state().calls.contains(&"delete_group_rows"));
    assert!(!spanner.state().groups.contains("testns/orders"));
    assert!(
        !api.has_group("orders"),
        "the finalizer went, and the group with it"
    );
    assert!(
        api.object("/api/v1/namespaces/testns/configmaps/orders-hedge-config")
            .is_none(),
        "owned objects collected"
    );
}

async fn deleting(
    policy: DeletionPolicy,
) -> (Arc<Context>, ApiServerVerifier, Arc<FakeProvisioner>) {
    let (ctx, api, spanner) = fresh();
    let mut hg = HedgeGroup::test("orders").finalized();
    hg.spec.deletion_policy = policy;
    api.seed(&hg);
    settle(&ctx, &api, &["orders"], 4).await;
    api.delete(&group_path("orders"));
    api.clear_log();
    spanner.update(|s| s.calls.clear());
    (ctx, api, spanner)
}

#[tokio::test]
async fn deletion_with_a_deleted_database_finishes() {
    let (ctx, api, spanner) = deleting(DeletionPolicy::DropTables).await;
    spanner.update(|s| s.fail_with = Some("DatabaseNotFound"));
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert!(!api.has_group("orders"));
    assert!(event_notes(&api)[0].contains("does not exist: nothing to clean up"));
}

#[tokio::test]
async fn deletion_with_an_unreachable_database_reports_and_finishes_with_skip_cleanup() {
    let (ctx, api, spanner) = deleting(DeletionPolicy::DeleteRows).await;
    spanner.update(|s| s.fail_with = Some("SpannerUnavailable"));
    let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
    assert_eq!(error.reason(), "SpannerUnavailable");
    assert!(api.has_group("orders"));
    let (status, reason, message) = condition(&api, "orders", DEGRADED);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "CleanupFailed")
    );
    assert!(
        !message.contains("injected failure"),
        "no varying text: {message}"
    );
    assert!(event_reasons(&api).contains(&"CleanupFailed".to_owned()));

    // The same failure again writes no new status.
    api.clear_log();
    reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
    assert_eq!(status_patches(&api).len(), 0);

    let mut hg = api.group("orders");
    hg.metadata
        .annotations
        .get_or_insert_default()
        .insert(SKIP_CLEANUP_ANNOTATION.into(), "true".into());
    api.seed(&hg);
    spanner.update(|s| s.calls.clear());
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert!(spanner.state().calls.is_empty(), "Spanner untouched");
    assert!(!api.has_group("orders"));
}

#[tokio::test]
async fn drop_tables_drops_only_when_confirmed_and_unshared() {
    let (ctx, api, spanner) = deleting(DeletionPolicy::DropTables).await;
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert!(!spanner.state().dropped, "not confirmed");
    assert!(event_notes(&api)[0].contains(CONFIRM_DROP_TABLES_ANNOTATION));

    for other in ["hedgegroup", "rows", "none"] {
        let (ctx, api, spanner) = fresh();
        let mut hg = HedgeGroup::test("orders").finalized().deleting();
        hg.spec.deletion_policy = DeletionPolicy::DropTables;
        hg.metadata
            .annotations
            .get_or_insert_default()
            .insert(CONFIRM_DROP_TABLES_ANNOTATION.into(), "true".into());
        api.seed(&hg);
        spanner.update(|s| s.version = Some(hedge::store::schema::SCHEMA_VERSION));
        match other {
            "hedgegroup" => api.seed(&HedgeGroup::test("billing")),
            "rows" => spanner.update(|s| {
                s.groups.insert("elsewhere/jobs".into());
            }),
            _ => {}
        }
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert_eq!(spanner.state().dropped, other == "none", "{other}");
        assert!(!api.has_group("orders"));
    }
}

#[tokio::test]
async fn a_database_outside_the_allowlist_is_refused_with_a_clear_condition() {
    let (ctx, api, spanner) = fresh_with(Settings {
        allowlist: Allowlist(vec!["testns=projects/p/instances/allowed".parse().unwrap()]),
        ..Settings::default()
    });
    api.seed(&HedgeGroup::test("orders"));
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert!(spanner.state().calls.is_empty(), "no Spanner call");
    let (status, reason, message) = condition(&api, "orders", DEGRADED);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "DatabaseNotAllowed")
    );
    assert!(
        message.contains("projects/p/instances/allowed"),
        "{message}"
    );
    assert_eq!(condition(&api, "orders", READY).0, "False");
    assert_eq!(
        api.writes(),
        [
            format!("PATCH {HG}/orders/status{SSA}"),
            "POST /apis/events.k8s.io/v1/namespaces/testns/events?".to_owned()
        ]
    );
}

#[tokio::test]
async fn errors_name_their_cause_in_the_condition_and_the_metric() {
    for reason in ["PermissionDenied", "DatabaseNotFound"] {
        let (ctx, api, spanner) = fresh();
        spanner.update(|s| s.fail_with = Some(reason));
        api.seed(&HedgeGroup::test("orders"));
        let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
        error_policy(Arc::new(api.group("orders")), &error, ctx.clone());
        assert_eq!(condition(&api, "orders", DEGRADED).1, reason);
        assert_eq!(ctx.metrics.failures_with(reason), 1);
        assert_eq!(ctx.metrics.failures_with("SpannerUnavailable"), 0);
    }
}

#[tokio::test]
async fn members_seen_turns_false_when_no_member_joins_within_the_grace_period() {
    let (ctx, api, spanner) = fresh_with(Settings {
        members_grace: Duration::ZERO,
        ..Settings::default()
    });
    api.seed(&HedgeGroup::test("orders"));
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(condition(&api, "orders", MEMBERS_SEEN).0, "Unknown");
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(condition(&api, "orders", MEMBERS_SEEN).1, "NoMembers");
    assert_eq!(condition(&api, "orders", READY).1, "NoMembers");
    spanner.update(|s| s.members = 1);
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(condition(&api, "orders", READY).0, "True");
}

#[tokio::test]
async fn a_failing_api_call_goes_through_the_error_policy_and_bumps_the_failure_metric() {
    let (ctx, api, _) = fresh();
    let hg = HedgeGroup::test("orders");
    api.seed(&hg);
    api.fail_next(Method::PATCH, "/configmaps/", 500);

    let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();

    assert_eq!(error.reason(), "KubeWriteFailed");
    assert!(
        error
            .to_string()
            .contains("failed to apply ConfigMap `orders-hedge-config`"),
        "{error}"
    );
    assert_eq!(condition(&api, "orders", DEGRADED).1, "KubeWriteFailed");
    assert_eq!(
        condition(&api, "orders", DEGRADED).2,
        "failed to apply ConfigMap `orders-hedge-config` (HTTP 500)"
    );
    assert_eq!(event_reasons(&api), ["KubeWriteFailed"]);

    let hg = Arc::new(hg);
    assert_eq!(
        error_policy(hg.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(hg.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(ctx.metrics.failures_with("KubeWriteFailed"), 2);

    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    assert_eq!(
        error_policy(hg, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1)),
        "a success resets the backoff"
    );
}

#[tokio::test]
async fn a_concurrent_edit_of_the_deployment_is_a_conflict_and_a_retry_not_a_revert() {
    let (ctx, api, _) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    create_deployment(&api, "web");
    reconcile_stored(&ctx, &api, "orders").await.unwrap(); // the finalizer
    // The Deployment changes between the operator's read and its apply.
    api.fail_next(Method::PATCH, "/deployments/web", 409);
    let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
    assert_eq!(error.reason(), "Conflict");
    assert_ne!(
        condition(&api, "orders", DEGRADED).1,
        "Conflict",
        "not a degradation"
    );
    settle(&ctx, &api, &["orders"], 3).await;
    assert_eq!(api.rollouts("web"), 1);
}

#[tokio::test]
async fn failures_show_on_the_metrics_endpoint() {
    let spanner = Arc::new(FakeProvisioner::with(FakeSpanner {
        fail_next: true,
        ..FakeSpanner::default()
    }));
    let (ctx, api, registry) = Context::test(spanner);
    let hg = HedgeGroup::test("orders");
    api.seed(&hg);
    let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
    error_policy(Arc::new(hg), &error, ctx.clone());

    let text = crate::server::State::new(registry).metrics_text();
    assert!(
        text.contains("hedge_operator_reconcile_failures_total{reason=\"SpannerUnavailable\"} 1"),
        "{text}"
    );
    assert!(text.contains("hedge_operator_reconciles_total 1"), "{text}");
}

#[tokio::test]
async fn a_missing_crd_is_reported_as_such() {
    let (ctx, api, _) = fresh();
    let groups: kube::Api<HedgeGroup> = kube::Api::all(ctx.client.clone());
    crate::watches::check_crd(&groups).await.unwrap();
    api.fail_next(Method::GET, "/hedgegroups", 404);
    let err = crate::watches::check_crd(&groups).await.unwrap_err();
    assert!(matches!(err, crate::watches::RunError::CrdMissing), "{err}");
}

/// The measurement of issues #3 and #7: a new HedgeGroup reconciled to Ready on the mocked API
/// with a counting fake Spanner, then one more reconcile of the unchanged group, then the whole
/// controller fed 100 status-only changes of the referenced Deployment. Prints one JSON line.
#[tokio::test]
async fn measure_a_new_group_to_ready_and_an_unchanged_reconcile() {
    let (ctx, api, spanner) = fresh();
    api.seed(&HedgeGroup::test("orders").with_deployment("web"));
    create_deployment(&api, "web");

    let start = Instant::now();
    let mut reconciles = 0;
    api.clear_log();
    while !api
        .group("orders")
        .status
        .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    {
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        reconciles += 1;
        assert!(reconciles < 5, "not ready after {reconciles} reconciles");
    }
    let to_ready = start.elapsed();
    let first = api.exchanges();
    let spanner_first = spanner.state();

    api.clear_log();
    spanner.update(|s| s.calls.clear());
    let start = Instant::now();
    reconcile_stored(&ctx, &api, "orders").await.unwrap();
    let again = start.elapsed();
    let second = api.exchanges();
    let spanner_second = spanner.state();

    let count = |xs: &[fixtures::Exchange], write: bool| {
        xs.iter().filter(|e| e.is_write() == write).count()
    };
    let report = json!({
        "measurement": "operator_reconcile_mocked",
        "new_group_to_ready": {
            "reconciles": reconciles,
            "api_calls": first.len(),
            "api_reads": count(&first, false),
            "api_writes": count(&first, true),
            "api_write_requests": first.iter().filter(|e| e.is_write()).map(|e| format!("{} {}", e.method, e.uri.split('?').next().unwrap_or_default())).collect::<Vec<_>>(),
            "spanner_calls": spanner_first.calls.len(),
            "spanner_ddl_statements": spanner_first.ddl_applied,
            "elapsed_ms": to_ready.as_secs_f64() * 1e3,
        },
        "unchanged_reconcile": {
            "api_calls": second.len(),
            "api_reads": count(&second, false),
            "api_writes": count(&second, true),
            "spanner_calls": spanner_second.calls.len(),
            "spanner_ddl_statements": spanner_second.ddl_applied - spanner_first.ddl_applied,
            "elapsed_ms": again.as_secs_f64() * 1e3,
        },
        "reconciles_per_100_deployment_status_changes":
            crate::watch_tests::reconciles_per_100_deployment_status_changes().await,
    });
    println!("{report}");
    assert_eq!(count(&second, true), 0, "{second:#?}");
    assert!(count(&second, false) < 4, "{second:#?}");
    assert_eq!(spanner_second.calls, ["group_state"]);
    assert_eq!(api.group("orders").metadata.namespace.as_deref(), Some(NS));
    assert!(
        api.group("orders")
            .finalizers()
            .contains(&FINALIZER.to_owned())
    );
}
