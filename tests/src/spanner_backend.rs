//! The Spanner backend of the conformance suite: a fresh emulator and database per scenario,
//! and a client of its own for every member, as separate pods would have.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::ReadWriteTransaction;
use hedge::store::spanner::COMMIT_TIMESTAMP;
use hedge::store::{LockKey, SpannerStore, Store};
use hedge::{DatabasePath, ElectionTimings, TableNames};

use crate::conformance::Backend;
use crate::emulator::Emulator;

/// A scenario's emulator and database.
pub struct SpannerBackend {
    emulator: Emulator,
    db: DatabasePath,
    admin: SpannerStore,
}

impl SpannerBackend {
    /// Starts an emulator with a fresh database holding hedge's schema; `None` when the emulator
    /// is not installed and not required (the harness has printed why).
    pub async fn start(fault_injection: bool) -> Option<Self> {
        let emulator = Emulator::start(fault_injection)
            .await
            .expect("the Spanner emulator starts")?;
        let db = emulator
            .create_database_with_schema(&TableNames::default())
            .await
            .expect("a fresh database with hedge's schema");
        let admin = emulator.store(&db).await.expect("a Spanner client");
        Some(Self {
            emulator,
            db,
            admin,
        })
    }
}

#[async_trait]
impl Backend for SpannerBackend {
    async fn member_store(&self) -> Arc<dyn Store> {
        Arc::new(
            self.emulator
                .store(&self.db)
                .await
                .expect("a Spanner client"),
        )
    }

    async fn delete_lock_row(&self, key: &LockKey) {
        self.admin
            .delete_lock(key)
            .await
            .expect("delete the lock row");
    }

    async fn write_tied_versions(&self, group: &str, key: &str, values: &[&str]) {
        // What a put writes (the versions and the key row's last_seq), for several versions in
        // one commit: they all get its commit timestamp.
        let client = self
            .emulator
            .database_client(&self.db)
            .await
            .expect("a raw client");
        let tables = TableNames::default();
        let (group, key) = (group.to_owned(), key.to_owned());
        let values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        client
            .read_write_transaction()
            .build()
            .run(move |tx: ReadWriteTransaction| {
                let (tables, group, key, values) =
                    (tables.clone(), group.clone(), key.clone(), values.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT last_seq FROM {} WHERE group_name = @g AND log_key = @k",
                                tables.log_keys
                            ))
                            .add_param("g", group.as_str())
                            .add_param("k", key.as_str())
                            .build(),
                        )
                        .await?;
                    let last: Option<i64> = match rows.next().await.transpose()? {
                        Some(row) => Some(row.get("last_seq")?),
                        None => None,
                    };
                    let mut seq = last.unwrap_or(0);
                    let mut mutations = Vec::new();
                    for value in &values {
                        seq += 1;
                        mutations.push(
                            Mutation::new_insert_builder(tables.log.as_str())
                                .set("group_name")
                                .to(group.as_str())
                                .set("log_key")
                                .to(key.as_str())
                                .set("seq")
                                .to(seq)
                                .set("entry_id")
                                .to(uuid::Uuid::new_v4().to_string())
                                .set("value")
                                .to(value.clone())
                                .set("writer")
                                .to("tied-writer")
                                .set("writer_incarnation")
                                .to("tied")
                                .set("committed_at")
                                .to(COMMIT_TIMESTAMP)
                                .build(),
                        );
                    }
                    let key_row = if last.is_some() {
                        Mutation::new_update_builder(tables.log_keys.as_str())
                    } else {
                        Mutation::new_insert_builder(tables.log_keys.as_str())
                            .set("created_at")
                            .to(COMMIT_TIMESTAMP)
                    };
                    mutations.push(
                        key_row
                            .set("group_name")
                            .to(group.as_str())
                            .set("log_key")
                            .to(key.as_str())
                            .set("last_seq")
                            .to(seq)
                            .build(),
                    );
                    tx.buffer(mutations)?;
                    Ok(())
                }
            })
            .await
            .expect("one transaction with the tied versions");
    }

    fn timings(&self) -> ElectionTimings {
        // Shorter than the defaults to keep the suite quick; the same ratios.
        ElectionTimings::from_lease(Duration::from_secs(2))
    }

    fn slack(&self) -> Duration {
        // Emulator round trips (a few ms, more when it retries an aborted transaction) and
        // scheduling on a loaded 2-core machine.
        Duration::from_millis(700)
    }
}
