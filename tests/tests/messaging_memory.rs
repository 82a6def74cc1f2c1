//! The messaging scenarios on the in-memory store, real sockets on loopback, real time.

use hedge_tests::memory_backend::MemoryBackend;
use hedge_tests::messaging::{self, Failover, Params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_the_leader_with_its_token() {
    messaging::send_reaches_the_leader_with_its_token(&MemoryBackend::default(), Params::memory())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_crash_failovers_run_at_most_once() {
    messaging::sends_during_failover_run_at_most_once(
        &MemoryBackend::default(),
        Params::memory(),
        Failover::Crash,
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_graceful_failovers_run_exactly_once() {
    messaging::sends_during_failover_run_at_most_once(
        &MemoryBackend::default(),
        Params::memory(),
        Failover::Graceful,
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_cancels_its_handler_and_refuses() {
    messaging::deposed_leader_cancels_its_handler_and_refuses(
        &MemoryBackend::default(),
        Params::memory(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_including_a_new_one() {
    messaging::broadcast_reaches_every_member_including_a_new_one(
        &MemoryBackend::default(),
        Params::memory(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_members_broadcasting_concurrently_all_finish() {
    messaging::concurrent_broadcasts_all_finish(&MemoryBackend::default(), Params::memory(), 8, 20)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_reach_every_view() {
    messaging::departures_reach_every_view(&MemoryBackend::default(), Params::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_mix() {
    messaging::concurrent_streams_never_mix(&MemoryBackend::default(), Params::memory()).await;
}
