//! The log and the semaphores across members on the Cloud Spanner emulator (one client per
//! member, as separate pods would have): real sockets on loopback, real time.
//!
//! Without an emulator the scenarios print a `skipped:` line and pass, unless
//! `HEDGE_REQUIRE_SPANNER=1`.

use hedge_tests::messaging::{Failover, Params};
use hedge_tests::spanner_backend::SpannerBackend;
use hedge_tests::storage_peers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_put_is_written_by_the_leader_once() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    storage_peers::forwarded_put_is_written_by_the_leader_once(&backend, Params::spanner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_puts_during_a_crash_failover_are_written_once() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    storage_peers::forwarded_puts_during_failover_are_written_once(
        &backend,
        Params::spanner(),
        Failover::Crash,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_puts_during_a_graceful_failover_are_written_once() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    storage_peers::forwarded_puts_during_failover_are_written_once(
        &backend,
        Params::spanner(),
        Failover::Graceful,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_a_waiter_on_another_member() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    storage_peers::release_wakes_a_waiter_on_another_member(&backend, Params::spanner(), true)
        .await;
}
