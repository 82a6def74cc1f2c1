//! The reconciler: observe → plan → apply → status for a live `HedgeGroup`, the deletion policy
//! behind a finalizer for a deleted one, an error policy with exponential backoff. The watches
//! that drive it are in [`crate::watches`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hedge::store::schema::SCHEMA_VERSION;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::allowlist::Allowlist;
use crate::apply::{self, ApplyError};
use crate::conditions::{self, CONFIG_READY, Cond, MEMBERS_SEEN, SCHEMA_READY, Status};
use crate::crd::{DeletionPolicy, FIELD_MANAGER, FINALIZER, HedgeGroup, HedgeGroupStatus};
use crate::metrics::Metrics;
use crate::observe::{self, ObserveError};
use crate::plan::{self, CleanupObserved, Plan};
use crate::provision::{GroupState, ProvisionError, Provisioner};
use crate::spec::{self, SecretSource, ValidGroup};
use crate::status::{self, Report};
use crate::stores::{Stores, Writers};

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
    /// Adding or removing the finalizer failed.
    #[error("failed to {verb} the finalizer of HedgeGroup `{name}`: {source}")]
    Finalizer {
        /// `add` or `remove`.
        verb: &'static str,
        /// The HedgeGroup.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn http_code(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {}", s.code),
        _ => "no answer".into(),
    }
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
            Error::Apply(e) if e.is_conflict() => "Conflict",
            Error::Apply(ApplyError::Kube { .. }) => "KubeWriteFailed",
            Error::Status { .. } => "StatusWriteFailed",
            Error::Finalizer { .. } => "FinalizerFailed",
        }
    }

    /// A message for conditions that stays the same while the failure does: the failed step and
    /// its reason, never the error's own text (which can vary from one attempt to the next, and a
    /// status that changes on every failure would defeat the backoff). The full error goes to the
    /// logs and the events.
    pub fn summary(&self) -> String {
        match self {
            Error::Observe(ObserveError::Kube { kind, name, source }) => {
                format!("failed to read {kind} `{name}` ({})", http_code(source))
            }
            Error::Apply(ApplyError::Kube {
                verb,
                kind,
                name,
                source,
            }) => format!("failed to {verb} {kind} `{name}` ({})", http_code(source)),
            Error::Observe(ObserveError::Provision(e))
            | Error::Apply(ApplyError::Provision(e))
            | Error::Provision(e) => e.summary(),
            Error::Status { name, source } => {
                format!(
                    "failed to write the status of `{name}` ({})",
                    http_code(source)
                )
            }
            Error::Finalizer { verb, name, source } => {
                format!(
                    "failed to {verb} the finalizer of `{name}` ({})",
                    http_code(source)
                )
            }
            Error::MissingNamespace => self.to_string(),
        }
    }
}

/// How often and how patiently the controller works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long after a successful reconcile the group is reconciled again, to refresh the
    /// leader and members in its status (each requeue is jittered by up to ±10%, so that groups
    /// created together do not stay in step).
    pub resync: Duration,
    /// The first retry delay after a failure; it doubles with each further failure.
    pub backoff_base: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// The most reconciles at once.
    pub concurrency: u16,
    /// How long after the configuration is in place a group may have no member before
    /// `MembersSeen` turns false.
    pub members_grace: Duration,
    /// How often a deleted group checks whether its members are gone before its rows go.
    pub cleanup_poll: Duration,
    /// The databases each namespace may name.
    pub allowlist: Allowlist,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            concurrency: 8,
            members_grace: Duration::from_secs(300),
            cleanup_poll: Duration::from_secs(5),
            allowlist: Allowlist::default(),
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
    /// The watch caches a reconcile reads.
    pub stores: Stores,
    /// Their writers, until the watches take them.
    pub(crate) writers: Mutex<Option<Writers>>,
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
        let (stores, writers) = crate::stores::stores();
        Self {
            client,
            recorder,
            provisioner,
            metrics,
            settings,
            stores,
            writers,
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

    /// The resync delay with ±10% jitter.
    fn resync(&self) -> Duration {
        let base = self.settings.resync;
        let jitter = rand::rng().random_range(0.9..=1.1);
        base.mul_f64(jitter)
    }
}

