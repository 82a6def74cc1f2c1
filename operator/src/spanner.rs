//! The real [`Provisioner`]: the client crate's schema module (`ensure_schema`, `drop_schema`)
//! and its Spanner store (the leader lock, the member list, a group's rows). Credentials come
//! from the environment as the client crate resolves them: Application Default Credentials (GKE
//! Workload Identity through the metadata server), or `SPANNER_EMULATOR_HOST`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hedge::store::schema::{self, SchemaError};
use hedge::store::spanner::SpannerOptions;
use hedge::store::{SpannerStore, StoreError};
use tokio::sync::OnceCell;

use crate::provision::{GroupState, Leader, ProvisionError, Provisioner, SchemaOutcome, Target};

/// One database and table set (and endpoint): its store, connected once.
#[derive(Debug, Default)]
struct Cell {
    store: OnceCell<SpannerStore>,
}

/// The provisioner on Cloud Spanner. Keeps one store (one client and session) per database,
/// table set and endpoint, so a status refresh does not open a new session every time.
///
/// Each target has a cell of its own: the map is locked only to find the cell, and a connect
/// (up to the connect timeout) holds only its own cell, so one unreachable database never stalls
/// the reconciles of the others. A failed connect leaves the cell empty (the next call tries
/// again); a connected store is kept across errors (the client reconnects by itself) and
/// evicted only when its group is cleaned up.
#[derive(Debug, Default)]
pub struct SpannerProvisioner {
    options: SpannerOptions,
    cells: Mutex<HashMap<Target, Arc<Cell>>>,
}

impl SpannerProvisioner {
    /// A provisioner that connects with `options` (a group's emulator host overrides theirs).
    pub fn new(options: SpannerOptions) -> Self {
        Self {
            options,
            cells: Mutex::default(),
        }
    }

    fn options_for(&self, target: &Target) -> SpannerOptions {
        let mut options = self.options.clone();
        if let Some(host) = &target.emulator_host {
            options.emulator_host = Some(host.clone());
        }
        options
    }

    fn cell(&self, target: &Target) -> Arc<Cell> {
        self.cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(target.clone())
            .or_default()
            .clone()
    }

    async fn store(&self, target: &Target) -> Result<SpannerStore, ProvisionError> {
        let cell = self.cell(target);
        let options = self.options_for(target);
        let store = cell
            .store
            .get_or_try_init(|| {
                SpannerStore::connect(&target.database, target.tables.clone(), &options)
            })
            .await
            .map_err(store_error("connecting"))?;
        Ok(store.clone())
    }
}

/// The reason of a store error, for conditions and metrics: the client's classification
/// ([`StoreError::reason`]), prefixed with `Spanner` where the bare word would not say where the
/// failure was (`SpannerUnavailable`, not `Unavailable`). `PermissionDenied` and
/// `DatabaseNotFound` keep their names: they are not Spanner being down.
pub fn store_reason(e: &StoreError) -> &'static str {
    match e.reason() {
        "Unavailable" => "SpannerUnavailable",
        "Timeout" => "SpannerTimeout",
        "Backend" => "SpannerError",
        "InvalidRequest" => "SpannerRejected",
        "Corrupt" => "CorruptRow",
        other => other,
    }
}

fn store_error(step: &'static str) -> impl Fn(StoreError) -> ProvisionError {
    move |e| ProvisionError::Spanner {
        step,
        reason: store_reason(&e),
        message: e.to_string(),
    }
}

