//! The memory backend of the conformance suite: one shared [`MemoryStore`], paused time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hedge::ElectionTimings;
use hedge::store::{LockKey, MemoryStore, Store};

use crate::conformance::Backend;

/// All members share one in-process store; with paused tokio time no slack is needed.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    store: MemoryStore,
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn member_store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn delete_lock_row(&self, key: &LockKey) {
        self.store.delete_lock_row(key);
    }

    fn timings(&self) -> ElectionTimings {
        ElectionTimings::default()
    }

    async fn write_tied_versions(&self, group: &str, key: &str, values: &[&str]) {
        // The store's clock stands still under paused time: consecutive puts share their
        // commit instant.
        let writer = hedge::Candidate::new("tied-writer");
        for value in values {
            let request = hedge::store::PutRequest {
                key: key.to_owned(),
                value: value.as_bytes().to_vec(),
                writer: writer.clone(),
                token: None,
                mode: hedge::store::PutMode::Append,
                request_id: None,
                fence: None,
            };
            self.store.put(group, &request).await.expect("put");
        }
    }

    fn slack(&self) -> Duration {
        // Paused time: store operations take no time at all; only the 5 ms polling of the
        // scenarios' own wait loops is added.
        Duration::from_millis(10)
    }
}
