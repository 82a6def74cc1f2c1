//! Test helpers: HedgeGroup builders, a fake API server behind `tower-test` (the controller-rs
//! `ApiServerVerifier` pattern, answering from an in-memory object store and recording every
//! exchange so tests assert method, exact URI and JSON body), and a counting fake Spanner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hedge::DatabasePath;
use hedge::store::TableNames;
use hedge::store::schema::{SCHEMA_VERSION, migrations};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use kube::runtime::events::Recorder;
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

use crate::controller::{Context, Settings};
use crate::crd::{DeploymentTarget, FINALIZER, HedgeGroup, HedgeGroupSpec};
use crate::metrics::Metrics;
use crate::provision::{GroupState, Leader, ProvisionError, Provisioner, SchemaOutcome};

/// The namespace of every test object.
pub const NS: &str = "testns";
/// The database of every test group.
pub const DB: &str = "projects/p/instances/i/databases/d";

impl HedgeGroup {
    /// A group as the API server would hand it over: named, namespaced, with a uid and generation.
    pub fn test(name: &str) -> Self {
        let mut hg = HedgeGroup::new(
            name,
            HedgeGroupSpec {
                database: DB.into(),
                ..HedgeGroupSpec::default()
            },
        );
        let meta = hg.meta_mut();
        meta.namespace = Some(NS.into());
        meta.uid = Some(format!("uid-{name}"));
        meta.generation = Some(1);
        meta.resource_version = Some("1".into());
        hg
    }

    /// With the operator's finalizer.
    pub fn finalized(mut self) -> Self {
        self.meta_mut().finalizers = Some(vec![FINALIZER.into()]);
        self
    }

    /// Marked for deletion.
    pub fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        self
    }

    /// Referencing Deployment `name`.
    pub fn with_deployment(mut self, name: &str) -> Self {
        self.spec.deployment = Some(DeploymentTarget {
            name: name.into(),
            containers: Vec::new(),
        });
        self
    }
}

/// A Deployment `name` with one container `app` selecting `app=<name>`.
pub fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
        },
    }))
    .unwrap_or_else(|e| panic!("test deployment: {e}"))
}

/// One request the fake API server answered.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The method.
    pub method: Method,
    /// The path and query, exactly as sent.
    pub uri: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// The status answered.
    pub status: u16,
}

