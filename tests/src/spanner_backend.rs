//! The Spanner backend of the conformance suite: a fresh emulator and database per scenario,
//! and a client of its own for every member, as separate pods would have.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
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