fn schema_error(step: &'static str) -> impl Fn(SchemaError) -> ProvisionError {
    move |e| match e {
        SchemaError::TooNew { found, supported } => ProvisionError::TooNew { found, supported },
        SchemaError::Spanner { ref source, .. } => ProvisionError::Spanner {
            step,
            reason: store_reason(source),
            message: e.to_string(),
        },
        other => ProvisionError::Spanner {
            step,
            reason: other.reason(),
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl Provisioner for SpannerProvisioner {
    async fn ensure_schema(&self, target: &Target) -> Result<SchemaOutcome, ProvisionError> {
        // On the cached store's own connection: a check per new generation must not open a new
        // client each time.
        let store = self.store(target).await?;
        let report = store
            .ensure_schema()
            .await
            .map_err(schema_error("provisioning the schema"))?;
        Ok(SchemaOutcome {
            version_before: report.version_before,
            version_after: report.version_after,
            applied: report.applied,
        })
    }

    async fn group_state(
        &self,
        target: &Target,
        group: &str,
    ) -> Result<GroupState, ProvisionError> {
        let store = self.store(target).await?;
        // One strong query: the leader, the live members and the recorded schema version.
        let status = store
            .group_status(group)
            .await
            .map_err(store_error("reading the group's status"))?;
        Ok(GroupState {
            leader: status.leader.map(|h| Leader {
                id: h.id,
                token: h.token,
                since: h.since,
            }),
            members: usize::try_from(status.live_members).unwrap_or(usize::MAX),
            schema_version: status.schema_version,
        })
    }

    async fn delete_group_rows(&self, target: &Target, group: &str) -> Result<(), ProvisionError> {
        let store = self.store(target).await?;
        match store.delete_group(group).await {
            Ok(_) | Err(StoreError::MissingTable { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting the group's rows")(e)),
        }
    }

    async fn groups_in_tables(
        &self,
        target: &Target,
    ) -> Result<Option<BTreeSet<String>>, ProvisionError> {
        let store = self.store(target).await?;
        match store.groups().await {
            Ok(groups) => Ok(Some(groups)),
            // No tables, no other group: nothing to protect.
            Err(StoreError::MissingTable { .. }) => Ok(Some(BTreeSet::new())),
            Err(e) => Err(store_error("listing the groups that use the tables")(e)),
        }
    }

    async fn drop_schema(&self, target: &Target) -> Result<(), ProvisionError> {
        schema::drop_schema(&target.database, &target.tables, &self.options_for(target))
            .await
            .map_err(schema_error("dropping the tables"))?;
        self.evict(target).await;
        Ok(())
    }

    async fn evict(&self, target: &Target) {
        self.cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(target);
    }
}

// Against the Cloud Spanner emulator (each test starts its own, or prints `skipped: ...`).
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hedge::store::schema::{self, SCHEMA_VERSION};
    use hedge::store::{LockKey, MemberHeartbeat, Store, TableNames};
    use hedge_tests::require_emulator;
    use http::Method;
    use serde_json::json;

    use super::SpannerProvisioner;
    use crate::conditions::{self, READY};
    use crate::controller::{Context, Settings, reconcile};
    use crate::crd::{CONFIRM_DROP_TABLES_ANNOTATION, DeletionPolicy, HedgeGroup};
    use crate::fixtures::{ApiServerVerifier, NS};
    use crate::metrics::Metrics;
    use crate::provision::Provisioner;

    fn target(db: &hedge::DatabasePath, tables: &TableNames) -> crate::provision::Target {
        crate::provision::Target {
            database: db.clone(),
            tables: tables.clone(),
            emulator_host: None,
        }
    }

    fn context(provisioner: Arc<SpannerProvisioner>) -> (Arc<Context>, ApiServerVerifier) {
        let (client, api) = ApiServerVerifier::start();
        let recorder =
            kube::runtime::events::Recorder::new(client.clone(), "hedge-operator".into());
        let ctx = Context::new(
            client,
            recorder,
            provisioner,
            Metrics::default(),
            Settings::default(),
        );
        (Arc::new(ctx), api)
    }

    #[tokio::test]
    async fn every_table_is_created_once_and_a_second_run_changes_nothing() {
        let emulator = require_emulator!();
        let db = emulator.create_database().await.unwrap();
        let tables = TableNames::default();
        let provisioner = SpannerProvisioner::new(emulator.options());

        let first = provisioner
            .ensure_schema(&target(&db, &tables))
            .await
            .unwrap();
        assert_eq!(first.version_before, None);
        assert_eq!(first.version_after, SCHEMA_VERSION);
        assert_eq!(first.applied, schema::ddl(&tables));

        let second = provisioner
            .ensure_schema(&target(&db, &tables))
            .await
            .unwrap();
        assert_eq!(second.version_before, Some(SCHEMA_VERSION));
        assert!(second.applied.is_empty(), "{:?}", second.applied);

        // Every table answers.
        let state = provisioner
            .group_state(&target(&db, &tables), "ns/g")
            .await
            .unwrap();
        assert_eq!((state.leader, state.members), (None, 0));
    }

    /// The operator's status read is one query, and tells a missing table apart.
    #[tokio::test]
    async fn the_group_status_is_one_read_of_leader_members_and_schema_version() {
        let emulator = require_emulator!();
        let db = emulator.create_database().await.unwrap();
        let tables = TableNames::default();
        let provisioner = SpannerProvisioner::new(emulator.options());

        let missing = provisioner
            .group_state(&target(&db, &tables), "ns/g")
            .await
            .unwrap_err();
        assert!(missing.is_missing_table(), "{missing}");

        provisioner
            .ensure_schema(&target(&db, &tables))
            .await
            .unwrap();
        let empty = provisioner
            .group_state(&target(&db, &tables), "ns/g")
            .await
            .unwrap();
        assert_eq!(
            (empty.leader, empty.members, empty.schema_version),
            (None, 0, Some(SCHEMA_VERSION))
        );

        let store = emulator.store(&db).await.unwrap();
        let token = match store
            .acquire(
                &LockKey::new("ns/g", LockKey::LEADER),
                &"g-0".into(),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        {
            hedge::store::AcquireOutcome::Granted { token } => token,
            held => panic!("{held:?}"),
        };
        for (id, ttl) in [("g-0", 60), ("g-1", 60), ("g-2", 0)] {
            let member = MemberHeartbeat {
                id: id.into(),
                incarnation: hedge::store::new_incarnation(),
                address: None,
                ttl: Duration::from_millis(ttl * 1000 + 1),
            };
            store.heartbeat_member("ns/g", &member).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let state = provisioner
            .group_state(&target(&db, &tables), "ns/g")
            .await
            .unwrap();
        let leader = state.leader.unwrap();
        assert_eq!((leader.id.as_str(), leader.token), ("g-0", token));
        assert_eq!(state.members, 2, "the expired member does not count");
        // Another group in the same tables sees none of it.
        let other = provisioner
            .group_state(&target(&db, &tables), "ns/other")
            .await
            .unwrap();
        assert_eq!((other.leader, other.members), (None, 0));
    }

    /// A table of the set that exists with another role's columns is not hedge's to change or
    /// drop: provisioning and dropping refuse it, naming the table and what differs.
    #[tokio::test]
    async fn a_table_that_is_not_hedges_is_neither_changed_nor_dropped() {
        let emulator = require_emulator!();
        let db = emulator.create_database().await.unwrap();
        // `shared` is a member table of one table set...
        let theirs = TableNames {
            locks: "a_locks".into(),
            members: "shared".into(),
            schema: "a_schema".into(),
            log_keys: "a_log_keys".into(),
            log: "a_log".into(),
            semaphores: "a_semaphores".into(),
            permits: "a_permits".into(),
        };
        schema::ensure_schema(&db, &theirs, &emulator.options())
            .await
            .unwrap();
        // ...which another set would use as its lock table.
        let ours = TableNames {
            locks: "shared".into(),
            members: "b_members".into(),
            schema: "b_schema".into(),
            log_keys: "b_log_keys".into(),
            log: "b_log".into(),
            semaphores: "b_semaphores".into(),
            permits: "b_permits".into(),
        };
        let provisioner = SpannerProvisioner::new(emulator.options());
        let refused = provisioner
            .ensure_schema(&target(&db, &ours))
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), "ForeignTable", "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains("table `shared` exists but is not hedge's locks table")
                && message.contains("missing columns")
                && message.contains("member_id"),
            "{message}"
        );
        let refused = provisioner
            .drop_schema(&target(&db, &ours))
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), "ForeignTable", "{refused}");
        // Nothing was created or dropped: the other set still works, ours has no tables.
        let store = emulator.store_with_tables(&db, theirs).await.unwrap();
        assert!(store.groups().await.is_ok());
        let mismatch = provisioner
            .group_state(&target(&db, &ours), "ns/g")
            .await
            .unwrap_err();
        assert!(mismatch.needs_schema(), "{mismatch}");
    }

    #[tokio::test]
    async fn an_older_schema_is_upgraded() {
        let emulator = require_emulator!();
        let db = emulator.create_database().await.unwrap();
        let tables = TableNames::default();
        schema::ensure_schema_version(&db, &tables, &emulator.options(), 1)
            .await
            .unwrap();
        let provisioner = SpannerProvisioner::new(emulator.options());

        let upgrade = provisioner
            .ensure_schema(&target(&db, &tables))
            .await
            .unwrap();

        assert_eq!(upgrade.version_before, Some(1));
        assert_eq!(upgrade.version_after, SCHEMA_VERSION);
        // The member table (version 2), the incarnation columns (version 3), and the log and
        // semaphore tables with the log's index (version 4) are new.
        assert_eq!(
            upgrade.applied.len(),
            8,
            "only what version 1 lacks: {:?}",
            upgrade.applied
        );
        assert!(upgrade.applied[0].starts_with("CREATE TABLE hedge_members"));
        assert!(upgrade.applied[1].contains("ADD COLUMN holder_incarnation"));
        assert!(upgrade.applied[2].contains("ADD COLUMN incarnation"));
        assert!(upgrade.applied[3].starts_with("CREATE TABLE hedge_log_keys"));
        assert!(upgrade.applied[7].starts_with("CREATE TABLE hedge_permits"));
    }

    /// The whole reconcile on the mocked API and the emulator: Ready, the live leader in the
    /// status, and then a reconcile that writes nothing. Prints the measurement as JSON.
    #[tokio::test]
    async fn the_status_shows_the_leader_and_token_of_a_live_election() {
        let emulator = require_emulator!();
        let db = emulator.create_database().await.unwrap();
        let provisioner = Arc::new(SpannerProvisioner::new(emulator.options()));
        let (ctx, api) = context(provisioner);
        let mut hg = HedgeGroup::test("orders").finalized();
        hg.spec.database = db.to_string();
        api.seed(&hg);

        let start = Instant::now();
        ctx.sync_stores(&api);
        reconcile(Arc::new(api.group("orders")), ctx.clone())
            .await
            .unwrap();
        let to_ready = start.elapsed();
        let status = api.group("orders").status.unwrap();
        assert!(
            conditions::is_true(&status.conditions, READY),
            "{status:#?}"
        );
        assert_eq!(status.schema_version, Some(SCHEMA_VERSION));
        assert_eq!(status.leader, None);

        // A member wins the election, straight through the store.
        let store = emulator.store(&db).await.unwrap();
        let group = format!("{NS}/orders");
        let token = match store
            .acquire(
                &LockKey::new(group.as_str(), LockKey::LEADER),
                &"orders-0".into(),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        {
            hedge::store::AcquireOutcome::Granted { token } => token,
            held => panic!("{held:?}"),
        };
        for id in ["orders-0", "orders-1"] {
            let member = MemberHeartbeat {
                id: id.into(),
                incarnation: hedge::store::new_incarnation(),
                address: Some("10.0.0.1:7946".into()),
                ttl: Duration::from_secs(60),
            };
            store.heartbeat_member(&group, &member).await.unwrap();
        }

        api.clear_log();
        ctx.sync_stores(&api);
        reconcile(Arc::new(api.group("orders")), ctx.clone())
            .await
            .unwrap();
        let status = api.group("orders").status.unwrap();
        assert_eq!(status.leader.as_deref(), Some("orders-0"));
        assert_eq!(status.token, Some(i64::try_from(token).unwrap()));
        assert_eq!(status.members, Some(2));
        assert!(status.leader_since.is_some());
        let events: Vec<String> = api
            .exchanges()
            .into_iter()
            .filter(|e| e.method == Method::POST)
            .filter_map(|e| e.body?["reason"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(events, ["LeaderElected"]);

        api.clear_log();
        let start = Instant::now();
        ctx.sync_stores(&api);
        reconcile(Arc::new(api.group("orders")), ctx.clone())
            .await
            .unwrap();
        let unchanged = start.elapsed();
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "an unchanged group makes no writes"
        );
        println!(
            "{}",
            json!({
                "measurement": "operator_reconcile_emulator",
                "new_group_to_ready_ms": to_ready.as_secs_f64() * 1e3,
                "unchanged_reconcile_ms": unchanged.as_secs_f64() * 1e3,
                "unchanged_reconcile_api_calls": api.exchanges().len(),
                "unchanged_reconcile_api_writes": api.writes().len(),
                "leader": status.leader,
                "token": status.token,
            })
        );
    }

    #[tokio::test]
    async fn delete_rows_removes_only_the_groups_rows_and_drop_tables_keeps_shared_tables() {
        let emulator = require_emulator!();
        let db = emulator
            .create_database_with_schema_default()
            .await
            .unwrap();
        let store = emulator.store(&db).await.unwrap();
        for group in [format!("{NS}/orders"), "elsewhere/jobs".to_owned()] {
            store
                .acquire(
                    &LockKey::new(group.as_str(), LockKey::LEADER),
                    &"m".into(),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
        }
        let provisioner = Arc::new(SpannerProvisioner::new(emulator.options()));
        let (ctx, api) = context(provisioner.clone());

        let mut hg = HedgeGroup::test("orders").finalized().deleting();
        hg.spec.database = db.to_string();
        hg.spec.deletion_policy = DeletionPolicy::DropTables;
        hg.metadata
            .annotations
            .get_or_insert_default()
            .insert(CONFIRM_DROP_TABLES_ANNOTATION.into(), "true".into());
        api.seed(&hg);
        ctx.sync_stores(&api);
        reconcile(Arc::new(api.group("orders")), ctx.clone())
            .await
            .unwrap();

        let orders = store
            .lock_state(&LockKey::new(format!("{NS}/orders"), LockKey::LEADER))
            .await
            .unwrap();
        assert_eq!(orders, None, "the group's rows are gone");
        let jobs = store
            .lock_state(&LockKey::new("elsewhere/jobs", LockKey::LEADER))
            .await
            .unwrap();
        assert!(
            jobs.is_some(),
            "another group's rows stay, and so do the tables"
        );
        assert!(
            !api.has_group("orders"),
            "the finalizer went, and the group with it"
        );

        // Dropping the tables themselves (what DropTables does once nothing else uses them).
        provisioner
            .drop_schema(&target(&db, &TableNames::default()))
            .await
            .unwrap();
        let gone = store
            .lock_state(&LockKey::new("elsewhere/jobs", LockKey::LEADER))
            .await;
        assert!(
            matches!(gone, Err(hedge::StoreError::MissingTable { .. })),
            "{gone:?}"
        );
        provisioner
            .drop_schema(&target(&db, &TableNames::default()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn drop_tables_drops_them_when_no_other_group_has_rows() {
        let emulator = require_emulator!();
        let db = emulator
            .create_database_with_schema_default()
            .await
            .unwrap();
        let store = emulator.store(&db).await.unwrap();
        store
            .acquire(
                &LockKey::new(format!("{NS}/orders"), LockKey::LEADER),
                &"m".into(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let provisioner = Arc::new(SpannerProvisioner::new(emulator.options()));
        let (ctx, api) = context(provisioner);
        let mut hg = HedgeGroup::test("orders").finalized().deleting();
        hg.spec.database = db.to_string();
        hg.spec.deletion_policy = DeletionPolicy::DropTables;
        hg.metadata
            .annotations
            .get_or_insert_default()
            .insert(CONFIRM_DROP_TABLES_ANNOTATION.into(), "true".into());
        api.seed(&hg);
        ctx.sync_stores(&api);
        reconcile(Arc::new(api.group("orders")), ctx.clone())
            .await
            .unwrap();
        let gone = store
            .lock_state(&LockKey::new(format!("{NS}/orders"), LockKey::LEADER))
            .await;
        assert!(
            matches!(gone, Err(hedge::StoreError::MissingTable { .. })),
            "the only group's tables are dropped: {gone:?}"
        );
        assert!(
            !api.has_group("orders"),
            "the finalizer went, and the group with it"
        );
    }
}
