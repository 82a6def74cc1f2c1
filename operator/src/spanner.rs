//! The real [`Provisioner`]: the client crate's schema module (`ensure_schema`, `drop_schema`)
//! and its Spanner store (the leader lock, the member list, a group's rows). Credentials come
//! from the environment as the client crate resolves them: Application Default Credentials (GKE
//! Workload Identity through the metadata server), or `SPANNER_EMULATOR_HOST`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use hedge::DatabasePath;
use hedge::store::schema::{self, SchemaError};
use hedge::store::spanner::SpannerOptions;
use hedge::store::{LockKey, SpannerStore, Store, StoreError, TableNames};
use tokio::sync::Mutex;

use crate::provision::{GroupState, Leader, ProvisionError, Provisioner, SchemaOutcome};

/// The provisioner on Cloud Spanner. Keeps one store (one client and session) per database and
/// table set, so a status refresh does not open a new session every time.
#[derive(Debug, Default)]
pub struct SpannerProvisioner {
    options: SpannerOptions,
    stores: Mutex<HashMap<(DatabasePath, TableNames), SpannerStore>>,
}

impl SpannerProvisioner {
    /// A provisioner that connects with `options`.
    pub fn new(options: SpannerOptions) -> Self {
        Self {
            options,
            stores: Mutex::default(),
        }
    }

    async fn store(&self, db: &DatabasePath, tables: &TableNames) -> Result<SpannerStore, ProvisionError> {
        let key = (db.clone(), tables.clone());
        let mut stores = self.stores.lock().await;
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let store = SpannerStore::connect(db, tables.clone(), &self.options)
            .await
            .map_err(store_error("connecting"))?;
        stores.insert(key, store.clone());
        Ok(store)
    }

    /// Forgets the store of `db` and `tables` (after its tables were dropped, or it failed).
    async fn forget(&self, db: &DatabasePath, tables: &TableNames) {
        self.stores.lock().await.remove(&(db.clone(), tables.clone()));
    }

    /// The timeout of one operation.
    pub fn operation_timeout(&self) -> Duration {
        self.options.operation_timeout
    }
}

fn store_error(step: &'static str) -> impl Fn(StoreError) -> ProvisionError {
    move |e| {
        let message = e.to_string();
        if e.is_transient() {
            ProvisionError::Unavailable { step, message }
        } else {
            ProvisionError::Rejected { step, message }
        }
    }
}

fn schema_error(step: &'static str) -> impl Fn(SchemaError) -> ProvisionError {
    move |e| match e {
        SchemaError::TooNew { found, supported } => ProvisionError::TooNew { found, supported },
        // The admin API's failures (unreachable, permission, a missing database) all arrive as
        // text; retrying with backoff is right for the first and harmless for the others.
        SchemaError::Spanner { .. } => ProvisionError::Unavailable {
            step,
            message: e.to_string(),
        },
        other => ProvisionError::Rejected {
            step,
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl Provisioner for SpannerProvisioner {
    async fn ensure_schema(&self, db: &DatabasePath, tables: &TableNames) -> Result<SchemaOutcome, ProvisionError> {
        let report = schema::ensure_schema(db, tables, &self.options)
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
        db: &DatabasePath,
        tables: &TableNames,
        group: &str,
    ) -> Result<GroupState, ProvisionError> {
        let store = self.store(db, tables).await?;
        let result = async {
            let lock = store
                .lock_state(&LockKey::new(group, LockKey::LEADER))
                .await
                .map_err(store_error("reading the leader lock"))?;
            let members = store
                .list_members(group)
                .await
                .map_err(store_error("reading the members"))?;
            Ok(GroupState {
                leader: lock.and_then(|l| l.holder).map(|h| Leader {
                    id: h.id,
                    token: h.token,
                    since: h.since,
                }),
                members: members.len(),
            })
        }
        .await;
        if result.is_err() {
            // A broken session (or a reconnect after an outage) gets a fresh store next time.
            self.forget(db, tables).await;
        }
        result
    }

    async fn delete_group_rows(
        &self,
        db: &DatabasePath,
        tables: &TableNames,
        group: &str,
    ) -> Result<(), ProvisionError> {
        let store = self.store(db, tables).await?;
        match store.delete_group(group).await {
            Ok(_) | Err(StoreError::MissingTable { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting the group's rows")(e)),
        }
    }

    async fn groups_in_tables(
        &self,
        _db: &DatabasePath,
        _tables: &TableNames,
    ) -> Result<Option<BTreeSet<String>>, ProvisionError> {
        // The client crate cannot list the groups of a table set yet, so the operator cannot
        // prove that no other group uses the tables: DropTables then keeps them.
        Ok(None)
    }

    async fn drop_schema(&self, db: &DatabasePath, tables: &TableNames) -> Result<(), ProvisionError> {
        self.forget(db, tables).await;
        schema::drop_schema(db, tables, &self.options)
            .await
            .map_err(schema_error("dropping the tables"))?;
        Ok(())
    }
}
