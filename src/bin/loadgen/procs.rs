//! Starting `forge-sim` and `forge-gateway`, reading their logs, sampling the gateway's memory,
//! and cleaning up (children killed, temp dir removed, schema dropped, Redis keys deleted)
//! whatever way the run ends.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Warnings and errors a child logged, by (level, message), with a count.
#[derive(Default)]
pub struct LogStats {
    pub by_message: Mutex<HashMap<(String, String), u64>>,
    pub tail: Mutex<std::collections::VecDeque<String>>,
}

impl LogStats {
    fn record(&self, line: &str, json: bool) {
        {
            let mut tail = self.tail.lock();
            if tail.len() >= 30 {
                tail.pop_front();
            }
            tail.push_back(line.chars().take(500).collect());
        }
        let (level, message) = if json {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(value) => {
                    let level = value["level"].as_str().unwrap_or("").to_owned();
                    let fields = &value["fields"];
                    let mut message = fields["message"].as_str().unwrap_or("").to_owned();
                    for key in ["error", "cause", "reason", "outcome", "refusal"] {
                        if let Some(extra) = fields.get(key) {
                            let extra = match extra.as_str() {
                                Some(text) => text.to_owned(),
                                None => extra.to_string(),
                            };
                            message.push_str(&format!(" [{key}={}]", truncate(&extra, 160)));
                        }
                    }
                    (level, message)
                }
                Err(_) => (level_of(line), line.to_owned()),
            }
        } else {
            (level_of(line), line.to_owned())
        };
        if level == "WARN" || level == "ERROR" {
            *self
                .by_message
                .lock()
                .entry((level, truncate(&message, 300)))
                .or_default() += 1;
        }
    }

    /// Warnings and errors, most frequent first.
    pub fn problems(&self) -> Vec<(String, String, u64)> {
        let mut list: Vec<_> = self
            .by_message
            .lock()
            .iter()
            .map(|((level, message), count)| (level.clone(), message.clone(), *count))
            .collect();
        list.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        list
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().iter().cloned().collect()
    }
}

fn level_of(line: &str) -> String {
    for level in ["ERROR", "WARN"] {
        if line.contains(level) {
            return level.to_owned();
        }
    }
    String::new()
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// A started child that printed its URL.
pub struct Started {
    pub child: Child,
    pub pid: u32,
    pub url: String,
    pub logs: Arc<LogStats>,
}

/// Spawns `command`, drains its output into `LogStats` and waits for `listening on http://…`.
pub async fn start(mut command: Command, name: &str, json_logs: bool) -> Result<Started, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start {name}: {err}"))?;
    let pid = child.id().unwrap_or(0);
    let logs = Arc::new(LogStats::default());
    let (url_tx, url_rx) = oneshot::channel::<String>();
    let url_tx = Arc::new(Mutex::new(Some(url_tx)));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let logs = logs.clone();
        let url_tx = url_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let url: String = rest
                        .chars()
                        .take_while(|c| {
                            !c.is_whitespace() && *c != '"' && *c != '\\' && *c != '\u{1b}'
                        })
                        .collect();
                    if let Some(tx) = url_tx.lock().take() {
                        let _ = tx.send(url);
                    }
                }
                logs.record(&line, json_logs);
            }
        });
    }
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::select! {
            url = url_rx => url.ok(),
            status = child.wait() => {
                // Give the log readers a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(200)).await;
                eprintln!("{name} exited early: {status:?}");
                None
            }
        }
    })
    .await;
    match waited {
        Ok(Some(url)) => Ok(Started {
            child,
            pid,
            url,
            logs,
        }),
        Ok(None) => Err(format!(
            "{name} did not start; its last lines:\n  {}",
            logs.tail().join("\n  ")
        )),
        Err(_) => Err(format!(
            "{name} printed no 'listening on' line within 120 s; its last lines:\n  {}",
            logs.tail().join("\n  ")
        )),
    }
}

/// Where the binaries are: next to this executable.
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (build it: cargo build --release --workspace --bin {name})",
            path.display()
        ))
    }
}

