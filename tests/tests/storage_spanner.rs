//! The log and semaphore conformance suite on the Cloud Spanner emulator, in real time.
//!
//! Each scenario starts its own emulator and database, and gives every member a Spanner client
//! of its own, as separate pods would have. Without an emulator the scenarios print a
//! `skipped:` line and pass, unless `HEDGE_REQUIRE_SPANNER=1`.

use hedge_tests::spanner_backend::SpannerBackend;

hedge_tests::storage_conformance_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    backend = SpannerBackend::start(false).await,
    rounds = 3
);
