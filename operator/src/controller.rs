//! The reconciler: observe → plan → apply → status for a live `HedgeGroup`, the deletion policy
//! behind a finalizer for a deleted one, an error policy with exponential backoff, and the
//! controller loop that drives them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::apply::{self, ApplyError};
use crate::conditions::{CONFIG_READY, Cond, SCHEMA_READY, Status};
use crate::crd::{DeletionPolicy, FIELD_MANAGER, FINALIZER, HedgeGroup, HedgeGroupStatus};
use crate::metrics::Metrics;
use crate::observe::{self, ObserveError};
use crate::plan::{self, Plan};
use crate::provision::{ProvisionError, Provisioner};
use crate::resources::MANAGED_BY_LABEL;
use crate::spec::{self, SecretSource, ValidGroup};
use crate::status::{self, Report};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (never the case for a namespaced resource from the API).
    #[error("the HedgeGroup has no namespace")]
    MissingNamespace,
    /// A read failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A write failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A Spanner call failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The status could not be written.
    #[error("failed to write the status of HedgeGroup `{name}`: {source}")]
    Status {
        /// The HedgeGroup.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed, or the step it wraps did.
    // NB: boxed because `finalizer::Error<Error>` holds an `Error` itself.
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    /// The reason, for the `Degraded` condition and the failure metric's label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "InvalidObject",
            Error::Observe(ObserveError::Kube { .. }) => "KubeReadFailed",
            Error::Observe(ObserveError::Provision(e))
            | Error::Apply(ApplyError::Provision(e))
            | Error::Provision(e) => e.reason(),
            Error::Apply(ApplyError::Kube { .. }) => "KubeWriteFailed",
            Error::Status { .. } => "StatusWriteFailed",
            Error::Finalizer(f) => match f.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                // Adding or removing the finalizer failed (or the object has no name).
                _ => "FinalizerFailed",
            },
        }
    }
}

/// How often and how patiently the controller works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long after a successful reconcile the group is reconciled again, to refresh the
    /// leader and members in its status.
    pub resync: Duration,
    /// The first retry delay after a failure; it doubles with each further failure.
    pub backoff_base: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// The shared handles of every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes events on the HedgeGroups.
    pub recorder: Recorder,
    /// Spanner.
    pub provisioner: Arc<dyn Provisioner>,
    /// The metrics.
    pub metrics: Metrics,
    /// Timings.
    pub settings: Settings,
    /// Consecutive failures per HedgeGroup (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        recorder: Recorder,
        provisioner: Arc<dyn Provisioner>,
        metrics: Metrics,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            recorder,
            provisioner,
            metrics,
            settings,
            failures: Mutex::default(),
        }
    }

    /// The delay before retrying `key` after one more failure: base × 2^(failures so far),
    /// capped at the maximum.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        let delay = self
            .settings
            .backoff_base
            .saturating_mul(2u32.saturating_pow(*n))
            .min(self.settings.backoff_max);
        *n = n.saturating_add(1);
        delay
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

fn key(hg: &HedgeGroup) -> String {
    format!("{}/{}", hg.namespace().unwrap_or_default(), hg.name_any())
}

