//! The log and semaphore conformance suite on the memory store, with paused tokio time.

use hedge_tests::memory_backend::MemoryBackend;

hedge_tests::storage_conformance_suite!(
    #[tokio::test(start_paused = true)]
    backend = Some(MemoryBackend::default()),
    rounds = 10
);
