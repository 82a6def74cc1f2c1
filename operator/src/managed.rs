//! Server-side apply's record of who owns which field: `metadata.managedFields`, whose `fieldsV1`
//! lists, per field manager, every field that manager set. The operator reads it to compare
//! exactly what it owns with what it would apply (a field it owns but no longer applies is a
//! difference: the apply that removes it must be sent), and to see fields of the same name that
//! another manager owns (a user's own `HEDGE_*` variable).
//!
//! A field is a path of elements in the `fieldsV1` spelling: `f:<field>` for an object field,
//! `k:<json>` for the item of a list keyed by some of its fields (containers by name, ports by
//! container port and protocol), `v:<json>` for the item of a set. A path that ends in a `k:`
//! element stands for the item itself (`.` in `fieldsV1`).

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

/// One field: its path from the object's root.
pub type FieldPath = Vec<String>;

/// A set of fields, as one manager's `fieldsV1` holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<FieldPath>);

impl FieldSet {
    /// Whether the set holds no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &[String]) -> bool {
        self.0.contains(path)
    }

    /// Whether the set holds `path` or any field below it.
    pub fn touches(&self, path: &[String]) -> bool {
        self.0.iter().any(|p| p.starts_with(path))
    }

    /// The fields in a `fieldsV1` object.
    pub fn from_fields_v1(fields: &Value) -> Self {
        let mut set = BTreeSet::new();
        collect_fields_v1(fields, &mut Vec::new(), &mut set);
        Self(set)
    }

    /// The set in the `fieldsV1` spelling.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            insert_path(&mut root, path);
        }
        Value::Object(root)
    }
}

fn insert_path(node: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let child = node
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(map) = child {
        if !rest.is_empty() {
            insert_path(map, rest);
        } else if first.starts_with("k:") {
            // A list item is a member by itself: `.` marks it.
            map.insert(".".into(), Value::Object(Map::new()));
        }
    }
}

fn collect_fields_v1(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = node.as_object() else {
        return;
    };
    for (key, child) in map {
        if key == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(key.clone());
        match child.as_object() {
            Some(m) if m.is_empty() => {
                out.insert(path.clone());
            }
            _ => collect_fields_v1(child, path, out),
        }
        path.pop();
    }
}

/// The `k:` element of a list item keyed by `keys`: the item's key fields as compact JSON with
/// sorted keys, as the API server spells it (`k:{"containerPort":7946,"protocol":"TCP"}`).
pub fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut names: Vec<&str> = keys.to_vec();
    names.sort_unstable();
    let fields: Vec<String> = names
        .iter()
        .filter_map(|k| item.get(*k).map(|v| (k, v)))
        .map(|(k, v)| format!("{}:{}", Value::String((*k).to_owned()), v))
        .collect();
    format!("k:{{{}}}", fields.join(","))
}

/// The fields a manager owns in `meta`, in its entries of `operation` (`Apply` or `Update`) on
/// the main resource (not a subresource such as status).
pub fn owned(meta: &ObjectMeta, manager: &str, operation: &str) -> FieldSet {
    let mut set = BTreeSet::new();
    for entry in meta.managed_fields.iter().flatten() {
        if entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some(operation)
            && entry.subresource.as_deref().unwrap_or_default().is_empty()
            && let Some(fields) = &entry.fields_v1
        {
            set.extend(FieldSet::from_fields_v1(&fields.0).0);
        }
    }
    FieldSet(set)
}

/// The managers (other than `except`) that own `path` or a field below it.
pub fn other_owners(meta: &ObjectMeta, path: &[String], except: &str) -> Vec<String> {
    let mut owners: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() != Some(except))
        .filter(|e| e.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| FieldSet::from_fields_v1(&f.0).touches(path))
        })
        .filter_map(|e| e.manager.clone())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Whether `manager` owns any field of the object.
pub fn has_manager(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.fields_v1
                .as_ref()
                .is_some_and(|f| !FieldSet::from_fields_v1(&f.0).is_empty())
    })
}

/// The metadata fields the API server keeps out of field ownership.
const UNOWNED_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "selfLink",
];

