//! The operator's Prometheus metrics (prometheus-client): reconciles, failures by reason, and
//! reconcile durations, under the `hedge_operator_` prefix.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The error's reason, as in the `Degraded` condition (e.g. `SpannerUnavailable`).
    pub reason: String,
}

/// The labels of a watch error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watched resource (`hedgegroups`, `deployments`, ...).
    pub watch: String,
}

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles started (`hedge_operator_reconciles_total`).
    pub reconciles: Counter,
    /// Reconciles that failed, by reason (`hedge_operator_reconcile_failures_total`).
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile durations in seconds (`hedge_operator_reconcile_duration_seconds`).
    pub duration: Histogram,
    /// Watch and queue errors, by watched resource (`hedge_operator_watch_errors_total`).
    pub watch_errors: Family<WatchLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 5 ms .. ~20 s: a reconcile is a few API calls and Spanner reads, a schema upgrade
            // takes seconds.
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            watch_errors: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` under the `hedge_operator` prefix.
    #[must_use]
    pub fn register(self, registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("hedge_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            self.duration.clone(),
        );
        r.register(
            "watch_errors",
            "Watch and queue errors, by watched resource",
            self.watch_errors.clone(),
        );
        self
    }

    /// Counts a watch error on `watch`.
    pub fn watch_error(&self, watch: &str) {
        self.watch_errors
            .get_or_create(&WatchLabels {
                watch: watch.to_owned(),
            })
            .inc();
    }

    /// The reconciles started so far.
    pub fn reconciles_started(&self) -> u64 {
        self.reconciles.get()
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn count_and_measure(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Counts a failure with `reason`.
    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The failures counted with `reason`.
    pub fn failures_with(&self, reason: &str) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .get()
    }
}

/// Records a reconcile's duration when dropped, so early returns are measured too.
#[derive(Debug)]
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