/// External stores for the gateway.
#[derive(Clone, Debug, Default)]
pub struct Stores {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

impl Stores {
    pub fn label(&self) -> String {
        match (&self.database_url, &self.redis_url) {
            (None, None) => "SQLite + in-process".into(),
            (Some(_), None) => "PostgreSQL + in-process".into(),
            (None, Some(_)) => "SQLite + Redis".into(),
            (Some(_), Some(_)) => "PostgreSQL + Redis".into(),
        }
    }
}

/// A gateway and its simulator started by us for one scenario; dropping it cleans up.
pub struct Deployment {
    /// The simulators (the first one is the one scenarios control).
    pub sims: Vec<Started>,
    pub gateway: Started,
    data_dir: PathBuf,
    schema: Option<(String, String)>,
    redis: Option<(String, String)>,
    cleaned: bool,
}

pub struct DeploySettings {
    pub stores: Stores,
    pub sim_latency: String,
    /// Simulators to start (one backend each).
    pub sims: usize,
    /// FORGE_SLOTS of the gateway, when set.
    pub forge_slots: Option<u32>,
    pub ws_outbox: u32,
    /// Where the fresh data directories go.
    pub data_dir_base: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Deployment {
    pub async fn start(settings: &DeploySettings) -> Result<Deployment, String> {
        let sim_path = sibling("forge-sim")?;
        let gateway_path = sibling("forge-gateway")?;
        let mut sims = Vec::new();
        for _ in 0..settings.sims.max(1) {
            let mut sim_cmd = Command::new(&sim_path);
            sim_cmd
                .args(["--bind", "127.0.0.1:0", "--latency", &settings.sim_latency])
                .env("RUST_LOG", "warn,forge_sim=info,forge_gateway=info")
                .env("NO_COLOR", "1");
            sims.push(start(sim_cmd, "forge-sim", false).await?);
        }
        let forge_urls = sims
            .iter()
            .map(|sim| sim.url.clone())
            .collect::<Vec<_>>()
            .join(",");

        let tag: u32 = rand::random();
        let data_dir = settings
            .data_dir_base
            .join(format!("loadgen-{}-{tag:08x}", std::process::id()));
        std::fs::create_dir_all(&data_dir)
            .map_err(|err| format!("{}: {err}", data_dir.display()))?;
        let mut cmd = Command::new(&gateway_path);
        cmd.env("BIND", "127.0.0.1:0")
            .env("DATA_DIR", &data_dir)
            .env("FORGE_URLS", &forge_urls)
            .env("DEV_MODE", "true")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,forge_gateway=info")
            .env("MAX_PENDING_PER_USER", "100000")
            .env("WS_OUTBOX", settings.ws_outbox.to_string());
        if let Some(slots) = settings.forge_slots {
            cmd.env("FORGE_SLOTS", slots.to_string());
        }
        let mut schema = None;
        let mut redis = None;
        if let Some(url) = &settings.stores.database_url {
            let name = format!("lg_{tag:08x}");
            cmd.env("DATABASE_URL", url).env("DATABASE_SCHEMA", &name);
            schema = Some((url.clone(), name));
        }
        if let Some(url) = &settings.stores.redis_url {
            let prefix = format!("lg{tag:08x}");
            cmd.env("REDIS_URL", url).env("REDIS_PREFIX", &prefix);
            redis = Some((url.clone(), prefix));
        }
        for (key, value) in &settings.extra_env {
            cmd.env(key, value);
        }
        let mut deployment_cleanup = Cleanup {
            data_dir: data_dir.clone(),
            schema: schema.clone(),
            redis: redis.clone(),
        };
        let gateway = match start(cmd, "forge-gateway", true).await {
            Ok(gateway) => gateway,
            Err(err) => {
                deployment_cleanup.run();
                return Err(err);
            }
        };
        Ok(Deployment {
            sims,
            gateway,
            data_dir,
            schema,
            redis,
            cleaned: false,
        })
    }

    /// Kills both children and removes what the run left behind.
    pub async fn stop(mut self) {
        let _ = self.gateway.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.gateway.child.wait()).await;
        for sim in &mut self.sims {
            let _ = sim.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), sim.child.wait()).await;
        }
        let cleanup = Cleanup {
            data_dir: self.data_dir.clone(),
            schema: self.schema.clone(),
            redis: self.redis.clone(),
        };
        let _ = tokio::task::spawn_blocking(move || {
            let mut cleanup = cleanup;
            cleanup.run()
        })
        .await;
        self.cleaned = true;
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if !self.cleaned {
            let _ = self.gateway.child.start_kill();
            for sim in &mut self.sims {
                let _ = sim.child.start_kill();
            }
            // Give the gateway a moment to let go of its connections before the schema drop.
            std::thread::sleep(Duration::from_millis(300));
            Cleanup {
                data_dir: self.data_dir.clone(),
                schema: self.schema.clone(),
                redis: self.redis.clone(),
            }
            .run();
        }
    }
}

struct Cleanup {
    data_dir: PathBuf,
    schema: Option<(String, String)>,
    redis: Option<(String, String)>,
}

impl Cleanup {
    fn run(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some((url, schema)) = self.schema.take() {
            let _ = std::process::Command::new("psql")
                .args([
                    url.as_str(),
                    "-q",
                    "-c",
                    &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some((url, prefix)) = self.redis.take() {
            let keys = std::process::Command::new("redis-cli")
                .args([
                    "-u",
                    url.as_str(),
                    "--scan",
                    "--pattern",
                    &format!("{prefix}*"),
                ])
                .stderr(Stdio::null())
                .output();
            if let Ok(output) = keys {
                let keys: Vec<String> = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect();
                for chunk in keys.chunks(500) {
                    let _ = std::process::Command::new("redis-cli")
                        .args(["-u", url.as_str(), "DEL"])
                        .args(chunk)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

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
    pub peak_kib: u64,
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
