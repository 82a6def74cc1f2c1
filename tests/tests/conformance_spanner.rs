//! The election conformance suite on the Cloud Spanner emulator, in real time.
//!
//! Each scenario starts its own emulator and database. Without an emulator the scenarios print a
//! `skipped:` line and pass, unless `HEDGE_REQUIRE_SPANNER=1`.

use hedge_tests::spanner_backend::SpannerBackend;

hedge_tests::conformance_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    backend = SpannerBackend::start(false).await,
    rounds = 3
);

/// One seed of the randomized fault run, short enough for real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_overlap() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    hedge_tests::conformance::randomized_faults_never_overlap(&backend, 7, 25).await;
}
