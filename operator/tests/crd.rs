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
