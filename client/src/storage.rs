//! The options of the log and the semaphores, and the hooks the peer transport fills in.
//!
//! Two things use the member-to-member transport, and work without it:
//!
//! * forwarding a follower's put through the leader ([`crate::kv::PutForwarder`], implemented
//!   by [`crate::kv::forward`]); without a forwarder, or when no leader can be reached, puts
//!   are written directly;
//! * waking the waiters of *other* members at once when a permit is released
//!   ([`crate::semaphore::ReleaseNotifier`] to announce, implemented by
//!   [`crate::semaphore::notify`]; [`crate::Hedge::wake_semaphore_waiters`] on receipt);
//!   without it, a waiter in another process retries with backoff (at most
//!   [`PermitTimings::max_backoff`](crate::semaphore::PermitTimings::max_backoff) apart, and at
//!   the moment the first live permit would expire). Waiters in the same process are always
//!   woken at once.
//!
//! [`HedgeBuilder::build`](crate::HedgeBuilder::build) installs both hooks when the peer
//! transport is on, unless the options already carry hooks of the application's own.

use std::sync::Arc;
use std::time::Duration;

use crate::kv::{PutForwarder, PutRouting};
use crate::semaphore::{PermitTimings, ReleaseNotifier};

/// Options of the log and the semaphores (see [`crate::HedgeBuilder::storage`]).
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// How puts reach the store by default. Default [`PutRouting::Direct`].
    pub put_routing: PutRouting,
    /// How long a put keeps retrying transient store errors (with the same request id).
    /// Default 10 s.
    pub put_timeout: Duration,
    /// The permits' lease and renewal, and the waiters' backoff. Default
    /// [`PermitTimings::default`] (a 5 s lease).
    pub permit_timings: PermitTimings,
    /// Sends followers' puts to the leader. Default none; the peer transport's when it is on.
    pub forwarder: Option<Arc<dyn PutForwarder>>,
    /// Announces released permits to the other members. Default none; the peer transport's
    /// when it is on.
    pub release_notifier: Option<Arc<dyn ReleaseNotifier>>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            put_routing: PutRouting::Direct,
            put_timeout: Duration::from_secs(10),
            permit_timings: PermitTimings::default(),
            forwarder: None,
            release_notifier: None,
        }
    }
}
