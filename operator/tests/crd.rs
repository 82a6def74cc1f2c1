//! The committed CRD matches the Rust types, and every example HedgeGroup is valid.

use std::path::{Path, PathBuf};

use hedge_operator::crd::{self, HedgeGroup, REGENERATE_COMMAND};
use hedge_operator::spec;
use kube::CustomResourceExt;
use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_committed_crd_is_the_generated_one() {
    let path = repo().join("crds/hedgegroup.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is stale (or missing): regenerate it with `{REGENERATE_COMMAND}` and commit it",
        path.display()
    );
}

#[test]
fn the_crd_has_its_names_and_printer_columns() {
    let crd = HedgeGroup::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("hedgegroups.hedge.dev"));
    assert_eq!(crd.spec.names.short_names, Some(vec!["hg".to_owned()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Leader", "Token", "Members", "Ready", "Age"]);
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
}

/// Every HedgeGroup document in the YAML files of `dir`.
fn groups_in(dir: &Path) -> Vec<(PathBuf, HedgeGroup)> {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if value.get("kind").and_then(|k| k.as_str()) == Some("HedgeGroup") {
                let hg: HedgeGroup = serde_yaml::from_value(value)
                    .unwrap_or_else(|e| panic!("{}: not a HedgeGroup: {e}", file.display()));
                found.push((file.clone(), hg));
            }
        }
    }
    found
}

#[test]
fn every_example_hedge_group_is_valid() {
    let mut groups = groups_in(&repo().join("crds/examples"));
    assert!(
        groups.len() >= 2,
        "crds/examples has the minimal and the full example"
    );
    let users = repo().join("examples");
    if users.is_dir() {
        groups.extend(groups_in(&users));
    }
    for (file, mut hg) in groups {
        // What the API server adds before the operator sees the object.
        hg.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        hg.metadata.uid = Some("uid".into());
        if let Err(e) = spec::validate(&hg) {
            panic!("{}: {e}", file.display());
        }
    }
}

/// A HedgeGroup from the YAML of its spec.
fn group(spec: &str) -> HedgeGroup {
    serde_yaml::from_str(&format!(
        "apiVersion: hedge.dev/v1alpha1\nkind: HedgeGroup\nmetadata: {{name: g, namespace: n}}\nspec: {spec}\n"
    ))
    .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

const DB: &str = "projects/p/instances/i/databases/d";

#[test]
fn the_cel_rules_accept_every_example() {
    let mut groups = groups_in(&repo().join("crds/examples"));
    if repo().join("examples").is_dir() {
        groups.extend(groups_in(&repo().join("examples")));
    }
    for (file, hg) in groups {
        if let Err(e) = kube::core::cel::validate_cel(&hg) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn the_cel_rules_reject_what_the_operator_would_reject() {
    let cases = [
        (
            format!("{{database: {DB}, election: {{leaseMs: 1000, renewIntervalMs: 1000}}}}"),
            "renewIntervalMs must be below leaseMs",
        ),
        (
            format!("{{database: {DB}, election: {{leaseMs: 1000, safetyMarginMs: 1000}}}}"),
            "safetyMarginMs must be below leaseMs",
        ),
        (
            format!(
                "{{database: {DB}, election: {{leaseMs: 1000, renewIntervalMs: 800, safetyMarginMs: 300}}}}"
            ),
            "renewIntervalMs must be below leaseMs minus safetyMarginMs",
        ),
        (
            format!("{{database: {DB}, membership: {{heartbeatIntervalMs: 5000, ttlMs: 5000}}}}"),
            "heartbeatIntervalMs must be below ttlMs",
        ),
        (
            format!("{{database: {DB}, tables: {{locks: t, members: T, schema: s}}}}"),
            "must have different names",
        ),
        (
            format!("{{database: {DB}, tables: {{log: hedge_permits}}}}"),
            "must have different names",
        ),
        (
            format!("{{database: {DB}, networkPolicy: {{enabled: true}}}}"),
            "networkPolicy.enabled needs the members",
        ),
    ];
    for (spec, message) in cases {
        let hg = group(&spec);
        let err = kube::core::cel::validate_cel(&hg)
            .expect_err(&spec)
            .to_string();
        assert!(err.contains(message), "{spec}: {err}");
        // The Rust checks agree (the operator does not rely on the API server's).
        assert!(
            spec::validate(&HedgeGroup {
                metadata: kube::api::ObjectMeta {
                    uid: Some("u".into()),
                    ..hg.metadata.clone()
                },
                ..hg
            })
            .is_err()
        );
    }
    let fine = group(&format!(
        "{{database: {DB}, election: {{leaseMs: 1000, renewIntervalMs: 200}}, networkPolicy: {{enabled: true}}, selector: {{matchLabels: {{a: b}}}}}}"
    ));
    kube::core::cel::validate_cel(&fine).unwrap();
}

#[test]
fn the_database_and_tables_cannot_change() {
    let old = group(&format!("{{database: {DB}}}"));
    let same = group(&format!("{{database: {DB}, peerPort: 9000}}"));
    kube::core::cel::validate_cel_update(&same, &old).unwrap();

    let moved = group("{database: projects/p/instances/i/databases/other}");
    let err = kube::core::cel::validate_cel_update(&moved, &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("database is immutable"), "{err}");

    let renamed = group(&format!(
        "{{database: {DB}, tables: {{locks: other_locks}}}}"
    ));
    let err = kube::core::cel::validate_cel_update(&renamed, &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tables are immutable"), "{err}");
}
