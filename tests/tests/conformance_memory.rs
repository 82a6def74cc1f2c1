//! The election conformance suite on the memory store, with paused tokio time.

use hedge_tests::memory_backend::MemoryBackend;

hedge_tests::conformance_suite!(
    #[tokio::test(start_paused = true)]
    backend = Some(MemoryBackend::default()),
    rounds = 5
);

/// Many seeds of the randomized fault run; paused time makes each take milliseconds.
#[tokio::test(start_paused = true)]
async fn randomized_faults_never_overlap() {
    for seed in 0..20 {
        hedge_tests::conformance::randomized_faults_never_overlap(
            &MemoryBackend::default(),
            seed,
            300,
        )
        .await;
    }
}
