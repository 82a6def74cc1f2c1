//! Messaging metrics (prometheus-client): send and broadcast latency, errors by kind, and the
//! size of the membership view.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`MessagingError::kind`](super::MessagingError::kind).
    pub kind: String,
}

/// The messaging metrics of one member. Clones share the values.
#[derive(Clone, Debug)]
pub struct MessagingMetrics {
    /// Seconds from `send` to its reply (successful sends).
    pub send_seconds: Histogram,
    /// Failed sends by error kind.
    pub send_errors: Family<ErrorLabels, Counter>,
    /// Times a send was re-routed (not leader, unreachable) before it was delivered or failed.
    pub send_reroutes: Counter,
    /// Seconds of one broadcast delivery (successful ones).
    pub broadcast_seconds: Histogram,
    /// Failed broadcast deliveries by error kind.
    pub broadcast_errors: Family<ErrorLabels, Counter>,
    /// Members in this member's view.
    pub members: Gauge,
}

impl Default for MessagingMetrics {
    fn default() -> Self {
        // 50 µs to ~26 s.
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 20);
        Self {
            send_seconds: Histogram::new(buckets()),
            send_errors: Family::default(),
            send_reroutes: Counter::default(),
            broadcast_seconds: Histogram::new(buckets()),
            broadcast_errors: Family::default(),
            members: Gauge::default(),
        }
    }
}

impl MessagingMetrics {
    /// Registers the metrics (prefix `hedge_`) on `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hedge_send_seconds",
            "Latency of successful sends to the leader",
            self.send_seconds.clone(),
        );
        registry.register(
            "hedge_send_errors",
            "Failed sends by kind",
            self.send_errors.clone(),
        );
        registry.register(
            "hedge_send_reroutes",
            "Sends re-routed to another member",
            self.send_reroutes.clone(),
        );
        registry.register(
            "hedge_broadcast_seconds",
            "Latency of successful broadcast deliveries",
            self.broadcast_seconds.clone(),
        );
        registry.register(
            "hedge_broadcast_errors",
            "Failed broadcast deliveries by kind",
            self.broadcast_errors.clone(),
        );
        registry.register(
            "hedge_members",
            "Members in this member's view",
            self.members.clone(),
        );
    }

    pub(crate) fn send_error(&self, kind: &str) {
        self.send_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn broadcast_error(&self, kind: &str) {
        self.broadcast_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