impl Exchange {
    /// Whether the request changed something.
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

#[derive(Default)]
struct ServerState {
    objects: BTreeMap<String, Value>,
    log: Vec<Exchange>,
    failures: Vec<(Method, String, u16)>,
    next_uid: u64,
}

/// A fake API server: answers GET, LIST, POST, PATCH (apply, JSON patch, merge) and DELETE from an
/// in-memory store, and records every exchange.
pub struct ApiServerVerifier {
    state: Arc<Mutex<ServerState>>,
    task: JoinHandle<()>,
}

impl Drop for ApiServerVerifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn plural(kind: &str) -> String {
    match kind {
        "NetworkPolicy" => "networkpolicies".into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

/// The path of an object from its apiVersion, kind, namespace and name.
fn object_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or(NS);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    format!("{prefix}/namespaces/{ns}/{}/{name}", plural(kind))
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Merges `patch` into `target` the way server-side apply merges this operator's bodies: objects
/// field by field, lists of named items by name, other lists replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().all(|i| i.get("name").is_some()) && !p.is_empty() =>
        {
            for item in p {
                match t.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
        let pointer = |p: &str| {
            if p.is_empty() {
                String::new()
            } else {
                p.to_owned()
            }
        };
        match op["op"].as_str() {
            Some("test") => {
                let found = target.pointer(path).cloned().unwrap_or(Value::Null);
                if found != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") => {
                let parent = target.pointer_mut(&pointer(parent)).ok_or("no parent")?;
                match parent {
                    Value::Array(items) if last == "-" => items.push(op["value"].clone()),
                    Value::Object(map) => {
                        map.insert(last.to_owned(), op["value"].clone());
                    }
                    _ => return Err(format!("cannot add at {path}")),
                }
            }
            Some("remove") => {
                let parent = target.pointer_mut(&pointer(parent)).ok_or("no parent")?;
                match parent {
                    Value::Array(items) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        items.remove(i);
                    }
                    Value::Object(map) => {
                        map.remove(last);
                    }
                    _ => return Err(format!("cannot remove at {path}")),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

impl ServerState {
    fn answer(
        &mut self,
        method: &Method,
        uri: &http::Uri,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default();
        if let Some(i) = self
            .failures
            .iter()
            .position(|(m, p, _)| m == method && path.contains(p.as_str()))
        {
            let (_, _, code) = self.failures.remove(i);
            let reason = match code {
                404 => "NotFound",
                409 => "Conflict",
                _ => "InternalError",
            };
            return (code, status_json(code, reason, "injected failure"));
        }
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(base) => (base.to_owned(), true),
            None => (path.clone(), false),
        };
        match *method {
            Method::GET if self.objects.contains_key(&object_path) => {
                (200, self.objects[&object_path].clone())
            }
            Method::GET if self.is_collection(&path) => (200, self.list(&path)),
            Method::GET => (
                404,
                status_json(404, "NotFound", &format!("{path} not found")),
            ),
            Method::POST => {
                let mut obj = body.cloned().unwrap_or(Value::Null);
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = format!("{path}/{name}");
                if self.objects.contains_key(&key) {
                    return (
                        409,
                        status_json(409, "AlreadyExists", &format!("{key} already exists")),
                    );
                }
                self.stamp(&mut obj, query_param(query, "fieldManager"), "Update");
                self.objects.insert(key, obj.clone());
                (201, obj)
            }
            Method::PATCH => {
                let exists = self.objects.contains_key(&object_path);
                let mut obj = self
                    .objects
                    .get(&object_path)
                    .cloned()
                    .unwrap_or(Value::Null);
                let patch = body.cloned().unwrap_or(Value::Null);
                if content_type.starts_with("application/json-patch") {
                    if !exists {
                        return (404, status_json(404, "NotFound", "not found"));
                    }
                    if let Err(e) = json_patch(&mut obj, &patch) {
                        return (422, status_json(422, "Invalid", &e));
                    }
                } else if subresource {
                    if !exists {
                        return (404, status_json(404, "NotFound", "not found"));
                    }
                    merge(&mut obj["status"], &patch["status"]);
                } else {
                    merge(&mut obj, &patch);
                }
                let operation = if content_type.starts_with("application/apply-patch") {
                    "Apply"
                } else {
                    "Update"
                };
                self.stamp(&mut obj, query_param(query, "fieldManager"), operation);
                self.objects.insert(object_path, obj.clone());
                (200, obj)
            }
            Method::DELETE => match self.objects.remove(&object_path) {
                Some(obj) => (200, obj),
                None => (404, status_json(404, "NotFound", "not found")),
            },
            _ => (405, status_json(405, "MethodNotAllowed", "unsupported")),
        }
    }

    fn stamp(&mut self, obj: &mut Value, manager: Option<String>, operation: &str) {
        self.next_uid += 1;
        let meta = &mut obj["metadata"];
        if meta.get("uid").is_none_or(Value::is_null) {
            meta["uid"] = json!(format!("uid-{}", self.next_uid));
        }
        meta["resourceVersion"] = json!(self.next_uid.to_string());
        if let Some(manager) = manager {
            let entry = json!({"manager": manager, "operation": operation});
            let fields = meta["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !fields.contains(&entry) {
                let mut fields = fields;
                fields.push(entry);
                meta["managedFields"] = Value::Array(fields);
            }
        }
    }

    fn is_collection(&self, path: &str) -> bool {
        path.ends_with("/hedgegroups")
    }

    fn list(&self, path: &str) -> Value {
        let (prefix, plural) = path.rsplit_once('/').unwrap_or(("", path));
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.contains(&format!("/{plural}/")))
            .map(|(_, v)| v.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})
    }
}

impl ApiServerVerifier {
    /// A client whose requests this fake answers.
    pub fn start() -> (Client, Self) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(ServerState::default()));
        let served = state.clone();
        let task = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let json: Option<Value> = serde_json::from_slice(&bytes).ok();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let (status, answer) = {
                    let mut s = served
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let (status, answer) =
                        s.answer(&parts.method, &parts.uri, &content_type, json.as_ref());
                    s.log.push(Exchange {
                        method: parts.method.clone(),
                        uri: parts.uri.to_string(),
                        body: json,
                        status,
                    });
                    (status, answer)
                };
                let response = Response::builder()
                    .status(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    )
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .unwrap_or_else(|_| Response::new(Body::empty()));
                send.send_response(response);
            }
        });
        (Client::new(service, NS), Self { state, task })
    }

    fn with<T>(&self, f: impl FnOnce(&mut ServerState) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Stores an object as if it had been created.
    pub fn seed(&self, obj: &impl serde::Serialize) {
        let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
        if value["metadata"]["namespace"].is_null() {
            value["metadata"]["namespace"] = json!(NS);
        }
        self.with(|s| {
            let path = object_path(&value);
            s.objects.insert(path, value);
        });
    }

    /// The stored object at `path`.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.with(|s| s.objects.get(path).cloned())
    }

    /// The stored HedgeGroup `name`.
    pub fn group(&self, name: &str) -> HedgeGroup {
        let path = format!("/apis/hedge.dev/v1alpha1/namespaces/{NS}/hedgegroups/{name}");
        serde_json::from_value(self.object(&path).unwrap_or(Value::Null))
            .unwrap_or_else(|e| panic!("HedgeGroup {name} in the fake: {e}"))
    }

    /// Makes the next `method` request whose path contains `path` fail with `code`.
    pub fn fail_next(&self, method: Method, path: &str, code: u16) {
        self.with(|s| s.failures.push((method, path.to_owned(), code)));
    }

    /// Every exchange so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.with(|s| s.log.clone())
    }

    /// Forgets the exchanges so far (to measure the next reconcile alone).
    pub fn clear_log(&self) {
        self.with(|s| s.log.clear());
    }

    /// The exchanges that changed something, as `METHOD uri`.
    pub fn writes(&self) -> Vec<String> {
        self.exchanges()
            .iter()
            .filter(|e| e.is_write())
            .map(|e| format!("{} {}", e.method, e.uri))
            .collect()
    }
}

