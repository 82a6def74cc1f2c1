//! The memory backend of the conformance suite: one shared [`MemoryStore`], paused time.
//!
//! Every operation takes a millisecond each way, as a store over a network does: with no
//! latency at all, a release, the nudge it causes and the next grant could all happen in the
//! same instant of paused time, and the strict overlap checker (a term must end *strictly*
//! before the next begins) could not tell a correct handover from an overlap.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hedge::ElectionTimings;
use hedge::store::{ClockSkew, Latency, LockKey, MemoryStore, Store};

use crate::conformance::Backend;

/// How long each operation of the shared store takes: a millisecond each way.
const LATENCY: Latency = Latency {
    request: Duration::from_millis(1),
    reply: Duration::from_millis(1),
};

/// All members share one in-process store; with paused tokio time little slack is needed.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    store: MemoryStore,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        let store = MemoryStore::new();
        store.set_latency(LATENCY);
        Self { store }
    }
}

impl MemoryBackend {
    /// The shared store, for tests that change its latency or clock.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }
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
        // commit instant once the store answers instantly (the only writer meanwhile).
        self.store.set_latency(Latency::default());
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
        self.store.set_latency(LATENCY);
    }

    fn slack(&self) -> Duration {
        // Paused time: store operations take 2 ms (one each way), and the scenarios' own wait
        // loops poll every 5 ms.
        Duration::from_millis(20)
    }

    fn skew_store_clock(&self, skew: ClockSkew) -> bool {
        self.store.set_clock_skew(skew);
        true
    }
}
