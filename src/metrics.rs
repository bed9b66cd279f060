//! The gateway's metrics, exported at `/admin/metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per process, shared by every actor; counting is a few atomic operations.
//! Each metric is declared once below (name, type, help); the macro writes the field, its
//! construction and its registration, so the three cannot drift apart.

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

/// `model="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The checkpoint's name, as Forge reports it.
    pub model: String,
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

/// `reason="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

impl ReasonLabel {
    /// The label for `reason`.
    pub fn of(reason: &str) -> Self {
        ReasonLabel {
            reason: reason.to_owned(),
        }
    }
}

fn job_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

fn forge_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

macro_rules! metrics {
    ($( $(#[doc = $doc:literal])* $field:ident : $kind:ty = $make:expr, $name:literal, $help:literal; )*) => {
        /// Every metric of one gateway process.
        pub struct Metrics {
            registry: Registry,
            $( $(#[doc = $doc])* pub $field: $kind, )*
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("forge_gateway");
                $( let $field: $kind = $make; registry.register($name, $help, $field.clone()); )*
                Metrics { registry, $( $field, )* }
            }
        }
    };
}

metrics! {
    /// Jobs in the queue.
    queue_depth: Gauge = Gauge::default(), "queue_depth", "Jobs waiting in the queue";
    /// Messages waiting or running, by status, as the database holds them (counted at each
    /// scrape over pending rows only, by index).
    jobs_by_status: Family<StatusLabel, Gauge> = Family::default(), "jobs", "Messages waiting or running in the database, by status (finished ones: jobs_finished_total)";
    /// Jobs this process moved to a terminal status, by status.
    jobs_finished: Family<StatusLabel, Counter> = Family::default(), "jobs_finished", "Jobs this process moved to a terminal status";
    /// Seconds from create to a terminal status.
    job_duration_seconds: Histogram = job_duration_histogram(), "job_duration_seconds", "Seconds from create to a terminal status";
    /// Jobs that could not be started (a row that cannot be read or written) and were failed.
    jobs_unstartable: Counter = Counter::default(), "jobs_unstartable", "Jobs failed because their record could not be started";
    /// Seconds per txt2img call, per backend.
    forge_latency_seconds: Family<BackendLabel, Histogram> = Family::new_with_constructor(forge_latency_histogram), "forge_latency_seconds", "Seconds per txt2img call";
    /// txt2img calls by backend and outcome.
    forge_requests: Family<OutcomeLabel, Counter> = Family::default(), "forge_requests", "txt2img calls by backend and outcome";
    /// Breaker state per backend: 0 closed, 1 open, 2 half-open.
    breaker_state: Family<BackendLabel, Gauge> = Family::default(), "breaker_state", "Circuit breaker state (0 closed, 1 open, 2 half-open)";
    /// Breaker transitions per backend.
    breaker_transitions: Family<TransitionLabel, Counter> = Family::default(), "breaker_transitions", "Circuit breaker transitions";
    /// Backend slots this process's workers hold now (taken before a job, given back after).
    forge_slots_held: Family<BackendLabel, Gauge> = Family::default(), "forge_slots_held", "Backend slots this process holds now (FORGE_SLOTS per backend across every process)";
    /// Slot leases found lapsed and taken by another process while this one still held them.
    forge_slots_lost: Family<BackendLabel, Counter> = Family::default(), "forge_slots_lost", "Slot leases this process found lost (Redis forgot them, or its renewals failed for a whole lease)";
    /// Jobs handed to another backend after a call that failed before generating.
    forge_failovers: Counter = Counter::default(), "forge_failovers", "Jobs whose first call failed before generating (refused, reset, 5xx) and that went to another backend";
    /// Jobs served the placeholder image because the breaker was open.
    placeholders_served: Counter = Counter::default(), "placeholders_served", "Jobs completed with the placeholder image";
    /// Checkpoint switches, by backend.
    model_switches: Family<BackendLabel, Counter> = Family::default(), "model_switches", "Jobs that ran on another checkpoint than the one their backend had loaded (a switch: seconds on a GPU)";
    /// Jobs generated, by checkpoint.
    jobs_by_model: Family<ModelLabel, Counter> = Family::default(), "jobs_by_model", "Jobs Forge generated, by the checkpoint it reports it used";
    /// Stuck jobs the watchdog marked.
    stuck_jobs_marked: Counter = Counter::default(), "stuck_jobs_marked", "Stuck jobs marked as errors by the watchdog";
    /// Jobs handed back because their run's lease ran out.
    leases_expired: Counter = Counter::default(), "job_leases_expired", "Jobs whose run's lease ran out (their process was gone) and that went back to the queue";
    /// Finished messages deleted by retention (`RETENTION`), with their images.
    retention_deleted: Counter = Counter::default(), "retention_deleted", "Finished messages deleted by RETENTION, with their images";
    /// A job's outcome could not be written at once and was written again later.
    outcome_write_retries: Counter = Counter::default(), "outcome_write_retries", "Retries of a job's final write while the database was unavailable";
    /// WebSocket sessions open.
    ws_sessions_open: Gauge = Gauge::default(), "ws_sessions_open", "Open WebSocket sessions";
    /// WebSocket upgrades refused, by reason (`per_user`, `total`, `rate`).
    ws_sessions_refused: Family<ReasonLabel, Counter> = Family::default(), "ws_sessions_refused", "WebSocket upgrades refused by a cap";
    /// Frames written to WebSockets.
    ws_events_sent: Counter = Counter::default(), "ws_events_sent", "Frames written to WebSockets";
    /// Frames dropped (coalesced positions, overflowed backlogs).
    ws_events_dropped: Counter = Counter::default(), "ws_events_dropped", "Frames dropped by coalescing or overflow";
    /// `resync` frames sent because a client fell behind.
    ws_resyncs: Counter = Counter::default(), "ws_resyncs", "Resync frames sent to clients that fell behind";
    /// Client commands refused by the per-user rate limit.
    ws_commands_limited: Counter = Counter::default(), "ws_commands_limited", "WebSocket commands refused by the per-user rate limit";
    /// HTTP connections refused or closed by a limit, by reason (`max_connections`,
    /// `header_timeout`, `idle_timeout`, `body_timeout`).
    http_connections_cut: Family<ReasonLabel, Counter> = Family::default(), "http_connections_cut", "HTTP connections refused or closed by a limit";
    /// Changes applied to messages (status transitions, progress, client merges).
    store_changes: Counter = Counter::default(), "store_changes", "Changes applied to messages";
    /// Client data merges applied.
    store_merges: Counter = Counter::default(), "store_merges", "Client data merges applied";
    /// Rows written (one per read-modify-write, however many changes it folded).
    store_row_writes: Counter = Counter::default(), "store_row_writes", "Message rows written";
    /// Write transactions.
    store_batches: Counter = Counter::default(), "store_batches", "Write transactions";
    /// Compare-and-swap conflicts retried.
    store_conflict_retries: Counter = Counter::default(), "store_conflict_retries", "Compare-and-swap conflicts retried";
    /// Changes refused (illegal transitions, invalid patches).
    store_refusals: Counter = Counter::default(), "store_refusals", "Changes refused";
    /// Write transactions that failed and rolled back, and rows that could not be written.
    store_failures: Counter = Counter::default(), "store_failures", "Write transactions rolled back on error, and rows that could not be written";
    /// Rows read whose client data did not parse and was kept as text (refreshed at each scrape).
    store_unreadable_data_reads: Gauge = Gauge::default(), "store_unreadable_data_reads", "Rows read whose client data did not parse and was kept as text";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
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
        metrics
            .ws_sessions_refused
            .get_or_create(&ReasonLabel::of("per_user"))
            .inc();
        let text = metrics.encode();
        for name in [
            "forge_gateway_queue_depth",
            "forge_gateway_breaker_state{backend=\"b1\"} 1",
            "forge_gateway_store_conflict_retries_total 1",
            "forge_gateway_ws_sessions_open",
            "forge_gateway_ws_sessions_refused_total{reason=\"per_user\"} 1",
            "forge_gateway_jobs_unstartable_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
