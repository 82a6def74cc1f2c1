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

/// Three seeds of the randomized fault run, each short enough for real time; a failure names its
/// seed, which replays it.
async fn randomized(seed: u64) {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    hedge_tests::conformance::randomized_faults_never_overlap(&backend, seed, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_overlap_seed_7() {
    randomized(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_overlap_seed_11() {
    randomized(11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_overlap_seed_23() {
    randomized(23).await;
}
