//! Membership: the member's own row in the store, and a cached view of every member.
//!
//! The member rows stay the source of truth: they survive leader changes and feed the
//! operator's status. Each member refreshes its own row every heartbeat interval, then reads
//! every live row and reconciles its cached [`MemberView`] with them. On top of that, members
//! **push** their joins and graceful leaves to each other
//! ([`Announcement`]), so a change reaches every view
//! within one round trip instead of one heartbeat interval. A crashed member cannot announce
//! anything: it leaves every view at the first refresh after its row's TTL passes, that is within
//! `ttl + heartbeat_interval` of its last heartbeat.

mod view;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use view::{LeaveReason, Member, MemberView, MembershipEvent};

use crate::config::MembershipTimings;
use crate::messaging::Node;
use crate::messaging::announce::Announcement;
use crate::store::{MemberHeartbeat, MemberRecord, Store, StoreError};

/// How long join and leave announcements may take at most.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(500);

impl Member {
    /// The member a store row describes.
    pub fn from_record(record: &MemberRecord) -> Self {
        Self {
            id: record.id.clone(),
            incarnation: record.incarnation.clone().unwrap_or_default(),
            address: record.address.clone(),
        }
    }
}

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
    run_member(store, group, member, timings, None, shutdown).await
}

/// Refreshes the member's row and, with a `node`, its view: after each heartbeat, the live
/// rows are read and reconciled with the view; after the first one, the join is pushed to
/// every member. On `shutdown`, the leave is pushed, then the row is removed.
pub(crate) async fn run_member(
    store: Arc<dyn Store>,
    group: String,
    member: MemberHeartbeat,
    timings: MembershipTimings,
    node: Option<Arc<Node>>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut next = Instant::now();
    let mut announced = false;
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
        let Some(node) = &node else { continue };
        let read_began = Instant::now();
        let listed = tokio::select! {
            () = shutdown.cancelled() => break,
            r = timeout(timings.heartbeat_interval, store.list_members(&group)) => r,
        };
        match listed {
            Ok(Ok(rows)) => {
                node.view
                    .refresh(rows.iter().map(Member::from_record).collect(), read_began);
                node.count_members();
            }
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => warn!(group, error = %e, "reading the members failed"),
            Err(_) => warn!(group, "reading the members timed out"),
        }
        if !announced {
            announced = true;
            // Push the join so every member sees it now, not at its next refresh.
            let joined = Announcement::Joined {
                member: node.me.clone(),
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = node.announce(joined, ANNOUNCE_TIMEOUT) => {}
            }
        }
    }
    if let Some(node) = &node {
        // Tell everyone first (that is what makes a graceful leave fast); the views remember
        // the departed incarnation, so the row removed just after cannot bring it back.
        node.announce(
            Announcement::Left {
                id: node.me.id.clone(),
                incarnation: node.me.incarnation.clone(),
            },
            ANNOUNCE_TIMEOUT,
        )
        .await;
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
