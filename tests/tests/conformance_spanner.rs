//! The election conformance suite on the Cloud Spanner emulator, in real time.
//!
//! Each scenario starts its own emulator and database. Without an emulator the scenarios print a
//! `skipped:` line and pass, unless `HEDGE_REQUIRE_SPANNER=1`.

use std::time::Duration;

use hedge_tests::conformance as c;
use hedge_tests::faults::Fault;
use hedge_tests::spanner_backend::SpannerBackend;

macro_rules! scenario {
    ($name:ident => $scenario:path $(, $arg:expr)*) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(backend) = SpannerBackend::start(false).await else { return };
            $scenario(&backend $(, $arg)*).await;
        }
    };
}

scenario!(single_member_becomes_leader => c::single_member_becomes_leader);
scenario!(two_contenders_share_one_leader => c::contenders_share_one_leader, 2, 3);
scenario!(five_contenders_share_one_leader => c::contenders_share_one_leader, 5, 3);
scenario!(crashed_leader_is_replaced_within_lease_and_poll => c::crashed_leader_is_replaced_within_lease_and_poll);
scenario!(released_lock_is_taken_within_one_poll => c::released_lock_is_taken_within_one_poll);
scenario!(unreachable_store_steps_down_before_anyone_else_acquires =>
    c::failing_renewals_step_down_before_anyone_else_acquires, Fault::Unreachable);
scenario!(slow_store_steps_down_before_anyone_else_acquires =>
    c::failing_renewals_step_down_before_anyone_else_acquires, Fault::Slow(Duration::from_secs(30)));
scenario!(w8_deposed_holder_cannot_renew => c::deposed_holder_cannot_renew);
scenario!(w6_similar_names_never_collide => c::similar_names_never_collide);
scenario!(w7_deleted_row_is_recovered => c::deleted_row_is_recovered);
scenario!(w4_renewal_and_read_in_the_same_instant_do_not_take_over =>
    c::renewal_and_read_in_the_same_instant_do_not_take_over);
scenario!(w5_crash_during_acquire_leaves_a_takeable_lock => c::crash_during_acquire_leaves_a_takeable_lock);
scenario!(several_locks_per_process => c::several_locks_per_process);
scenario!(events_come_once_per_term_in_order => c::events_come_once_per_term_in_order);
