//! The log and the semaphores across members on the in-memory store: real sockets on
//! loopback, real time.

use hedge_tests::memory_backend::MemoryBackend;
use hedge_tests::messaging::{Failover, Params};
use hedge_tests::storage_peers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_put_is_written_by_the_leader_once() {
    storage_peers::forwarded_put_is_written_by_the_leader_once(
        &MemoryBackend::default(),
        Params::memory(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_puts_during_a_crash_failover_are_written_once() {
    storage_peers::forwarded_puts_during_failover_are_written_once(
        &MemoryBackend::default(),
        Params::memory(),
        Failover::Crash,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_puts_during_a_graceful_failover_are_written_once() {
    storage_peers::forwarded_puts_during_failover_are_written_once(
        &MemoryBackend::default(),
        Params::memory(),
        Failover::Graceful,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_a_waiter_on_another_member() {
    storage_peers::release_wakes_a_waiter_on_another_member(
        &MemoryBackend::default(),
        Params::memory(),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_announcement_a_waiter_waits_for_its_backoff() {
    storage_peers::release_wakes_a_waiter_on_another_member(
        &MemoryBackend::default(),
        Params::memory(),
        false,
    )
    .await;
}
