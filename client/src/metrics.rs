//! The client's Prometheus metrics, on a [`prometheus_client`] registry the application passes
//! to [`crate::HedgeBuilder::metrics`] (and serves on its own `/metrics`).
//!
//! Every metric is labelled with the group and the lock (or operation) it describes, so one
//! registry can hold several groups. Without a registry the metrics are still counted (a few
//! atomic operations) and readable from the types that own them, which the benchmarks use.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hedge_is_leader` | gauge, 1 while leading | group, lock |
//! | `hedge_fencing_token` | gauge, the current term's token (0 when not leading) | group, lock |
//! | `hedge_leadership_transitions_total` | counter | group, lock, event (`elected`, `lost`) |
//! | `hedge_lost_leadership_total` | counter | group, lock, reason |
//! | `hedge_margin_violations_total` | counter: the store said `Expired` while the local deadline was ahead | group, lock |
//! | `hedge_store_operation_seconds` | histogram | group, operation |
//! | `hedge_store_errors_total` | counter | group, operation, kind ([`crate::StoreError::reason`]) |
//! | `hedge_message_seconds` | histogram of successful sends (to the leader) and broadcast deliveries | group, operation (`send`, `broadcast`) |
//! | `hedge_message_errors_total` | counter | group, operation, kind ([`crate::MessagingError::kind`]) |
//! | `hedge_send_reroutes_total` | counter: attempts of a send re-routed because no handler could have run | group |
//! | `hedge_members` | gauge: members in this member's view | group |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a lock's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// The group.
    pub group: String,
    /// The lock's name.
    pub lock: String,
}

/// Labels of a leadership transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The group.
    pub group: String,
    /// The lock's name.
    pub lock: String,
    /// `elected` or `lost`.
    pub event: &'static str,
}

/// Labels of a lost term.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    /// The group.
    pub group: String,
    /// The lock's name.
    pub lock: String,
    /// Why the term ended.
    pub reason: &'static str,
}

/// Labels of a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The group.
    pub group: String,
    /// The operation (`acquire`, `renew`, `release`, `read_lock`, `heartbeat`, ...).
    pub operation: &'static str,
}

/// Labels of a store error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The group.
    pub group: String,
    /// The operation.
    pub operation: &'static str,
    /// The kind of error.
    pub kind: &'static str,
}

/// Labels of a messaging operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// The group.
    pub group: String,
    /// `send` or `broadcast`.
    pub operation: &'static str,
}

/// Labels of a messaging error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageErrorLabels {
    /// The group.
    pub group: String,
    /// `send` or `broadcast`.
    pub operation: &'static str,
    /// [`crate::MessagingError::kind`].
    pub kind: &'static str,
}

/// Labels of a group-wide metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The group.
    pub group: String,
}

fn message_histogram() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

fn operation_histogram() -> Histogram {
    // 0.5 ms to ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The client's metrics. Cheap to clone: clones share the counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// 1 while this member leads the lock.
    pub is_leader: Family<LockLabels, Gauge>,
    /// The token of the term this member leads, 0 when it leads none.
    pub fencing_token: Family<LockLabels, Gauge>,
    /// Terms won and lost.
    pub transitions: Family<TransitionLabels, Counter>,
    /// Terms lost, by reason.
    pub lost: Family<LossLabels, Counter>,
    /// Renewals the store answered `Expired` while the local deadline was still ahead.
    pub margin_violations: Family<LockLabels, Counter>,
    /// Store operation latency.
    pub store_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Store operation errors by kind.
    pub store_errors: Family<ErrorLabels, Counter>,
    /// Latency of successful sends and broadcast deliveries.
    pub message_seconds: Family<MessageLabels, Histogram, fn() -> Histogram>,
    /// Failed sends and broadcast deliveries by kind.
    pub message_errors: Family<MessageErrorLabels, Counter>,
    /// Send attempts re-routed (not leader, not reachable) before delivery or failure.
    pub send_reroutes: Family<GroupLabels, Counter>,
    /// Members in this member's view.
    pub members: Family<GroupLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            is_leader: Family::default(),
            fencing_token: Family::default(),
            transitions: Family::default(),
            lost: Family::default(),
            margin_violations: Family::default(),
            store_seconds: Family::new_with_constructor(operation_histogram),
            store_errors: Family::default(),
            message_seconds: Family::new_with_constructor(message_histogram),
            message_errors: Family::default(),
            send_reroutes: Family::default(),
            members: Family::default(),
        }
    }
}

