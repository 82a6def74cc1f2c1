//! The messaging scenarios on the Cloud Spanner emulator (one client per member, as separate
//! pods would have), real sockets on loopback, real time.
//!
//! Without an emulator the scenarios print a `skipped:` line and pass, unless
//! `HEDGE_REQUIRE_SPANNER=1`.

use hedge_tests::messaging::{self, Failover, Params};
use hedge_tests::spanner_backend::SpannerBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_the_leader_with_its_token() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::send_reaches_the_leader_with_its_token(&backend, Params::spanner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_crash_failovers_run_at_most_once() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::sends_during_failover_run_at_most_once(
        &backend,
        Params::spanner(),
        Failover::Crash,
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_graceful_failovers_run_exactly_once() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::sends_during_failover_run_at_most_once(
        &backend,
        Params::spanner(),
        Failover::Graceful,
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_cancels_its_handler_and_refuses() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::deposed_leader_cancels_its_handler_and_refuses(&backend, Params::spanner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_including_a_new_one() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::broadcast_reaches_every_member_including_a_new_one(&backend, Params::spanner())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_members_broadcasting_concurrently_all_finish() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::concurrent_broadcasts_all_finish(&backend, Params::spanner(), 8, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_reach_every_view() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::departures_reach_every_view(&backend, Params::spanner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_mix() {
    let Some(backend) = SpannerBackend::start(false).await else {
        return;
    };
    messaging::concurrent_streams_never_mix(&backend, Params::spanner()).await;
}