fn key(hg: &HedgeGroup) -> String {
    format!("{}/{}", hg.namespace().unwrap_or_default(), hg.name_any())
}

/// Whether the group needs the finalizer: its deletion policy touches Spanner, or a Deployment
/// carries (or may carry) its configuration and must be given back. A group that needs neither
/// is deleted at once.
pub fn needs_finalizer(hg: &HedgeGroup) -> bool {
    hg.spec.deletion_policy != DeletionPolicy::Retain
        || hg.spec.deployment.is_some()
        || hg.status.as_ref().is_some_and(|s| s.deployment.is_some())
}

fn has_finalizer(hg: &HedgeGroup) -> bool {
    hg.finalizers().iter().any(|f| f == FINALIZER)
}

/// Reconciles one HedgeGroup: applies the deletion policy when it is being deleted, and
/// otherwise adds (or drops) the finalizer as needed and brings everything to the spec.
#[instrument(skip_all, fields(group = %key(&hg)))]
pub async fn reconcile(hg: Arc<HedgeGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.count_and_measure();
    let ns = hg.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<HedgeGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let key = key(&hg);
    let action = if hg.meta().deletion_timestamp.is_some() {
        if !has_finalizer(&hg) {
            return Ok(Action::await_change());
        }
        match cleanup_group(&hg, &ctx).await {
            Ok(Cleanup::Done) => {
                remove_finalizer(&api, &hg).await?;
                Action::await_change()
            }
            Ok(Cleanup::Wait(action)) => action,
            Err(e) => {
                let report = carried_report(hg.status.as_ref(), hg.meta().generation)
                    .failed("CleanupFailed", &e.summary());
                // The status transition publishes the `CleanupFailed` event; the full error goes
                // to the log (error_policy).
                if let Err(status_error) = write_status(&ctx, &hg, &report).await {
                    warn!("could not record the failure in the status: {status_error}");
                }
                return Err(e);
            }
        }
    } else if needs_finalizer(&hg) && !has_finalizer(&hg) {
        // The watch sees the finalizer arrive and reconciles again.
        add_finalizer(&api, &hg).await?;
        Action::await_change()
    } else {
        if !needs_finalizer(&hg) && has_finalizer(&hg) {
            remove_finalizer(&api, &hg).await?;
        }
        reconcile_group(&hg, &ctx).await?
    };
    ctx.reset_backoff(&key);
    Ok(action)
}

/// Adds the finalizer by a JSON patch whose `test` fails if the list changed since it was read.
async fn add_finalizer(api: &Api<HedgeGroup>, hg: &HedgeGroup) -> Result<(), Error> {
    let patch = match &hg.meta().finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(existing) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": existing},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    patch_finalizers(api, hg, "add", patch).await
}

/// Removes the finalizer by a JSON patch that tests its position first.
async fn remove_finalizer(api: &Api<HedgeGroup>, hg: &HedgeGroup) -> Result<(), Error> {
    let Some(i) = hg.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch_finalizers(api, hg, "remove", patch).await
}

