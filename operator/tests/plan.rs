//! The pure reconcile steps on YAML fixtures (`tests/fixtures/*.yaml`): each fixture is a
//! HedgeGroup and the objects the operator would observe next to it.

use hedge_operator::crd::{DeletionPolicy, HedgeGroup};
use hedge_operator::managed;
use hedge_operator::plan::{self, CleanupObserved, ConfigProblem, NetworkPolicyStep, Observed};
use hedge_operator::resources::{self, CONFIG_HASH_ANNOTATION, PEER_PORT_NAME};
use hedge_operator::spec::{self, ValidGroup};
use serde::Deserialize;
use serde_json::{Value, json};

/// The fixture's HedgeGroup, validated, and what it observes.
fn fixture(name: &str) -> (ValidGroup, Observed) {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut group = None;
    let mut observed = Observed::default();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = Value::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().map(str::to_owned);
        match kind.as_deref() {
            Some("HedgeGroup") => group = Some(parse(&path, value)),
            Some("ConfigMap") => observed.config_map = Some(parse(&path, value)),
            Some("Secret") => observed.secret = Some(parse(&path, value)),
            Some("Deployment") => observed.deployment = Some(parse(&path, value)),
            Some("NetworkPolicy") => observed.network_policy = Some(parse(&path, value)),
            other => panic!("{path}: unexpected kind {other:?}"),
        }
    }
    let group: HedgeGroup = group.unwrap_or_else(|| panic!("{path} has no HedgeGroup"));
    (spec::validate(&group).unwrap(), observed)
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn a_new_group_gets_a_config_map_and_a_generated_secret() {
    let (v, observed) = fixture("new-group");
    assert_eq!(v.group, "shop/orders");
    let plan = plan::plan(&v, &observed);
    assert!(plan.create_secret);
    assert!(plan.problems.is_empty());
    assert_eq!(plan.deployment, None);
    assert_eq!(plan.network_policy, NetworkPolicyStep::Keep);
    assert_eq!(plan.writes(), 2);

    let cm = to_json(plan.config_map.as_ref().unwrap());
    assert_eq!(cm["metadata"]["name"], "orders-hedge-config");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "hedge-operator"
    );
    assert_eq!(
        cm["metadata"]["ownerReferences"],
        json!([{"apiVersion": "hedge.dev/v1alpha1", "kind": "HedgeGroup", "name": "orders", "uid": "u-1",
                "controller": true}])
    );
    // Exactly the variables the members read, rendered by the client crate itself.
    let data = cm["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    let mut expected = hedge::config::CONFIG_MAP_VARIABLES.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let vars: std::collections::BTreeMap<String, String> =
        serde_json::from_value(cm["data"].clone()).unwrap();
    let config = hedge::Config::from_vars(|k| vars.get(k).cloned()).unwrap();
    assert_eq!(config.group, "shop/orders");
    assert_eq!(
        config.database.unwrap().to_string(),
        "projects/p/instances/i/databases/d"
    );
}

#[test]
fn an_unchanged_group_plans_no_writes() {
    let (v, observed) = fixture("unchanged-group");
    let plan = plan::plan(&v, &observed);
    assert_eq!(plan.writes(), 0, "{plan:#?}");
    assert!(plan.problems.is_empty());
}

#[test]
fn changed_timings_rewrite_only_the_config_map() {
    let (v, observed) = fixture("changed-timings");
    let plan = plan::plan(&v, &observed);
    assert_eq!(plan.writes(), 1);
    assert!(!plan.create_secret, "the Secret is never rewritten");
    let data = to_json(plan.config_map.as_ref().unwrap())["data"].clone();
    // Unset timings derive from the lease the way the client's defaults do.
    let derived = hedge::ElectionTimings::from_lease(std::time::Duration::from_secs(3));
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    assert_eq!(data["HEDGE_LEASE_MS"], "3000");
    assert_eq!(data["HEDGE_RENEW_INTERVAL_MS"], ms(derived.renew_interval));
    assert_eq!(data["HEDGE_POLL_INTERVAL_MS"], ms(derived.poll_interval));
    assert_eq!(data["HEDGE_SAFETY_MARGIN_MS"], ms(derived.safety_margin));
}

