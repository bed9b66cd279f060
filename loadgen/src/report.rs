//! Percentiles, per-scenario results and their Markdown/JSON rendering: every scenario reports
//! in this one format, so runs and scenarios compare side by side.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Percentiles of a sample, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Percentiles of `values` (nearest rank); `None` when empty.
pub fn summarize(mut values: Vec<f64>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let rank = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some(Summary {
        n,
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: values[n - 1],
        mean: values.iter().sum::<f64>() / n as f64,
    })
}

/// A duration in milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One measured quantity of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// A rate, or empty.
    pub throughput: String,
    /// Percentiles of the measured times (ms), when it is a latency.
    pub latency: Option<Summary>,
}

impl Row {
    /// A row of the scenario's table.
    pub fn new(
        metric: impl Into<String>,
        throughput: impl Into<String>,
        latency: Option<Summary>,
    ) -> Row {
        Row {
            metric: metric.into(),
            throughput: throughput.into(),
            latency,
        }
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub scenario: String,
    /// Which stores the gateway ran on.
    pub stores: String,
    /// One line saying what ran.
    pub config: String,
    /// The measurements.
    pub rows: Vec<Row>,
    /// The gateway's peak RSS over the measurement.
    pub peak_rss_mib: Option<f64>,
    /// The gateway's RSS at the end of the measurement.
    pub end_rss_mib: Option<f64>,
    /// Jobs accepted (202) that never got a terminal event.
    pub lost_jobs: u64,
    /// Events missing: seq gaps, and job events a finished job never got.
    pub lost_frames: u64,
    /// `resync` frames: the server dropped a client's backlog.
    pub resyncs: u64,
    /// Job events received twice (same type, or same version).
    pub duplicated: u64,
    /// Events older than one already received for the same job.
    pub reordered: u64,
    /// Failures by kind: `job.error <code>`, `http <status> <code>`, `ws error <code>`, …
    pub errors: BTreeMap<String, u64>,
    /// Free-form lines below the table.
    pub notes: Vec<String>,
    /// Warnings and errors the gateway logged: (level, message, count).
    pub gateway_log: Vec<(String, String, u64)>,
    /// Scenario-specific numbers for the JSON output.
    pub extra: serde_json::Value,
    /// The scenario could not run to the end.
    pub failed: Option<String>,
}

impl ScenarioResult {
    /// An empty result of `scenario` on `stores`.
    pub fn new(scenario: &str, stores: &str) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.into(),
            stores: stores.into(),
            extra: serde_json::Value::Object(Default::default()),
            ..Default::default()
        }
    }

    /// Counts `count` failures of `kind` (nothing when 0).
    pub fn error(&mut self, kind: impl Into<String>, count: u64) {
        if count > 0 {
            *self.errors.entry(kind.into()).or_default() += count;
        }
    }

    /// Nothing lost, duplicated or resynced, and the scenario ran to the end.
    pub fn clean(&self) -> bool {
        self.lost_jobs == 0
            && self.lost_frames == 0
            && self.resyncs == 0
            && self.duplicated == 0
            && self.failed.is_none()
    }
}

fn fmt_ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn fmt_mib(value: Option<f64>) -> String {
    value.map_or("—".into(), |v| format!("{v:.1}"))
}

/// One Markdown table per scenario, then notes.
pub fn markdown(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for result in results {
        out.push_str(&format!("### {} — {}\n\n", result.scenario, result.stores));
        out.push_str(&format!("Config: {}\n\n", result.config));
        out.push_str("| scenario | stores | metric | throughput | n | p50 ms | p95 ms | p99 ms | max ms | peak RSS MiB | end RSS MiB | lost jobs/frames/resyncs | dup | errors |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let errors = if result.errors.is_empty() {
            "0".to_owned()
        } else {
            result
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind}: {count}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let rows = if result.rows.is_empty() {
            vec![Row::new("—", "—", None)]
        } else {
            result.rows.clone()
        };
        for row in &rows {
            let (n, p50, p95, p99, max) = match row.latency {
                Some(s) => (
                    s.n.to_string(),
                    fmt_ms(s.p50),
                    fmt_ms(s.p95),
                    fmt_ms(s.p99),
                    fmt_ms(s.max),
                ),
                None => ("—".into(), "—".into(), "—".into(), "—".into(), "—".into()),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} |\n",
                result.scenario,
                result.stores,
                row.metric,
                row.throughput,
                n,
                p50,
                p95,
                p99,
                max,
                fmt_mib(result.peak_rss_mib),
                fmt_mib(result.end_rss_mib),
                result.lost_jobs,
                result.lost_frames,
                result.resyncs,
                result.duplicated,
                errors
            ));
        }
        out.push('\n');
        if let Some(failed) = &result.failed {
            out.push_str(&format!("- **did not complete**: {failed}\n"));
        }
        if result.reordered > 0 {
            out.push_str(&format!(
                "- {} events arrived older than one already received for the same job\n",
                result.reordered
            ));
        }
        for note in &result.notes {
            out.push_str(&format!("- {note}\n"));
        }
        if !result.gateway_log.is_empty() {
            out.push_str("- gateway warnings/errors logged:\n");
            for (level, message, count) in result.gateway_log.iter().take(10) {
                out.push_str(&format!("  - {count}× {level} {message}\n"));
            }
            if result.gateway_log.len() > 10 {
                out.push_str(&format!(
                    "  - … and {} more kinds\n",
                    result.gateway_log.len() - 10
                ));
            }
        }
        out.push('\n');
    }
    out
}