async fn patch_finalizers(
    api: &Api<HedgeGroup>,
    hg: &HedgeGroup,
    verb: &'static str,
    patch: serde_json::Value,
) -> Result<(), Error> {
    let name = hg.name_any();
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Finalizer {
        verb,
        name: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api
        .patch::<HedgeGroup>(&name, &PatchParams::default(), &Patch::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing left to finalize.
        Err(kube::Error::Api(s)) if s.code == 404 && verb == "remove" => Ok(()),
        Err(source) => Err(Error::Finalizer { verb, name, source }),
    }
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
    let generation = hg.meta().generation;
    let v = match spec::validate(hg) {
        Ok(v) => v,
        Err(invalid) => {
            // A spec that cannot work: say so and wait for the user to change it.
            info!("invalid spec: {invalid}");
            let report = Report::invalid(old, generation, "InvalidSpec", &invalid.to_string());
            write_status(ctx, hg, &report).await?;
            return Ok(Action::await_change());
        }
    };
    if !ctx
        .settings
        .allowlist
        .allows(&v.namespace, &v.database.to_string())
    {
        let allowed = ctx.settings.allowlist.prefixes_for(&v.namespace);
        let message = format!(
            "database {} is not allowed for namespace {}: the operator admits only {}",
            v.database,
            v.namespace,
            if allowed.is_empty() {
                "no database here".to_owned()
            } else {
                allowed.join(", ")
            }
        );
        info!("{message}");
        write_status(
            ctx,
            hg,
            &Report::invalid(old, generation, "DatabaseNotAllowed", &message),
        )
        .await?;
        return Ok(Action::await_change());
    }
    match converge(&v, hg, ctx).await {
        Ok(report) => {
            write_status(ctx, hg, &report).await?;
            Ok(Action::requeue(ctx.resync()))
        }
        // Changed under the reconcile: read again soon, no degradation to report.
        Err(e) if matches!(&e, Error::Apply(a) if a.is_conflict()) => {
            info!("conflict, reconciling again: {e}");
            Err(e)
        }
        Err(e) => {
            let report = carried_report(old, generation).failed(e.reason(), &e.summary());
            if let Err(status_error) = write_status(ctx, hg, &report).await {
                warn!("could not record the failure in the status: {status_error}");
            }
            Err(e)
        }
    }
}

/// Whether the schema was verified for this generation: `SchemaReady` true for it.
fn schema_checked(hg: &HedgeGroup) -> bool {
    hg.status.as_ref().is_some_and(|s| {
        conditions::find(&s.conditions, SCHEMA_READY)
            .is_some_and(|c| c.status == "True" && c.observed_generation == hg.meta().generation)
            && s.schema_version == Some(SCHEMA_VERSION)
    })
}

/// Reads the group's state (one Spanner call), ensures the schema when needed, observes, plans
/// and applies: the report the status is built from.
async fn converge(v: &ValidGroup, hg: &HedgeGroup, ctx: &Context) -> Result<Report, Error> {
    let provisioner = ctx.provisioner.as_ref();
    // One read tells the leader, the members and the recorded schema version. The schema is
    // ensured only for a new generation, a version other than this operator's, or a missing
    // table: an unchanged group costs this one call.
    let first = provisioner.group_state(&v.target(), &v.group).await;
    let (needs_schema, mut state) = match first {
        Ok(state) => (
            !schema_checked(hg) || state.schema_version != Some(SCHEMA_VERSION),
            Some(state),
        ),
        Err(e) if e.needs_schema() => (true, None),
        Err(e) => return Err(e.into()),
    };
    let (schema, schema_version) = if needs_schema {
        match provisioner.ensure_schema(&v.target()).await {
            Ok(outcome) => {
                if !outcome.applied.is_empty() {
                    info!(from = ?outcome.version_before, to = outcome.version_after, "provisioned the schema");
                }
                if state.is_none() {
                    state = Some(provisioner.group_state(&v.target(), &v.group).await?);
                }
                (
                    schema_ready(outcome.version_after),
                    Some(outcome.version_after),
                )
            }
            // Members of a newer hedge own these tables; this operator leaves them alone.
            Err(e @ ProvisionError::TooNew { found, .. }) => (
                Cond::new(SCHEMA_READY, Status::False, e.reason(), e.to_string()),
                Some(found),
            ),
            Err(e) => return Err(e.into()),
        }
    } else {
        let version = state.as_ref().and_then(|s| s.schema_version);
        (schema_ready(version.unwrap_or(SCHEMA_VERSION)), version)
    };

    let previous = hg.status.as_ref().and_then(|s| s.deployment.as_deref());
    let mut observed = observe::observe(&ctx.client, &ctx.stores, v, previous).await?;
    let mut plan = plan::plan(v, &observed);
    if plan.create_secret {
        // Created first, so the Deployment's config hash covers its value.
        observed.secret = Some(apply::create_secret(&ctx.client, v).await?);
        plan = plan::plan(v, &observed);
    }
    debug!(writes = plan.writes(), "planned");
    apply::apply(&ctx.client, v, &plan).await?;

    let config = config_condition(v, &plan);
    let members = members_condition(
        hg.status.as_ref(),
        state.as_ref(),
        &config,
        ctx.settings.members_grace,
    );
    Ok(Report {
        generation: v.generation,
        group: Some(v.group.clone()),
        schema,
        config,
        members,
        degraded: None,
        schema_version,
        group_state: if schema_version.is_some_and(|s| s > SCHEMA_VERSION) {
            None
        } else {
            state
        },
        deployment: Some(plan.configured_deployment.clone()),
    })
}

fn schema_ready(version: i64) -> Cond {
    Cond::new(
        SCHEMA_READY,
        Status::True,
        "Provisioned",
        format!("the tables are at schema version {version}"),
    )
}

/// `MembersSeen`: true once a member has a live row; unknown while the group waits for its first
/// members; false when none has joined within the grace period after the configuration was in
/// place (a member that cannot reach the same database, say, with other credentials or another
/// emulator host).
fn members_condition(
    old: Option<&HedgeGroupStatus>,
    state: Option<&GroupState>,
    config: &Cond,
    grace: Duration,
) -> Cond {
    let Some(state) = state else {
        return status::carried(old, MEMBERS_SEEN).unwrap_or_else(|| {
            Cond::new(MEMBERS_SEEN, Status::Unknown, "Pending", "not read yet")
        });
    };
    if state.members > 0 {
        return Cond::new(
            MEMBERS_SEEN,
            Status::True,
            "Joined",
            format!("{} live member(s)", state.members),
        );
    }
    let waiting = Cond::new(
        MEMBERS_SEEN,
        Status::Unknown,
        "Waiting",
        "no member has joined yet",
    );
    if config.status != Status::True {
        return waiting;
    }
    // Waiting since the condition last changed (to Unknown), or since now.
    let since = old
        .and_then(|s| conditions::find(&s.conditions, MEMBERS_SEEN))
        .filter(|c| c.status != Status::True.as_str())
        .map(|c| c.last_transition_time.0);
    let waited = since.map_or(Duration::ZERO, |t| {
        Timestamp::now()
            .duration_since(t)
            .try_into()
            .unwrap_or(Duration::ZERO)
    });
    if since.is_some() && waited >= grace {
        return Cond::new(
            MEMBERS_SEEN,
            Status::False,
            "NoMembers",
            format!(
                "no member has joined within {}s of the configuration being in place: check that \
                 the members reach the same Spanner database as the operator (credentials, \
                 emulator host) and that they run",
                grace.as_secs()
            ),
        );
    }
    waiting
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
fn carried_report(old: Option<&HedgeGroupStatus>, generation: Option<i64>) -> Report {
    let pending = |type_| Cond::new(type_, Status::Unknown, "Pending", "not reconciled yet");
    Report {
        generation,
        group: None,
        schema: status::carried(old, SCHEMA_READY).unwrap_or_else(|| pending(SCHEMA_READY)),
        config: status::carried(old, CONFIG_READY).unwrap_or_else(|| pending(CONFIG_READY)),
        members: status::carried(old, MEMBERS_SEEN).unwrap_or_else(|| pending(MEMBERS_SEEN)),
        degraded: None,
        schema_version: None,
        group_state: None,
        deployment: None,
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

/// How far a clean-up got.
enum Cleanup {
    /// Finished: the finalizer can go.
    Done,
    /// Waiting (for the members to leave): run again after this.
    Wait(Action),
}

async fn cleanup_group(hg: &HedgeGroup, ctx: &Context) -> Result<Cleanup, Error> {
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
            return Ok(Cleanup::Done);
        }
    };
    let previous = hg.status.as_ref().and_then(|s| s.deployment.as_deref());
    // The Deployment first, so that no new pod references the objects about to be collected and
    // the members stop (their new pods no longer join).
    let deployments = observe::observe_cleanup_deployments(&ctx.client, &v, previous).await?;
    let mut plan = plan::plan_cleanup(
        &v,
        &CleanupObserved {
            other_users: Vec::new(),
            deployments,
        },
    );
    apply::release(&ctx.client, &v.namespace, &plan.releases).await?;

    let allowed = ctx
        .settings
        .allowlist
        .allows(&v.namespace, &v.database.to_string());
    let note = if !plan.delete_rows {
        match (v.skip_cleanup, v.deletion_policy) {
            (true, _) => format!(
                "skip-cleanup: kept the rows of group {} and the tables (annotation {})",
                v.group,
                crate::crd::SKIP_CLEANUP_ANNOTATION
            ),
            _ => format!("Retain: kept the rows of group {} and the tables", v.group),
        }
    } else if !allowed {
        format!(
            "{:?}: database {} is not allowed for namespace {}; Spanner was not touched",
            v.deletion_policy, v.database, v.namespace
        )
    } else {
        let provisioner = ctx.provisioner.as_ref();
        let mut state = provisioner.group_state(&v.target(), &v.group).await;
        if state
            .as_ref()
            .is_err_and(|e| e.reason() == "SchemaMismatch")
        {
            // An older hedge's tables: bring them to this version (new columns only; nothing of
            // theirs changes, and a table that is not hedge's is refused) to read the members.
            provisioner.ensure_schema(&v.target()).await?;
            state = provisioner.group_state(&v.target(), &v.group).await;
        }
        match state {
            Err(e) if e.is_database_missing() => {
                format!(
                    "the database {} does not exist: nothing to clean up",
                    v.database
                )
            }
            Err(e) if e.is_missing_table() => {
                provisioner.evict(&v.target()).await;
                format!(
                    "the tables of group {} do not exist: nothing to clean up",
                    v.group
                )
            }
            Err(e) => return Err(e.into()),
            Ok(state) if state.members > 0 => {
                // Deleting the rows under running members would only see their heartbeats
                // write them back: wait until they are gone.
                let message = format!(
                    "waiting for {} live member(s) to leave before applying the deletion policy \
                     {:?}",
                    state.members, v.deletion_policy
                );
                let report = carried_report(hg.status.as_ref(), hg.meta().generation)
                    .failed("WaitingForMembers", &message);
                write_status(ctx, hg, &report).await?;
                return Ok(Cleanup::Wait(Action::requeue(ctx.settings.cleanup_poll)));
            }
            Ok(_) => {
                if plan.drop_tables {
                    let other_users =
                        observe::other_table_users(&ctx.stores, provisioner, &v).await?;
                    if !other_users.is_empty() {
                        plan.drop_tables = false;
                        plan.tables_kept_for = other_users;
                    }
                }
                provisioner.delete_group_rows(&v.target(), &v.group).await?;
                if plan.drop_tables {
                    provisioner.drop_schema(&v.target()).await?;
                }
                provisioner.evict(&v.target()).await;
                cleanup_note(&v, &plan)
            }
        }
    };
    info!("{note}");
    publish(
        ctx,
        hg,
        &cleanup_event(EventType::Normal, "CleanedUp", note),
    )
    .await;
    Ok(Cleanup::Done)
}

fn cleanup_note(v: &ValidGroup, plan: &plan::CleanupPlan) -> String {
    match v.deletion_policy {
        DeletionPolicy::DropTables if plan.drop_tables => format!(
            "DropTables: deleted the rows of group {} and dropped the tables",
            v.group
        ),
        DeletionPolicy::DropTables if plan.drop_unconfirmed => format!(
            "DropTables: deleted the rows of group {}; kept the tables, as the annotation {}: \
             \"true\" did not confirm dropping them",
            v.group,
            crate::crd::CONFIRM_DROP_TABLES_ANNOTATION
        ),
        DeletionPolicy::DropTables => format!(
            "DropTables: deleted the rows of group {}; kept the tables, still used by {}",
            v.group,
            plan.tables_kept_for.join(", ")
        ),
        _ => format!("DeleteRows: deleted the rows of group {}", v.group),
    }
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
