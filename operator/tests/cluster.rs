//! Against a real cluster with the chart installed (`tests/cluster/e2e.sh` sets one up: kind or
//! k3d, the Spanner emulator in the cluster, the operator, the demo image). Ignored everywhere
//! else; run with `cargo test -p hedge-operator --test cluster -- --ignored`.
//!
//! Environment: `HEDGE_E2E_NAMESPACE` (default `hedge-e2e`, must exist), `HEDGE_E2E_DATABASE`
//! (default `projects/e2e/instances/e2e/databases/hedge`), `HEDGE_E2E_MEMBER_IMAGE` (default
//! `hedge-demo:e2e`), `HEDGE_E2E_EMULATOR_HOST` (the members' `SPANNER_EMULATOR_HOST`, default
//! `spanner-emulator.hedge-e2e.svc.cluster.local:9010`; empty for real Spanner),
//! `HEDGE_E2E_TIMEOUT_SECS` (default 300).

use std::time::Duration;

use hedge_operator::conditions::{self, READY};
use hedge_operator::crd::{FINALIZER, HedgeGroup};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions::is_deleted};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn timeout() -> Duration {
    Duration::from_secs(env("HEDGE_E2E_TIMEOUT_SECS", "300").parse().unwrap_or(300))
}

async fn wait_for(
    api: &Api<HedgeGroup>,
    name: &str,
    what: &str,
    cond: impl Fn(&HedgeGroup) -> bool,
) -> HedgeGroup {
    let found = tokio::time::timeout(
        timeout(),
        await_condition(api.clone(), name, move |hg: Option<&HedgeGroup>| {
            hg.is_some_and(&cond)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("HedgeGroup {name}: not {what} within {:?}", timeout()))
    .unwrap();
    found.unwrap_or_else(|| panic!("HedgeGroup {name} vanished while waiting for {what}"))
}

/// Applies a member Deployment (the demo workload, which links hedge) and a HedgeGroup that
/// configures it; returns the group's API.
async fn apply_group(client: &Client, ns: &str, name: &str, policy: &str) -> Api<HedgeGroup> {
    let ssa = PatchParams::apply("hedge-e2e").force();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let emulator = env(
        "HEDGE_E2E_EMULATOR_HOST",
        "spanner-emulator.hedge-e2e.svc.cluster.local:9010",
    );
    let member_env = if emulator.is_empty() {
        json!([])
    } else {
        json!([{"name": "SPANNER_EMULATOR_HOST", "value": emulator}])
    };
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "member",
                    "image": env("HEDGE_E2E_MEMBER_IMAGE", "hedge-demo:e2e"),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["member"],
                    "env": member_env,
                }]},
            },
        },
    });
    deployments
        .patch(name, &ssa, &Patch::Apply(&deployment))
        .await
        .unwrap();
    let groups: Api<HedgeGroup> = Api::namespaced(client.clone(), ns);
    let group = json!({
        "apiVersion": "hedge.dev/v1alpha1", "kind": "HedgeGroup",
        "metadata": {"name": name, "annotations": {"hedge.dev/confirm-drop-tables": "true"}},
        "spec": {
            "database": env("HEDGE_E2E_DATABASE", "projects/e2e/instances/e2e/databases/hedge"),
            "tables": {"locks": format!("{}_locks", name.replace('-', "_")),
                       "members": format!("{}_members", name.replace('-', "_")),
                       "schema": format!("{}_schema", name.replace('-', "_"))},
            "election": {"leaseMs": 3000},
            "deployment": {"name": name},
            "networkPolicy": {"enabled": true},
            "deletionPolicy": policy,
        },
    });
    let mut group = group;
    if !emulator.is_empty() {
        group["spec"]["spanner"] = json!({"emulatorHost": emulator});
    }
    groups
        .patch(name, &ssa, &Patch::Apply(&group))
        .await
        .unwrap();
    groups
}