#[test]
fn a_referenced_deployment_gets_only_the_operators_fields() {
    let (v, observed) = fixture("referenced-deployment");
    let plan = plan::plan(&v, &observed);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let (name, body) = plan.deployment.clone().unwrap();
    assert_eq!(name, "orders-api");
    assert_eq!(body["apiVersion"], "apps/v1");
    assert_eq!(
        body["spec"].as_object().unwrap().len(),
        1,
        "only the pod template: {body:#}"
    );
    assert_eq!(
        body["metadata"]["annotations"]["hedge.dev/group"],
        "shop/orders"
    );
    let template = &body["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
            .as_str()
            .unwrap()
            .len(),
        16
    );
    let containers = template["spec"]["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["app", "worker"],
        "the sidecar is not named and stays untouched"
    );

    let app = &containers[0];
    assert_eq!(app.get("image"), None);
    assert_eq!(app.get("envFrom"), None, "envFrom stays the user's");
    let env: Vec<(&str, &Value)> = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["valueFrom"]))
        .collect();
    // Every variable the members read, each from the ConfigMap key of its name...
    for var in hedge::config::CONFIG_MAP_VARIABLES {
        let (_, from) = env.iter().find(|(n, _)| n == var).unwrap();
        assert_eq!(
            **from,
            json!({"configMapKeyRef": {"name": "orders-hedge-config", "key": var}})
        );
    }
    // ...the group secret from the Secret, and the pod's identity from the downward API.
    let tail: Vec<(&str, &Value)> = env[env.len() - 4..].to_vec();
    assert_eq!(
        tail,
        [
            (
                "HEDGE_GROUP_SECRET",
                &json!({"secretKeyRef": {"name": "orders-hedge-secret", "key": "HEDGE_GROUP_SECRET"}})
            ),
            (
                "POD_NAME",
                &json!({"fieldRef": {"fieldPath": "metadata.name"}})
            ),
            (
                "POD_UID",
                &json!({"fieldRef": {"fieldPath": "metadata.uid"}})
            ),
            (
                "POD_IP",
                &json!({"fieldRef": {"fieldPath": "status.podIP"}})
            ),
        ]
    );
    assert_eq!(
        app.get("ports"),
        None,
        "7946 is already declared there under another name"
    );
    assert_eq!(
        containers[1]["ports"],
        json!([{"name": PEER_PORT_NAME, "containerPort": 7946, "protocol": "TCP"}])
    );

    // The NetworkPolicy selects the Deployment's pods and admits the peer port from them, and
    // nothing else.
    let NetworkPolicyStep::Apply(np) = &plan.network_policy else {
        panic!("expected a NetworkPolicy: {:?}", plan.network_policy)
    };
    let np = to_json(np.as_ref());
    assert_eq!(np["metadata"]["name"], "orders-hedge-peers");
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"app": "orders-api"}})
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "orders-api"}}}],
                "ports": [{"port": 7946, "protocol": "TCP"}]}]),
        "one rule: members to the peer port; never a from-anywhere rule"
    );
}