/// A fake Spanner: a schema version, a leader, members and other groups' rows, with every call
/// counted by name.
#[derive(Debug, Default)]
pub struct FakeProvisioner {
    state: Mutex<FakeSpanner>,
}

/// The fake's state.
#[derive(Clone, Debug, Default)]
pub struct FakeSpanner {
    /// The schema version, `None` before the first ensure.
    pub version: Option<i64>,
    /// The leader.
    pub leader: Option<Leader>,
    /// The member count.
    pub members: usize,
    /// Groups with rows.
    pub groups: BTreeSet<String>,
    /// Whether the tables were dropped.
    pub dropped: bool,
    /// The calls, in order.
    pub calls: Vec<&'static str>,
    /// DDL statements applied, in total.
    pub ddl_applied: usize,
    /// Row deletions and table drops, in total.
    pub row_writes: usize,
    /// Fail the next call with an unavailable error.
    pub fail_next: bool,
}

impl FakeProvisioner {
    /// A fake with `state`.
    pub fn with(state: FakeSpanner) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }

    /// The fake's state now.
    pub fn state(&self) -> FakeSpanner {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the fake's state.
    pub fn update(&self, f: impl FnOnce(&mut FakeSpanner)) {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn call(
        &self,
        name: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, FakeSpanner>, ProvisionError> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.calls.push(name);
        if std::mem::take(&mut s.fail_next) {
            return Err(ProvisionError::Unavailable {
                step: name,
                message: "injected failure".into(),
            });
        }
        Ok(s)
    }
}

/// A leader for the fake.
pub fn leader(id: &str, token: u64) -> Leader {
    Leader {
        id: id.into(),
        token,
        since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    async fn ensure_schema(
        &self,
        _db: &DatabasePath,
        tables: &TableNames,
    ) -> Result<SchemaOutcome, ProvisionError> {
        let mut s = self.call("ensure_schema")?;
        let before = s.version;
        if let Some(found) = before.filter(|v| *v > SCHEMA_VERSION) {
            return Err(ProvisionError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let applied: Vec<String> = migrations(tables)
            .into_iter()
            .filter(|m| Some(m.version) > before)
            .flat_map(|m| m.items.into_iter().map(|i| i.statement))
            .collect();
        s.ddl_applied += applied.len();
        s.version = Some(SCHEMA_VERSION);
        s.dropped = false;
        Ok(SchemaOutcome {
            version_before: before,
            version_after: SCHEMA_VERSION,
            applied,
        })
    }

    async fn group_state(
        &self,
        _db: &DatabasePath,
        _t: &TableNames,
        _g: &str,
    ) -> Result<GroupState, ProvisionError> {
        let s = self.call("group_state")?;
        Ok(GroupState {
            leader: s.leader.clone(),
            members: s.members,
        })
    }

    async fn delete_group_rows(
        &self,
        _db: &DatabasePath,
        _t: &TableNames,
        group: &str,
    ) -> Result<(), ProvisionError> {
        let mut s = self.call("delete_group_rows")?;
        s.groups.remove(group);
        s.leader = None;
        s.members = 0;
        s.row_writes += 1;
        Ok(())
    }

    async fn groups_in_tables(
        &self,
        _db: &DatabasePath,
        _t: &TableNames,
    ) -> Result<Option<BTreeSet<String>>, ProvisionError> {
        let s = self.call("groups_in_tables")?;
        Ok(Some(s.groups.clone()))
    }

    async fn drop_schema(&self, _db: &DatabasePath, _t: &TableNames) -> Result<(), ProvisionError> {
        let mut s = self.call("drop_schema")?;
        s.dropped = true;
        s.version = None;
        s.row_writes += 1;
        Ok(())
    }
}

impl Context {
    /// A context on the fake API server and `provisioner`, with its metrics in a fresh registry.
    pub fn test(provisioner: Arc<FakeProvisioner>) -> (Arc<Self>, ApiServerVerifier, Registry) {
        let (client, verifier) = ApiServerVerifier::start();
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        let recorder = Recorder::new(client.clone(), "hedge-operator".into());
        let ctx = Context::new(client, recorder, provisioner, metrics, Settings::default());
        (Arc::new(ctx), verifier, registry)
    }
}