#[tokio::test]
#[ignore = "needs cluster (kind or k3d with the chart installed)"]
async fn an_applied_group_becomes_ready_and_shows_its_leader() {
    let client = Client::try_default().await.unwrap();
    let ns = env("HEDGE_E2E_NAMESPACE", "hedge-e2e");
    let groups = apply_group(&client, &ns, "e2e-ready", "DeleteRows").await;

    let hg = wait_for(&groups, "e2e-ready", "Ready", |hg| {
        hg.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    })
    .await;
    assert!(hg.finalizers().iter().any(|f| f == FINALIZER));
    let config: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = config.get("e2e-ready-hedge-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["HEDGE_GROUP"], format!("{ns}/e2e-ready"));

    let hg = wait_for(&groups, "e2e-ready", "led", |hg| {
        hg.status
            .as_ref()
            .is_some_and(|s| s.leader.is_some() && s.token.is_some())
    })
    .await;
    let status = hg.status.unwrap();
    assert!(
        status.leader.unwrap().starts_with("e2e-ready-"),
        "the leader is one of the pods"
    );
    assert!(status.members.unwrap_or(0) >= 1);

    groups
        .delete("e2e-ready", &DeleteParams::default())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    deployments
        .delete("e2e-ready", &DeleteParams::default())
        .await
        .unwrap();
}

fn hedge_vars(d: &Deployment) -> usize {
    d.spec.template.spec.as_ref().map_or(0, |s| {
        s.containers[0]
            .env
            .iter()
            .flatten()
            .filter(|e| e.name.starts_with("HEDGE_"))
            .count()
    })
}

fn revision(d: &Deployment) -> String {
    d.annotations()
        .get("deployment.kubernetes.io/revision")
        .cloned()
        .unwrap_or_default()
}

/// The Deployment's owner applies its manifest again, with a change of its own: one rollout,
/// and the operator's variables stay (they are fields of the group's own field manager).
#[tokio::test]
#[ignore = "needs cluster (kind or k3d with the chart installed)"]
async fn the_owners_next_apply_keeps_the_hedge_variables_and_rolls_once() {
    let client = Client::try_default().await.unwrap();
    let ns = env("HEDGE_E2E_NAMESPACE", "hedge-e2e");
    let name = "e2e-owner";
    let groups = apply_group(&client, &ns, name, "Retain").await;
    wait_for(&groups, name, "Ready", |hg| {
        hg.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let configured = deployments.get(name).await.unwrap();
    let vars = hedge_vars(&configured);
    assert!(vars >= 13, "{vars}");

    let ssa = PatchParams::apply("hedge-e2e").force();
    // The same manifest as before (the emulator variable included), with one change.
    let mut member_env = configured.spec.template.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "SPANNER_EMULATOR_HOST")
        .map(|e| json!({"name": e.name, "value": e.value}))
        .collect::<Vec<_>>();
    member_env.push(json!({"name": "RUST_LOG", "value": "debug"}));
    let owner = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "member",
                    "image": env("HEDGE_E2E_MEMBER_IMAGE", "hedge-demo:e2e"),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["member"],
                    "env": member_env,
                }]},
            },
        },
    });
    deployments
        .patch(name, &ssa, &Patch::Apply(&owner))
        .await
        .unwrap();
    // Time for the operator to react to the new generation (wrongly, by rolling again).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = deployments.get(name).await.unwrap();
    assert_eq!(hedge_vars(&after), vars, "the HEDGE_* variables stay");
    let before: u64 = revision(&configured).parse().unwrap_or(0);
    assert_eq!(
        revision(&after),
        (before + 1).to_string(),
        "exactly one rollout"
    );

    groups.delete(name, &DeleteParams::default()).await.unwrap();
    deployments
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs cluster (kind or k3d with the chart installed)"]
async fn a_deleted_group_runs_its_finalizer_and_goes_away() {
    let client = Client::try_default().await.unwrap();
    let ns = env("HEDGE_E2E_NAMESPACE", "hedge-e2e");
    let groups = apply_group(&client, &ns, "e2e-delete", "DropTables").await;
    let hg = wait_for(&groups, "e2e-delete", "finalized", |hg| {
        hg.finalizers().iter().any(|f| f == FINALIZER) && hg.status.is_some()
    })
    .await;
    let uid = hg.uid().unwrap();

    groups
        .delete("e2e-delete", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        timeout(),
        await_condition(groups.clone(), "e2e-delete", is_deleted(&uid)),
    )
    .await
    .expect("the finalizer was not removed in time")
    .unwrap();

    // The operator gave back its fields of the Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let d = deployments.get("e2e-delete").await.unwrap();
    let container = &d.spec.template.spec.unwrap().containers[0];
    assert_eq!(container.env_from, None, "{container:?}");
    assert!(
        container
            .env
            .iter()
            .flatten()
            .all(|e| e.name == "SPANNER_EMULATOR_HOST"),
        "{container:?}"
    );
    deployments
        .delete("e2e-delete", &DeleteParams::default())
        .await
        .unwrap();
}
