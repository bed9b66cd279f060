//! The gateway's metrics, exported at `/admin/metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per process, shared by every actor; counting is a few atomic operations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// `backend="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// Backend name (its URL without credentials).
    pub backend: String,
}

/// `status="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Job status.
    pub status: String,
}

/// `backend="…",outcome="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// Backend name.
    pub backend: String,
    /// `ok`, or the error code.
    pub outcome: String,
}

/// `backend="…",from="…",to="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    /// Backend name.
    pub backend: String,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
}

fn job_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

fn forge_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Every metric of one gateway process.
pub struct Metrics {
    registry: Registry,
    /// Jobs in the queue.
    pub queue_depth: Gauge,
    /// Messages by status, as the database holds them (refreshed at each scrape).
    pub jobs_by_status: Family<StatusLabel, Gauge>,
    /// Jobs this process moved to a terminal status, by status.
    pub jobs_finished: Family<StatusLabel, Counter>,
    /// Seconds from create to a terminal status.
    pub job_duration_seconds: Histogram,
    /// Seconds per txt2img call, per backend.
    pub forge_latency_seconds: Family<BackendLabel, Histogram>,
    /// txt2img calls by backend and outcome.
    pub forge_requests: Family<OutcomeLabel, Counter>,
    /// Breaker state per backend: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<BackendLabel, Gauge>,
    /// Breaker transitions per backend.
    pub breaker_transitions: Family<TransitionLabel, Counter>,
    /// Jobs served the placeholder image because the breaker was open.
    pub placeholders_served: Counter,
    /// Stuck jobs the watchdog marked.
    pub stuck_jobs_marked: Counter,
    /// WebSocket sessions open.
    pub ws_sessions_open: Gauge,
    /// Frames written to WebSockets.
    pub ws_events_sent: Counter,
    /// Frames dropped (coalesced positions, overflowed backlogs).
    pub ws_events_dropped: Counter,
    /// `resync` frames sent because a client fell behind.
    pub ws_resyncs: Counter,
    /// Changes applied to messages (status transitions, progress, client merges).
    pub store_changes: Counter,
    /// Client data merges applied.
    pub store_merges: Counter,
    /// Rows written (one per read-modify-write, however many changes it folded).
    pub store_row_writes: Counter,
    /// Write transactions.
    pub store_batches: Counter,
    /// Compare-and-swap conflicts retried.
    pub store_conflict_retries: Counter,
    /// Changes refused (illegal transitions, invalid patches).
    pub store_refusals: Counter,
    /// Write transactions that failed and rolled back.
    pub store_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("forge_gateway");
        let metrics = Metrics {
            registry: Registry::default(),
            queue_depth: Gauge::default(),
            jobs_by_status: Family::default(),
            jobs_finished: Family::default(),
            job_duration_seconds: job_duration_histogram(),
            forge_latency_seconds: Family::new_with_constructor(forge_latency_histogram),
            forge_requests: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            placeholders_served: Counter::default(),
            stuck_jobs_marked: Counter::default(),
            ws_sessions_open: Gauge::default(),
            ws_events_sent: Counter::default(),
            ws_events_dropped: Counter::default(),
            ws_resyncs: Counter::default(),
            store_changes: Counter::default(),
            store_merges: Counter::default(),
            store_row_writes: Counter::default(),
            store_batches: Counter::default(),
            store_conflict_retries: Counter::default(),
            store_refusals: Counter::default(),
            store_failures: Counter::default(),
        };
        registry.register(
            "queue_depth",
            "Jobs waiting in the queue",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "jobs",
            "Messages by status in the database",
            metrics.jobs_by_status.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs this process moved to a terminal status",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Seconds from create to a terminal status",
            metrics.job_duration_seconds.clone(),
        );
        registry.register(
            "forge_latency_seconds",
            "Seconds per txt2img call",
            metrics.forge_latency_seconds.clone(),
        );
        registry.register(
            "forge_requests",
            "txt2img calls by backend and outcome",
            metrics.forge_requests.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open)",
            metrics.breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker transitions",
            metrics.breaker_transitions.clone(),
        );
        registry.register(
            "placeholders_served",
            "Jobs completed with the placeholder image",
            metrics.placeholders_served.clone(),
        );
        registry.register(
            "stuck_jobs_marked",
            "Stuck jobs marked as errors by the watchdog",
            metrics.stuck_jobs_marked.clone(),
        );
        registry.register(
            "ws_sessions_open",
            "Open WebSocket sessions",
            metrics.ws_sessions_open.clone(),
        );
        registry.register(
            "ws_events_sent",
            "Frames written to WebSockets",
            metrics.ws_events_sent.clone(),
        );
        registry.register(
            "ws_events_dropped",
            "Frames dropped by coalescing or overflow",
            metrics.ws_events_dropped.clone(),
        );
        registry.register(
            "ws_resyncs",
            "Resync frames sent to clients that fell behind",
            metrics.ws_resyncs.clone(),
        );
        registry.register(
            "store_changes",
            "Changes applied to messages",
            metrics.store_changes.clone(),
        );
        registry.register(
            "store_merges",
            "Client data merges applied",
            metrics.store_merges.clone(),
        );
        registry.register(
            "store_row_writes",
            "Message rows written",
            metrics.store_row_writes.clone(),
        );
        registry.register(
            "store_batches",
            "Write transactions",
            metrics.store_batches.clone(),
        );
        registry.register(
            "store_conflict_retries",
            "Compare-and-swap conflicts retried",
            metrics.store_conflict_retries.clone(),
        );
        registry.register(
            "store_refusals",
            "Changes refused",
            metrics.store_refusals.clone(),
        );
        registry.register(
            "store_failures",
            "Write transactions rolled back on error",
            metrics.store_failures.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// A shared handle.
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let metrics = Metrics::new();
        metrics
            .breaker_state
            .get_or_create(&BackendLabel {
                backend: "b1".into(),
            })
            .set(1);
        metrics.store_conflict_retries.inc();
        let text = metrics.encode();
        for name in [
            "forge_gateway_queue_depth",
            "forge_gateway_breaker_state{backend=\"b1\"} 1",
            "forge_gateway_store_conflict_retries_total 1",
            "forge_gateway_ws_sessions_open",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
