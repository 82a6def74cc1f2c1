//! Cross-member wake-ups over the peer transport: a release is announced to the other members
//! on `/hedge/v1/semaphore/released`, and each receiver wakes its waiting acquires of that
//! semaphore at once (they retry their acquire transaction now instead of after their backoff).
//!
//! * The announcement is sent on a task of its own, concurrently to every other member of the
//!   view with a peer address, each bounded by [`NOTIFY_TIMEOUT`]: a release never waits for it.
//! * It carries only the semaphore's name (the group is the authenticated sender's). It grants
//!   nothing: a woken waiter still acquires through the store, so a lost, late, duplicated or
//!   forged-by-a-member announcement costs at most one extra acquire attempt, and a lost one
//!   only time (the waiter's backoff, or the first live permit's expiry, still wakes it).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::debug;

use super::{ReleaseNotifier, Waiters};
use crate::messaging::Node;
use crate::peer::wire::ROUTE_PERMIT_RELEASED;
use crate::peer::{RequestContext, Router, Rpc};
use crate::store::SemaphoreKey;

/// How long one release announcement may take per member.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_millis(500);

/// "A permit of this semaphore was released."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitReleased {
    /// The semaphore's name in the sender's group.
    pub semaphore: String,
}

/// The receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAck {}

/// The release announcement route.
#[derive(Debug)]
pub struct ReleaseRoute;

impl Rpc for ReleaseRoute {
    const PATH: &'static str = ROUTE_PERMIT_RELEASED;
    type Request = PermitReleased;
    type Response = ReleaseAck;
}

/// Announces this member's releases to the other members (installed by
/// [`HedgeBuilder::build`](crate::HedgeBuilder::build) when the peer transport is on).
#[derive(Debug)]
pub(crate) struct PeerReleaseNotifier {
    node: Arc<Node>,
}

impl PeerReleaseNotifier {
    /// Announces through `node`'s transport to the members of its view.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl ReleaseNotifier for PeerReleaseNotifier {
    fn permit_released(&self, key: &SemaphoreKey) {
        let node = &self.node;
        let Some(peers) = node.peers.clone() else {
            return;
        };
        // The receivers wake the semaphore of this name in *their* group, which is this one.
        if key.group != node.group {
            return;
        }
        let targets: Vec<(String, String)> = node
            .view
            .members()
            .iter()
            .filter(|m| m.id != node.me.id)
            .filter_map(|m| m.address.clone().map(|a| (m.id.clone(), a)))
            .collect();
        if targets.is_empty() {
            return;
        }
        // Without a runtime (the process is ending) nobody is left to wake.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let released = PermitReleased {
            semaphore: key.name.clone(),
        };
        runtime.spawn(async move {
            let deadline = Instant::now() + NOTIFY_TIMEOUT;
            let calls = targets.iter().map(|(id, address)| {
                let (peers, released) = (&peers, &released);
                async move {
                    if let Err(e) = peers
                        .call::<ReleaseRoute>(address, released, deadline)
                        .await
                    {
                        debug!(member = %id, error = %e, "release announcement not delivered");
                    }
                }
            });
            futures::future::join_all(calls).await;
        });
    }
}

/// Serves `/hedge/v1/semaphore/released` on `router`: wakes `waiters` of `group`.
pub(crate) fn route(router: Router, waiters: Waiters, group: String) -> Router {
    router.rpc::<ReleaseRoute, _, _>(move |_ctx: RequestContext, released: PermitReleased| {
        let (waiters, group) = (waiters.clone(), group.clone());
        async move {
            // Waking a semaphore nobody waits for (or that does not exist) does nothing.
            waiters.wake(&SemaphoreKey::new(group, released.semaphore));
            Ok(ReleaseAck {})
        }
    })
}