/// How server-side apply treats a field, by the kind's OpenAPI schema
/// (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An object merged field by field; for a list, the default: atomic.
    Granular,
    /// A list whose items are merged by these key fields (`x-kubernetes-list-type: map`).
    Keyed(&'static [&'static str]),
    /// Owned and replaced whole (`atomic` lists and structs such as a label selector).
    Atomic,
}

/// A schema: the shape of a field by its path of field names (list keys left out), e.g.
/// `["spec", "template", "spec", "containers"]`.
pub type Schema<'a> = &'a dyn Fn(&[&str]) -> Shape;

/// The fields an apply body sets, as the API server records them, by `schema`.
pub fn applied_fields(body: &Value, schema: Schema<'_>) -> FieldSet {
    let mut out = BTreeSet::new();
    if let Some(map) = body.as_object() {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Some(meta) = v.as_object() {
                    for (mk, mv) in meta {
                        if !UNOWNED_METADATA.contains(&mk.as_str()) {
                            let mut path = vec!["f:metadata".to_owned(), format!("f:{mk}")];
                            let mut names = vec!["metadata", mk.as_str()];
                            walk(mv, &mut path, &mut names, schema, &mut out);
                        }
                    }
                }
                continue;
            }
            walk(
                v,
                &mut vec![format!("f:{k}")],
                &mut vec![k.as_str()],
                schema,
                &mut out,
            );
        }
    }
    FieldSet(out)
}

fn walk<'a>(
    value: &'a Value,
    path: &mut FieldPath,
    names: &mut Vec<&'a str>,
    schema: Schema<'_>,
    out: &mut BTreeSet<FieldPath>,
) {
    let shape = schema(names);
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() && shape != Shape::Atomic => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                names.push(k);
                walk(v, path, names, schema, out);
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) => match shape {
            Shape::Keyed(key_fields) => {
                for item in items {
                    path.push(item_key(item, key_fields));
                    out.insert(path.clone());
                    if let Some(map) = item.as_object() {
                        for (k, v) in map {
                            path.push(format!("f:{k}"));
                            names.push(k);
                            walk(v, path, names, schema, out);
                            names.pop();
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` in `obj` (a keyed list item is found by its key).
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = obj;
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            node = node.get(field)?;
        } else if let Some(key) = element.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).ok()?;
            node = node
                .as_array()?
                .iter()
                .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))?;
        } else {
            return None;
        }
    }
    Some(node)
}

/// Whether the fields `manager` owns by apply are exactly those `desired` sets, each with the
/// value `desired` gives it: then applying `desired` would change nothing, and removing a field
/// from `desired` makes this false (the apply that removes it must be sent).
pub fn apply_is_noop(
    observed: &Value,
    meta: &ObjectMeta,
    manager: &str,
    desired: &Value,
    schema: Schema<'_>,
) -> bool {
    let wanted = applied_fields(desired, schema);
    if owned(meta, manager, "Apply") != wanted {
        return false;
    }
    wanted.0.iter().all(|path| {
        let is_item = path.last().is_some_and(|e| e.starts_with("k:"));
        is_item || value_at(observed, path) == value_at(desired, path)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment_keys(names: &[&str]) -> Shape {
        match names {
            ["spec", "template", "spec", "containers"] => Shape::Keyed(&["name"]),
            ["spec", "template", "spec", "containers", "env"] => Shape::Keyed(&["name"]),
            ["spec", "template", "spec", "containers", "ports"] => {
                Shape::Keyed(&["containerPort", "protocol"])
            }
            _ => Shape::Granular,
        }
    }

    #[test]
    fn fields_v1_round_trips_and_marks_list_items() {
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"a": "1"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "ports": [{"containerPort": 7946, "protocol": "TCP"}], "envFrom": [{"x": 1}]}
            ]}}},
        });
        let set = applied_fields(&body, &deployment_keys);
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:annotations": {"f:a": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {
                        ".": {}, "f:name": {}, "f:envFrom": {},
                        "f:ports": {"k:{\"containerPort\":7946,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}, "f:protocol": {}
                        }},
                    }
                }}}}
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
        let port = vec![
            "f:spec".to_owned(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"app\"}".into(),
            "f:ports".into(),
            "k:{\"containerPort\":7946,\"protocol\":\"TCP\"}".into(),
            "f:containerPort".into(),
        ];
        assert_eq!(value_at(&body, &port), Some(&json!(7946)));
    }
}
