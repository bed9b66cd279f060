//! Measuring processes from `/proc`: the gateway's resident memory (now and its peak), CPU time
//! of the gateway, the simulators and the load generator itself, and how busy the machine was.
//! Linux only, like the benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB: (VmRSS, VmHWM).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// Resets the peak RSS (VmHWM) of `pid` so that it covers only what follows (Linux: `clear_refs` 5).
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU time (user + system) of a process so far, in seconds (`/proc/<pid>/stat`, 100 Hz ticks).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Busy and total jiffies of all CPUs so far (`/proc/stat`).
pub fn system_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    Some((total - idle, total))
}

/// Samples the gateway's RSS every 100 ms while it runs, and counts CPU time.
pub struct RssSampler {
    pid: Option<u32>,
    started: std::time::Instant,
    cpu_at_start: (Option<f64>, Option<f64>),
    system_at_start: Option<(f64, f64)>,
    others: Vec<(String, u32, Option<f64>)>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Debug, Default)]
pub struct RssReport {
    /// The highest RSS sampled (or VmHWM, if higher), KiB.
    pub peak_kib: u64,
    /// RSS at the end, KiB.
    pub end_kib: u64,
    /// Wall time of the measurement and CPU seconds of the gateway and of the load generator.
    pub wall_s: f64,
    pub gateway_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    /// Share of all cores busy over the measurement (0..1).
    pub system_busy: Option<f64>,
    /// CPU seconds of other processes we started (simulators), by name.
    pub others_cpu_s: Vec<(String, f64)>,
}

impl RssSampler {
    /// Also counts the CPU time of `others` (name, pid).
    pub fn start_with(pid: Option<u32>, others: Vec<(String, u32)>) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = pid.map(|pid| {
            reset_peak(pid);
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Some((rss, _)) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            })
        });
        RssSampler {
            pid,
            started: std::time::Instant::now(),
            cpu_at_start: (
                pid.and_then(|pid| cpu_seconds(&pid.to_string())),
                cpu_seconds("self"),
            ),
            system_at_start: system_cpu(),
            others: others
                .into_iter()
                .map(|(name, pid)| {
                    let cpu = cpu_seconds(&pid.to_string());
                    (name, pid, cpu)
                })
                .collect(),
            peak,
            stop,
            task,
        }
    }

    /// Stops sampling and reports; `None` without a pid to watch.
    pub async fn finish(mut self) -> Option<RssReport> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let pid = self.pid?;
        let (rss, hwm) = rss_kib(pid)?;
        let diff = |start: Option<f64>, end: Option<f64>| Some(end? - start?);
        Some(RssReport {
            peak_kib: self.peak.load(Ordering::Relaxed).max(hwm).max(rss),
            end_kib: rss,
            wall_s: self.started.elapsed().as_secs_f64(),
            gateway_cpu_s: diff(self.cpu_at_start.0, cpu_seconds(&pid.to_string())),
            loadgen_cpu_s: diff(self.cpu_at_start.1, cpu_seconds("self")),
            system_busy: self
                .system_at_start
                .zip(system_cpu())
                .and_then(|(start, end)| {
                    let total = end.1 - start.1;
                    (total > 0.0).then(|| (end.0 - start.0) / total)
                }),
            others_cpu_s: self
                .others
                .iter()
                .filter_map(|(name, pid, start)| {
                    Some((name.clone(), cpu_seconds(&pid.to_string())? - (*start)?))
                })
                .collect(),
        })
    }
}