/// The Deployment as the API server holds it after `body` was applied by `manager`: merged, with
/// the manager's fields recorded.
fn applied(deployment: &Value, body: &Value, manager: &str) -> Value {
    let mut d = deployment.clone();
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    for fragment in body["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        let c = containers
            .iter_mut()
            .find(|c| c["name"] == fragment["name"])
            .unwrap();
        for (k, value) in fragment.as_object().unwrap() {
            if k == "ports" && c.get("ports").is_some() {
                continue;
            }
            c[k] = value.clone();
        }
    }
    d["spec"]["template"]["metadata"]["annotations"] =
        body["spec"]["template"]["metadata"]["annotations"].clone();
    d["metadata"]["annotations"] = body["metadata"]["annotations"].clone();
    let fields = managed::applied_fields(body, &resources::deployment_schema);
    d["metadata"]["managedFields"] = json!([{"manager": manager, "operation": "Apply",
        "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields.to_fields_v1()}]);
    d
}

#[test]
fn a_configured_deployment_is_not_applied_again_and_a_config_change_changes_its_hash() {
    let (v, mut observed) = fixture("referenced-deployment");
    let (_, body) = plan::plan(&v, &observed).deployment.unwrap();
    let deployment = applied(
        &to_json(observed.deployment.as_ref().unwrap()),
        &body,
        &v.field_manager,
    );
    observed.deployment = Some(serde_json::from_value(deployment.clone()).unwrap());
    assert_eq!(plan::plan(&v, &observed).deployment, None);

    let (mut changed_v, _) = fixture("referenced-deployment");
    changed_v.config.election =
        hedge::ElectionTimings::from_lease(std::time::Duration::from_secs(2));
    let (_, changed) = plan::plan(&changed_v, &observed)
        .deployment
        .expect("a new hash rolls the pods");
    assert_ne!(
        changed["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
        body["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    );

    // A rotated Secret changes the hash too.
    let mut rotated = observed.clone();
    let mut secret = rotated.secret.clone().unwrap();
    secret.data.as_mut().unwrap().insert(
        "HEDGE_GROUP_SECRET".into(),
        k8s_openapi::ByteString(b"rotated".to_vec()),
    );
    rotated.secret = Some(secret);
    let (_, after_rotation) = plan::plan(&v, &rotated).deployment.expect("rolls the pods");
    assert_ne!(
        after_rotation["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
        body["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    );

    // A field the operator owns but no longer wants (an env item of an older release) is a
    // difference: the apply that removes it must be sent.
    let mut extra = deployment.clone();
    let fields = &mut extra["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
        ["f:containers"]["k:{\"name\":\"app\"}"]["f:env"];
    fields["k:{\"name\":\"HEDGE_OBSOLETE\"}"] = json!({".": {}, "f:name": {}, "f:value": {}});
    observed.deployment = Some(serde_json::from_value(extra).unwrap());
    assert!(plan::plan(&v, &observed).deployment.is_some());
}

#[test]
fn a_missing_deployment_is_reported_and_the_rest_is_still_written() {
    let (v, observed) = fixture("deployment-missing");
    let plan = plan::plan(&v, &observed);
    assert_eq!(
        plan.problems,
        [ConfigProblem::DeploymentNotFound("orders-api".into())]
    );
    assert_eq!(plan.problems[0].reason(), "DeploymentNotFound");
    assert!(plan.create_secret && plan.config_map.is_some());
}

#[test]
fn a_missing_existing_secret_is_reported_and_holds_back_the_deployment() {
    let (v, observed) = fixture("existing-secret-missing");
    let plan = plan::plan(&v, &observed);
    assert_eq!(
        plan.problems,
        [ConfigProblem::SecretNotFound("orders-peers".into())]
    );
    assert!(!plan.create_secret, "an existing Secret is never generated");
    assert_eq!(plan.deployment, None);
}

#[test]
fn a_disabled_network_policy_is_deleted() {
    let (v, observed) = fixture("network-policy-disabled");
    assert_eq!(
        plan::plan(&v, &observed).network_policy,
        NetworkPolicyStep::Delete
    );
    let (v, _) = fixture("network-policy-disabled");
    assert_eq!(
        plan::plan(&v, &Observed::default()).network_policy,
        NetworkPolicyStep::Keep
    );
}

#[test]
fn deletion_follows_each_policy() {
    let (mut v, observed) = fixture("deleted-group");
    let deployments = vec![observed.deployment.clone().unwrap()];
    let others = vec!["HedgeGroup shop/billing".to_owned()];
    // (policy, confirmed, skip-cleanup, other users) -> (delete rows, drop tables)
    let cases = [
        (DeletionPolicy::Retain, true, false, vec![], (false, false)),
        (
            DeletionPolicy::DeleteRows,
            true,
            false,
            vec![],
            (true, false),
        ),
        (
            DeletionPolicy::DropTables,
            true,
            false,
            vec![],
            (true, true),
        ),
        (
            DeletionPolicy::DropTables,
            false,
            false,
            vec![],
            (true, false),
        ),
        (
            DeletionPolicy::DropTables,
            true,
            false,
            others.clone(),
            (true, false),
        ),
        (
            DeletionPolicy::DropTables,
            true,
            true,
            vec![],
            (false, false),
        ),
    ];
    for (policy, confirmed, skip, other_users, (delete_rows, drop_tables)) in cases {
        v.deletion_policy = policy;
        v.drop_tables_confirmed = confirmed;
        v.skip_cleanup = skip;
        let cleanup = plan::plan_cleanup(
            &v,
            &CleanupObserved {
                other_users: other_users.clone(),
                deployments: deployments.clone(),
            },
        );
        assert_eq!(
            (cleanup.delete_rows, cleanup.drop_tables),
            (delete_rows, drop_tables),
            "{policy:?} confirmed={confirmed} skip={skip}"
        );
        assert_eq!(
            cleanup.drop_unconfirmed,
            policy == DeletionPolicy::DropTables && !confirmed && !skip
        );

        // The Deployment gets the group's fields back by an empty apply under the group's field
        // manager, conditional on the version read: the user's own fields are untouched.
        assert_eq!(cleanup.releases.len(), 1);
        let release = &cleanup.releases[0];
        assert_eq!(release.deployment, "orders-api");
        assert_eq!(release.manager, "hedge-operator/shop.orders");
        assert_eq!(
            release.body,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "orders-api", "namespace": "shop", "resourceVersion": "4711"}})
        );
    }
}

#[test]
fn invalid_specs_say_what_to_change() {
    let cases = [
        (
            "{database: projects/p}",
            "expected projects/<project>/instances/<instance>/databases/<database>",
        ),
        (
            "{database: projects/p/instances/i/databases/d, tables: {locks: 'a;b'}}",
            "invalid table name `a;b`",
        ),
        (
            "{database: projects/p/instances/i/databases/d, tables: {locks: x, members: X}}",
            "must have different names",
        ),
        (
            "{database: projects/p/instances/i/databases/d, election: {leaseMs: 1000, renewIntervalMs: 1000}}",
            "renew interval (1s) must be below lease (1s)",
        ),
        (
            "{database: projects/p/instances/i/databases/d, election: {leaseMs: 1000, safetyMarginMs: 1500}}",
            "safety margin (1.5s) must be below lease (1s)",
        ),
        (
            "{database: projects/p/instances/i/databases/d, election: {leaseMs: 0}}",
            "spec.election.leaseMs must be at least 1",
        ),
        (
            "{database: projects/p/instances/i/databases/d, membership: {heartbeatIntervalMs: 20000}}",
            "member heartbeat interval (20s) must be below member TTL (10s)",
        ),
        (
            "{database: projects/p/instances/i/databases/d, peerPort: 70000}",
            "spec.peerPort must be between 1 and 65535",
        ),
        (
            "{database: projects/p/instances/i/databases/d, networkPolicy: {enabled: true}}",
            "networkPolicy.enabled needs the members",
        ),
        (
            "{database: projects/p/instances/i/databases/d, groupSecret: {existingSecret: ''}}",
            "spec.groupSecret.existingSecret must not be empty",
        ),
        (
            "{database: projects/p/instances/i/databases/d, spanner: {emulatorHost: 'no port'}}",
            "spec.spanner.emulatorHost must be host:port",
        ),
    ];
    for (spec_yaml, message) in cases {
        let mut hg: HedgeGroup = serde_yaml::from_str(&format!(
            "apiVersion: hedge.dev/v1alpha1\nkind: HedgeGroup\nmetadata: {{name: g, namespace: n, uid: u}}\nspec: {spec_yaml}\n"
        ))
        .unwrap_or_else(|e| panic!("{spec_yaml}: {e}"));
        hg.metadata.generation = Some(1);
        let err = spec::validate(&hg).unwrap_err().to_string();
        assert!(
            err.contains(message),
            "{spec_yaml}: {err:?} should contain {message:?}"
        );
    }
}