/// Reconciles one HedgeGroup: adds the finalizer first, applies the deletion policy when the
/// group is being deleted, and otherwise brings everything to the spec.
#[instrument(skip_all, fields(group = %key(&hg)))]
pub async fn reconcile(hg: Arc<HedgeGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.count_and_measure();
    let ns = hg.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<HedgeGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let key = key(&hg);
    let action = finalizer(&api, FINALIZER, hg, |event| async {
        match event {
            Event::Apply(hg) => reconcile_group(&hg, &ctx).await,
            Event::Cleanup(hg) => cleanup_group(&hg, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.reset_backoff(&key);
    Ok(action)
}

/// Logs the failure, counts it by reason, and retries with exponential backoff.
pub fn error_policy(hg: Arc<HedgeGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(&key(&hg));
    warn!(group = %key(&hg), reason = error.reason(), retry_in = ?delay, "reconcile failed: {error}");
    ctx.metrics.failure(error.reason());
    Action::requeue(delay)
}

async fn reconcile_group(hg: &HedgeGroup, ctx: &Context) -> Result<Action, Error> {
    let old = hg.status.as_ref();
    let v = match spec::validate(hg) {
        Ok(v) => v,
        Err(invalid) => {
            // A spec that cannot work: say so and wait for the user to change it.
            info!("invalid spec: {invalid}");
            write_status(
                ctx,
                hg,
                &Report::invalid(old, hg.meta().generation, &invalid.to_string()),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    match converge(&v, ctx).await {
        Ok(report) => {
            write_status(ctx, hg, &report).await?;
            Ok(Action::requeue(ctx.settings.resync))
        }
        Err(e) => {
            let report = carried_report(old, &v).failed(e.reason(), &e.to_string());
            if let Err(status_error) = write_status(ctx, hg, &report).await {
                warn!("could not record the failure in the status: {status_error}");
            }
            Err(e)
        }
    }
}

/// Ensure the schema, observe, plan, apply, and read the group's state: the report the status
/// is built from.
async fn converge(v: &ValidGroup, ctx: &Context) -> Result<Report, Error> {
    let provisioner = ctx.provisioner.as_ref();
    // The schema first: members must never start against missing tables.
    let (schema, schema_version) = match provisioner.ensure_schema(&v.database, &v.tables).await {
        Ok(outcome) => {
            if !outcome.applied.is_empty() {
                info!(from = ?outcome.version_before, to = outcome.version_after, "provisioned the schema");
            }
            let version = outcome.version_after;
            let message = format!("the tables are at schema version {version}");
            (
                Cond::new(SCHEMA_READY, Status::True, "Provisioned", message),
                Some(version),
            )
        }
        // Members of a newer hedge own these tables; this operator leaves them alone.
        Err(e @ ProvisionError::TooNew { found, .. }) => (
            Cond::new(SCHEMA_READY, Status::False, e.reason(), e.to_string()),
            Some(found),
        ),
        Err(e) => return Err(e.into()),
    };
    let observed = observe::observe(&ctx.client, v).await?;
    let plan = plan::plan(v, &observed);
    debug!(writes = plan.writes(), "planned");
    apply::apply(&ctx.client, v, &plan).await?;
    let group_state = if schema.status == Status::True {
        Some(
            provisioner
                .group_state(&v.database, &v.tables, &v.group)
                .await?,
        )
    } else {
        None
    };
    Ok(Report {
        generation: v.generation,
        group: Some(v.group.clone()),
        schema,
        config: config_condition(v, &plan),
        degraded: None,
        schema_version,
        group_state,
    })
}

fn config_condition(v: &ValidGroup, plan: &Plan) -> Cond {
    if let Some(first) = plan.problems.first() {
        let message = plan
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Cond::new(CONFIG_READY, Status::False, first.reason(), message);
    }
    let secret = match &v.secret {
        SecretSource::Generated(name) => format!("Secret {name} (generated)"),
        SecretSource::Existing(name) => format!("Secret {name}"),
    };
    let mut parts = vec![format!("ConfigMap {}", v.config_map), secret];
    if let Some(d) = &v.deployment {
        parts.push(format!("Deployment {}", d.name));
    }
    if v.network_policy_enabled {
        parts.push(format!("NetworkPolicy {}", v.network_policy));
    }
    Cond::new(
        CONFIG_READY,
        Status::True,
        "Applied",
        format!("in place: {}", parts.join(", ")),
    )
}

/// The report of a reconcile that failed before it learned anything new: the old conditions.
fn carried_report(old: Option<&HedgeGroupStatus>, v: &ValidGroup) -> Report {
    let pending = |type_| Cond::new(type_, Status::Unknown, "Pending", "not reconciled yet");
    Report {
        generation: v.generation,
        group: Some(v.group.clone()),
        schema: status::carried(old, SCHEMA_READY).unwrap_or_else(|| pending(SCHEMA_READY)),
        config: status::carried(old, CONFIG_READY).unwrap_or_else(|| pending(CONFIG_READY)),
        degraded: None,
        schema_version: None,
        group_state: None,
    }
}

fn now() -> Time {
    let ts = Timestamp::now();
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// Writes the status built from `report` when it differs from the current one, then publishes
/// the events of its transitions. An unchanged status is not written and publishes nothing.
async fn write_status(ctx: &Context, hg: &HedgeGroup, report: &Report) -> Result<(), Error> {
    let old = hg.status.as_ref();
    let new = status::desired(old, report, &now());
    if old == Some(&new) {
        return Ok(());
    }
    let name = hg.name_any();
    let api: Api<HedgeGroup> =
        Api::namespaced(ctx.client.clone(), &hg.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": HedgeGroup::api_version(&()),
        "kind": HedgeGroup::kind(&()),
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Status { name, source })?;
    for event in status::transitions(old, &new) {
        publish(ctx, hg, &event).await;
    }
    Ok(())
}

/// Publishes an event; a failure is logged, never fatal (events are best effort).
async fn publish(ctx: &Context, hg: &HedgeGroup, event: &KubeEvent) {
    if let Err(e) = ctx.recorder.publish(event, &hg.object_ref(&())).await {
        warn!(reason = %event.reason, "could not publish an event: {e}");
    }
}

async fn cleanup_group(hg: &HedgeGroup, ctx: &Context) -> Result<Action, Error> {
    let v = match spec::validate(hg) {
        Ok(v) => v,
        Err(invalid) => {
            // Nothing can be cleaned up from a spec that names no usable database; keeping the
            // finalizer would only block the deletion forever.
            let note = format!("the deletion policy was not applied: {invalid}");
            publish(
                ctx,
                hg,
                &cleanup_event(EventType::Warning, "CleanupSkipped", note),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let provisioner = ctx.provisioner.as_ref();
    let observed = observe::observe_cleanup(&ctx.client, provisioner, &v).await?;
    let plan = plan::plan_cleanup(&v, &observed);
    apply::apply_cleanup(&ctx.client, provisioner, &v, &plan).await?;
    let note = match v.deletion_policy {
        DeletionPolicy::Retain => {
            format!("Retain: kept the rows of group {} and the tables", v.group)
        }
        DeletionPolicy::DeleteRows => format!("DeleteRows: deleted the rows of group {}", v.group),
        DeletionPolicy::DropTables if plan.drop_tables => {
            format!(
                "DropTables: deleted the rows of group {} and dropped the tables",
                v.group
            )
        }
        DeletionPolicy::DropTables => format!(
            "DropTables: deleted the rows of group {}; kept the tables, still used by {}",
            v.group,
            plan.tables_kept_for.join(", ")
        ),
    };
    info!("{note}");
    publish(
        ctx,
        hg,
        &cleanup_event(EventType::Normal, "CleanedUp", note),
    )
    .await;
    Ok(Action::await_change())
}

fn cleanup_event(type_: EventType, reason: &str, note: String) -> KubeEvent {
    KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Delete".into(),
        secondary: None,
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HedgeGroup CRD is not installed.
    #[error(
        "the HedgeGroup CRD (hedgegroups.hedge.dev) is not installed in this cluster: install the \
         Helm chart, or run `hedge-operator crd | kubectl apply -f -`"
    )]
    CrdMissing,
    /// The API server could not be asked.
    #[error("cannot list HedgeGroups: {0}")]
    Kube(#[source] kube::Error),
}

/// Checks that the CRD is installed (listing HedgeGroups answers 404 when it is not).
pub async fn check_crd(api: &Api<HedgeGroup>) -> Result<(), RunError> {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => Err(RunError::CrdMissing),
        Err(e) => Err(RunError::Kube(e)),
    }
}

/// Runs the controller until `shutdown` is cancelled: watches HedgeGroups (in `namespace`, or all
/// namespaces), the ConfigMaps the operator owns, and the Deployments the groups reference.
/// `started` is called once the CRD check passed (it marks the operator ready).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: CancellationToken,
    started: impl FnOnce(),
) -> Result<(), RunError> {
    let client = ctx.client.clone();
    let (groups, config_maps, deployments) = match namespace {
        Some(ns) => (
            Api::<HedgeGroup>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    check_crd(&groups).await?;
    started();
    let controller = Controller::new(groups, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .owns(
            config_maps,
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}")),
        )
        .watches(
            deployments,
            watcher::Config::default(),
            move |d: Deployment| {
                let (ns, name) = (d.namespace(), d.name_any());
                store
                    .state()
                    .into_iter()
                    .filter(|hg| {
                        hg.namespace() == ns
                            && hg.spec.deployment.as_ref().is_some_and(|t| t.name == name)
                    })
                    .map(|hg| ObjectRef::from_obj(hg.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(%object, "reconciled"),
                Err(e) => debug!("controller: {e}"),
            }
        })
        .await;
    Ok(())
}

// Mocked API tests: the fake API server of `fixtures.rs` answers and records every request.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use http::Method;
    use kube::runtime::controller::Action;
    use serde_json::{Value, json};

    use super::{Context, error_policy, reconcile};
    use crate::conditions::{self, CONFIG_READY, DEGRADED, READY, SCHEMA_READY};
    use crate::crd::{DeletionPolicy, HedgeGroup};
    use crate::fixtures::{self, ApiServerVerifier, FakeProvisioner, FakeSpanner, NS, leader};

    const HG: &str = "/apis/hedge.dev/v1alpha1/namespaces/testns/hedgegroups";
    const SSA: &str = "?&force=true&fieldManager=hedge-operator";

    fn fresh() -> (Arc<Context>, ApiServerVerifier, Arc<FakeProvisioner>) {
        let spanner = Arc::new(FakeProvisioner::default());
        let (ctx, api, _) = Context::test(spanner.clone());
        (ctx, api, spanner)
    }

    /// Reconciles the group as stored in the fake, as the controller would after a watch event.
    async fn reconcile_stored(
        ctx: &Arc<Context>,
        api: &ApiServerVerifier,
        name: &str,
    ) -> Result<Action, super::Error> {
        reconcile(Arc::new(api.group(name)), ctx.clone()).await
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

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or(&Value::Null)
    }

    #[tokio::test]
    async fn a_group_without_finalizer_gets_one_and_nothing_else() {
        let (ctx, api, spanner) = fresh();
        api.seed(&HedgeGroup::test("orders"));

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
        assert!(
            spanner.state().calls.is_empty(),
            "no Spanner work before the finalizer is there"
        );
    }

    #[tokio::test]
    async fn a_finalized_group_is_provisioned_and_its_status_patched_ready() {
        let (ctx, api, spanner) = fresh();
        api.seed(&HedgeGroup::test("orders").finalized());

        let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();

        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        assert_eq!(spanner.state().calls, ["ensure_schema", "group_state"]);
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
        let secret = api
            .object("/api/v1/namespaces/testns/secrets/orders-hedge-secret")
            .unwrap();
        assert!(secret["data"]["HEDGE_GROUP_SECRET"].is_string());

        let patch = &status_patches(&api)[0];
        assert_eq!(patch["apiVersion"], "hedge.dev/v1alpha1");
        let status = &patch["status"];
        for (type_, value) in [
            (READY, "True"),
            (SCHEMA_READY, "True"),
            (CONFIG_READY, "True"),
            (DEGRADED, "False"),
        ] {
            assert_eq!(
                condition(status, type_)["status"],
                value,
                "{type_}: {status:#}"
            );
            assert_eq!(condition(status, type_)["observedGeneration"], 1);
        }
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(
            status["schemaVersion"],
            hedge::store::schema::SCHEMA_VERSION
        );
        assert_eq!(status["members"], 0);
        assert_eq!(event_reasons(&api), ["SchemaProvisioned", "Ready"]);
    }

    #[tokio::test]
    async fn a_new_leader_shows_in_the_status_with_one_event_and_an_unchanged_group_is_not_written()
    {
        let (ctx, api, spanner) = fresh();
        api.seed(&HedgeGroup::test("orders").finalized());
        reconcile_stored(&ctx, &api, "orders").await.unwrap();

        spanner.update(|s| {
            s.leader = Some(leader("orders-7d9f-x2", 4));
            s.members = 3;
        });
        api.clear_log();
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        let status = &status_patches(&api)[0]["status"];
        assert_eq!(status["leader"], "orders-7d9f-x2");
        assert_eq!(status["token"], 4);
        assert_eq!(status["members"], 3);
        assert_eq!(status["leaderSince"], "2027-01-15T08:00:00Z");
        assert_eq!(event_reasons(&api), ["LeaderElected"]);

        api.clear_log();
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "an unchanged group makes no writes"
        );
        let ready = api.group("orders").status.unwrap();
        assert!(conditions::is_true(&ready.conditions, READY));
    }

    #[tokio::test]
    async fn a_referenced_deployment_is_configured_once() {
        let (ctx, api, _) = fresh();
        api.seed(
            &HedgeGroup::test("orders")
                .finalized()
                .with_deployment("web"),
        );
        api.seed(&fixtures::deployment("web"));

        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        let applied = api
            .exchanges()
            .into_iter()
            .find(|e| {
                e.method == Method::PATCH
                    && e.uri
                        .starts_with("/apis/apps/v1/namespaces/testns/deployments/web")
            })
            .unwrap();
        assert_eq!(
            applied.uri,
            format!("/apis/apps/v1/namespaces/testns/deployments/web{SSA}")
        );
        let container = &applied.body.unwrap()["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "app");
        assert_eq!(
            container.get("image"),
            None,
            "only the operator's fields are applied"
        );
        assert_eq!(
            container["envFrom"],
            json!([{"configMapRef": {"name": "orders-hedge-config"}}, {"secretRef": {"name": "orders-hedge-secret"}}])
        );
        assert_eq!(
            container["env"][2],
            json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        );
        assert_eq!(container["ports"][0]["containerPort"], 7946);

        api.clear_log();
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert_eq!(api.writes(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_invalid_spec_sets_degraded_and_waits_for_a_change() {
        let (ctx, api, spanner) = fresh();
        let mut hg = HedgeGroup::test("orders").finalized();
        hg.spec.election.lease_ms = Some(1000);
        hg.spec.election.renew_interval_ms = Some(1000);
        api.seed(&hg);

        let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();

        assert_eq!(action, Action::await_change());
        assert!(spanner.state().calls.is_empty());
        let status = &status_patches(&api)[0]["status"];
        assert_eq!(condition(status, DEGRADED)["status"], "True");
        assert_eq!(condition(status, DEGRADED)["reason"], "InvalidSpec");
        assert_eq!(condition(status, READY)["status"], "False");
        let message = condition(status, DEGRADED)["message"].as_str().unwrap();
        assert!(
            message.contains("renew interval (1s) must be below lease (1s)"),
            "{message}"
        );
        assert_eq!(event_reasons(&api), ["InvalidSpec"]);

        api.clear_log();
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "the same invalid spec is not reported twice"
        );
    }

    #[tokio::test]
    async fn deletion_applies_the_policy_then_removes_the_finalizer() {
        let (ctx, api, spanner) = fresh();
        spanner.update(|s| {
            s.groups.insert("testns/orders".into());
        });
        let mut hg = HedgeGroup::test("orders").finalized().deleting();
        hg.spec.deletion_policy = DeletionPolicy::DropTables;
        api.seed(&hg);

        let action = reconcile_stored(&ctx, &api, "orders").await.unwrap();

        assert_eq!(action, Action::await_change());
        assert_eq!(
            spanner.state().calls,
            ["groups_in_tables", "delete_group_rows", "drop_schema"]
        );
        assert_eq!(event_reasons(&api), ["CleanedUp"]);
        let last = api.exchanges().pop().unwrap();
        assert_eq!(last.method, Method::PATCH);
        assert_eq!(last.uri, format!("{HG}/orders?"));
        assert_eq!(
            last.body,
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "hedge.dev/cleanup"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ]))
        );
        assert_eq!(api.group("orders").metadata.finalizers, Some(vec![]));
    }

    #[tokio::test]
    async fn drop_tables_keeps_tables_that_another_group_uses() {
        for other in ["hedgegroup", "rows"] {
            let (ctx, api, spanner) = fresh();
            let mut hg = HedgeGroup::test("orders").finalized().deleting();
            hg.spec.deletion_policy = DeletionPolicy::DropTables;
            api.seed(&hg);
            match other {
                "hedgegroup" => api.seed(&HedgeGroup::test("billing")),
                _ => spanner.update(|s| {
                    s.groups.insert("elsewhere/jobs".into());
                }),
            }

            reconcile_stored(&ctx, &api, "orders").await.unwrap();

            let state = spanner.state();
            assert_eq!(
                state.calls,
                ["groups_in_tables", "delete_group_rows"],
                "{other}"
            );
            assert!(!state.dropped);
            let note = api
                .exchanges()
                .into_iter()
                .find(|e| e.uri.contains("/events"))
                .and_then(|e| e.body?["note"].as_str().map(str::to_owned))
                .unwrap();
            assert!(note.contains("kept the tables, still used by"), "{note}");
        }
    }

    #[tokio::test]
    async fn retain_touches_no_spanner_data() {
        let (ctx, api, spanner) = fresh();
        api.seed(&HedgeGroup::test("orders").finalized().deleting());
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert!(spanner.state().calls.is_empty());
        assert_eq!(event_reasons(&api), ["CleanedUp"]);
    }

    #[tokio::test]
    async fn a_failing_api_call_goes_through_the_error_policy_and_bumps_the_failure_metric() {
        let (ctx, api, _) = fresh();
        let hg = HedgeGroup::test("orders").finalized();
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
        let status = &status_patches(&api)[0]["status"];
        assert_eq!(condition(status, DEGRADED)["reason"], "KubeWriteFailed");
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

        // A success resets the backoff.
        reconcile_stored(&ctx, &api, "orders").await.unwrap();
        assert_eq!(
            error_policy(hg, &error, ctx.clone()),
            Action::requeue(Duration::from_secs(1))
        );
    }

    #[tokio::test]
    async fn failures_show_on_the_metrics_endpoint() {
        let spanner = Arc::new(FakeProvisioner::with(FakeSpanner {
            fail_next: true,
            ..FakeSpanner::default()
        }));
        let (ctx, api, registry) = Context::test(spanner);
        let hg = HedgeGroup::test("orders").finalized();
        api.seed(&hg);
        let error = reconcile_stored(&ctx, &api, "orders").await.unwrap_err();
        error_policy(Arc::new(hg), &error, ctx.clone());

        let state = crate::server::State::new(registry);
        let text = state.metrics_text();
        assert!(
            text.contains(
                "hedge_operator_reconcile_failures_total{reason=\"SpannerUnavailable\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("hedge_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("hedge_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_crd_is_reported_as_such() {
        let (ctx, api, _) = fresh();
        let groups: kube::Api<HedgeGroup> = kube::Api::all(ctx.client.clone());
        super::check_crd(&groups).await.unwrap();
        api.fail_next(Method::GET, "/hedgegroups", 404);
        let err = super::check_crd(&groups).await.unwrap_err();
        assert!(matches!(err, super::RunError::CrdMissing), "{err}");
        assert!(
            err.to_string()
                .contains("hedge-operator crd | kubectl apply -f -"),
            "{err}"
        );
    }

    /// The measurement of issue #3: a new HedgeGroup reconciled to Ready on the mocked API with a
    /// counting fake Spanner, then one more reconcile of the unchanged group. Prints JSON.
    #[tokio::test]
    async fn measure_a_new_group_to_ready_and_an_unchanged_reconcile() {
        let (ctx, api, spanner) = fresh();
        api.seed(&HedgeGroup::test("orders").with_deployment("web"));
        api.seed(&fixtures::deployment("web"));

        let start = Instant::now();
        let mut reconciles = 0;
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
        });
        println!("{report}");
        assert_eq!(count(&second, true), 0, "{second:#?}");
        assert_eq!(spanner_second.ddl_applied, spanner_first.ddl_applied);
        assert_eq!(api.group("orders").metadata.namespace.as_deref(), Some(NS));
    }
}
