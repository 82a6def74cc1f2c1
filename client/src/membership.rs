//! The member's own row: refreshed on an interval while the member runs, removed when it stops.
//!
//! Membership lives in the store so that it survives leader changes and the operator can count
//! the members for the `HedgeGroup` status. A member whose process dies disappears once its row's
//! TTL passes on the store's clock.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::MembershipTimings;
use crate::store::{MemberHeartbeat, Store, StoreError};

/// Refreshes one member's row until `shutdown`, then removes it.
///
/// A failed heartbeat is logged and retried on the next interval; an error that retrying cannot
/// fix (a missing table) ends the loop with that error.
pub async fn run_heartbeats(
    store: Arc<dyn Store>,
    group: String,
    member: MemberHeartbeat,
    timings: MembershipTimings,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sleep_until(next) => {}
        }
        next = Instant::now() + timings.heartbeat_interval;
        let beat = tokio::select! {
            () = shutdown.cancelled() => break,
            r = timeout(timings.heartbeat_interval, store.heartbeat_member(&group, &member)) => r,
        };
        match beat {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => warn!(group, member = %member.id, error = %e, "member heartbeat failed"),
            Err(_) => warn!(group, member = %member.id, "member heartbeat timed out"),
        }
    }
    // Leave at once rather than linger for a TTL; bounded, since the process is stopping.
    if let Ok(Err(e)) = timeout(
        timings.heartbeat_interval,
        store.remove_member(&group, &member.id),
    )
    .await
    {
        warn!(group, member = %member.id, error = %e, "could not remove the member row; it will expire");
    }
    Ok(())
}
