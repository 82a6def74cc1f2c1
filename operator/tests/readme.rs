//! The README cannot drift from the code: its configuration reference names every `HEDGE_*`
//! variable the code reads and every field of the HedgeGroup CRD, with the defaults the code
//! uses; its test command is the one `.ci/run` runs; its links point at files in the repository;
//! and nothing in the repository points outside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube::CustomResourceExt as _;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The text of the README section `## <title>`, up to the next `## `.
fn section(readme: &str, title: &str) -> String {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The table row of `name` (`| \`name\` | default | meaning |`), split into its cells.
fn row<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let start = format!("| `{name}` |");
    text.lines()
        .find(|l| l.starts_with(&start))
        .map(|l| l.split('|').map(str::trim).collect())
}

/// Every file under `dir` (recursively) ending in `.rs`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `"HEDGE_..."` string literal in the code (test modules and test files left out: their
/// names are fixtures, not configuration).
fn variables_in_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    for crate_dir in ["client", "operator", "demo", "tests", "bench"] {
        rust_files(&root().join(crate_dir).join("src"), &mut files);
    }
    let mut vars = BTreeSet::new();
    for file in files {
        if file.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for piece in code.split("\"HEDGE_").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if piece[name.len()..].starts_with('"') {
                vars.insert(format!("HEDGE_{name}"));
            }
        }
    }
    vars
}

#[test]
fn every_variable_is_in_the_reference_with_its_default() {
    let reference = section(&readme(), "Configuration reference");
    let vars = variables_in_code();
    assert!(vars.len() > 30, "the scan found too little: {vars:?}");
    let missing: Vec<_> = vars
        .iter()
        .filter(|v| row(&reference, v).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's reference: {missing:?}"
    );
    // The members' defaults, as the operator's ConfigMap would carry them.
    for (name, value) in hedge::Config::new("g").to_env() {
        if name == "HEDGE_GROUP" {
            continue;
        }
        let cells = row(&reference, &name).expect("checked above");
        assert!(
            cells[2].contains(&value),
            "{name}: the README says {:?}, the code's default is {value}",
            cells[2]
        );
    }
}

/// Every property path of the CRD's spec (`spec.election.leaseMs`), with its scalar default.
fn crd_fields() -> Vec<(String, Option<Value>)> {
    let crd = serde_json::to_value(hedge_operator::HedgeGroup::crd()).expect("the CRD as JSON");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut fields = Vec::new();
    fn walk(node: &Value, path: &str, fields: &mut Vec<(String, Option<Value>)>) {
        let Some(properties) = node["properties"].as_object() else {
            return;
        };
        for (name, property) in properties {
            let path = format!("{path}.{name}");
            let default = property.get("default").filter(|d| !d.is_object()).cloned();
            fields.push((path.clone(), default));
            walk(property, &path, fields);
        }
    }
    walk(spec, "spec", &mut fields);
    fields
}

#[test]
fn every_crd_field_is_in_the_reference_with_its_default() {
    let reference = section(&readme(), "Configuration reference");
    let fields = crd_fields();
    assert!(fields.len() > 20, "{fields:?}");
    for (path, default) in fields {
        let cells = row(&reference, &path)
            .unwrap_or_else(|| panic!("{path} is not in the README's reference"));
        if let Some(default) = default {
            let text = match &default {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert!(
                cells[2].contains(&text),
                "{path}: the README says {:?}, the CRD's default is {text}",
                cells[2]
            );
        }
    }
}

#[test]
fn the_test_command_is_the_one_ci_runs() {
    let readme = readme();
    let try_it = section(&readme, "Try it");
    let readme_command = try_it
        .lines()
        .find(|l| l.starts_with("cargo test"))
        .expect("a test command in the README's first section");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let ci_command = ci
        .lines()
        .rfind(|l| l.starts_with("cargo test"))
        .expect("a test command in .ci/run");
    assert_eq!(readme_command.trim(), ci_command.trim());
    assert!(
        try_it.contains("cargo run -p hedge-demo -- local\n"),
        "{try_it}"
    );
}

/// The repository's text files (build output, tool caches and Git's own files left out).
fn repository_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".tools" | "node_modules") {
                repository_files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[test]
fn links_stay_inside_the_repository() {
    let root = root();
    let mut files = Vec::new();
    repository_files(&root, &mut files);
    let shared = ["../", "shared"].concat();
    let work_shared = ["/work/", "shared"].concat();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text
        };
        assert!(
            !text.contains(&shared) && !text.contains(&work_shared),
            "{} points outside the repository",
            file.display()
        );
        if file.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let dir = file.parent().expect("a directory");
        for piece in text.split("](").skip(1) {
            let target = piece.split(')').next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{}: link to {target} which does not exist",
                file.display()
            );
        }
    }
}