impl Metrics {
    /// New metrics, not yet registered anywhere.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers every metric on `registry` (names start with `hedge_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hedge");
        r.register(
            "is_leader",
            "1 while this member leads the lock",
            self.is_leader.clone(),
        );
        r.register(
            "fencing_token",
            "The fencing token of the term this member leads (0 when it leads none)",
            self.fencing_token.clone(),
        );
        r.register(
            "leadership_transitions",
            "Terms won (event=elected) and lost (event=lost)",
            self.transitions.clone(),
        );
        r.register(
            "lost_leadership",
            "Terms lost, by reason",
            self.lost.clone(),
        );
        r.register(
            "margin_violations",
            "Renewals the store answered Expired while the local deadline was still ahead: \
             the safety margin did not cover a clock difference (must stay 0)",
            self.margin_violations.clone(),
        );
        r.register(
            "store_operation_seconds",
            "Latency of store operations",
            self.store_seconds.clone(),
        );
        r.register(
            "store_errors",
            "Store operation errors, by kind",
            self.store_errors.clone(),
        );
        r.register(
            "message_seconds",
            "Latency of successful sends to the leader and broadcast deliveries",
            self.message_seconds.clone(),
        );
        r.register(
            "message_errors",
            "Failed sends and broadcast deliveries, by kind",
            self.message_errors.clone(),
        );
        r.register(
            "send_reroutes",
            "Send attempts re-routed because no handler could have run (not leader, unreachable)",
            self.send_reroutes.clone(),
        );
        r.register(
            "members",
            "Members in this member's view",
            self.members.clone(),
        );
    }

    /// Records one send or broadcast delivery of `group` that took `elapsed`, or its error.
    pub fn observe_message(
        &self,
        group: &str,
        operation: &'static str,
        elapsed: Duration,
        error: Option<&crate::MessagingError>,
    ) {
        match error {
            None => self
                .message_seconds
                .get_or_create(&MessageLabels {
                    group: group.to_owned(),
                    operation,
                })
                .observe(elapsed.as_secs_f64()),
            Some(e) => {
                self.message_errors
                    .get_or_create(&MessageErrorLabels {
                        group: group.to_owned(),
                        operation,
                        kind: e.kind(),
                    })
                    .inc();
            }
        }
    }

    /// Records one store operation of `group` that took `elapsed`, and its error if it failed.
    pub fn observe_store(
        &self,
        group: &str,
        operation: &'static str,
        elapsed: Duration,
        error: Option<&crate::StoreError>,
    ) {
        self.store_seconds
            .get_or_create(&OperationLabels {
                group: group.to_owned(),
                operation,
            })
            .observe(elapsed.as_secs_f64());
        if let Some(e) = error {
            self.store_errors
                .get_or_create(&ErrorLabels {
                    group: group.to_owned(),
                    operation,
                    kind: e.reason(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registered_metrics_are_encoded_with_their_labels() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let labels = LockLabels {
            group: "g".into(),
            lock: "leader".into(),
        };
        metrics.is_leader.get_or_create(&labels).set(1);
        metrics.margin_violations.get_or_create(&labels).inc();
        metrics.observe_store(
            "g",
            "renew",
            Duration::from_millis(3),
            Some(&crate::StoreError::Timeout(Duration::from_secs(1))),
        );
        metrics.observe_message(
            "g",
            "send",
            Duration::from_millis(1),
            Some(&crate::MessagingError::NoLeader {
                waited: Duration::from_secs(1),
                last: None,
            }),
        );
        metrics
            .members
            .get_or_create(&GroupLabels { group: "g".into() })
            .set(3);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "hedge_message_errors_total{group=\"g\",operation=\"send\",kind=\"no_leader\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("hedge_members{group=\"g\"} 3"), "{text}");
        assert!(
            text.contains("hedge_is_leader{group=\"g\",lock=\"leader\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hedge_margin_violations_total{group=\"g\",lock=\"leader\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "hedge_store_errors_total{group=\"g\",operation=\"renew\",kind=\"Timeout\"} 1"
            ),
            "{text}"
        );
    }
}
