//! Starting `forge-sim` and `forge-gateway`, reading their logs, sampling the gateway's memory,
//! and cleaning up (children killed, temp dir removed, schema dropped, Redis keys deleted)
//! whatever way the run ends. The binaries are found next to the load generator's own
//! executable (one cargo target directory for the whole workspace).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Warnings and errors a child logged, by (level, message), with a count.
#[derive(Default)]
pub struct LogStats {
    /// Warning and error lines by (level, message).
    pub by_message: Mutex<HashMap<(String, String), u64>>,
    /// The last 30 lines of any level.
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

    /// The last lines the child printed.
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

/// `text` cut to `max` characters, with `…` when cut.
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
    /// The process (killed when dropped).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// The URL from its `listening on` line.
    pub url: String,
    /// What it logged.
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
    /// PostgreSQL, or the embedded SQLite when unset.
    pub database_url: Option<String>,
    /// Redis, or the in-process queue and events when unset.
    pub redis_url: Option<String>,
}

impl Stores {
    /// "SQLite + in-process", "PostgreSQL + Redis", …
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
    /// The gateway.
    pub gateway: Started,
    /// How the gateway was started, to start it again (`restart_gateway`).
    gateway_path: PathBuf,
    gateway_env: Vec<(String, String)>,
    data_dir: PathBuf,
    schema: Option<(String, String)>,
    redis: Option<(String, String)>,
    cleaned: bool,
}

/// How to start a [`Deployment`].
pub struct DeploySettings {
    /// Where the gateway keeps its state.
    pub stores: Stores,
    /// The simulators' generation time (`--latency`).
    pub sim_latency: String,
    /// Simulators to start (one backend each).
    pub sims: usize,
    /// FORGE_SLOTS of the gateway, when set.
    pub forge_slots: Option<u32>,
    /// WS_OUTBOX of the gateway.
    pub ws_outbox: u32,
    /// Where the fresh data directories go.
    pub data_dir_base: PathBuf,
    /// More environment for the gateway.
    pub extra_env: Vec<(String, String)>,
    /// The gateway binary, when not the one beside loadgen.
    pub gateway_bin: Option<PathBuf>,
}

impl Deployment {
    /// Starts the simulators, then the gateway on a fresh data directory (and schema and key
    /// prefix), with dev mode and a high MAX_PENDING_PER_USER.
    pub async fn start(settings: &DeploySettings) -> Result<Deployment, String> {
        let sim_path = sibling("forge-sim")?;
        let gateway_path = match &settings.gateway_bin {
            Some(path) => path.clone(),
            None => sibling("forge-gateway")?,
        };
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
        let mut env: Vec<(String, String)> = vec![
            ("BIND".into(), "127.0.0.1:0".into()),
            ("DATA_DIR".into(), data_dir.display().to_string()),
            ("FORGE_URLS".into(), forge_urls),
            ("DEV_MODE".into(), "true".into()),
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "warn,forge_gateway=info".into()),
            ("MAX_PENDING_PER_USER".into(), "100000".into()),
            ("WS_OUTBOX".into(), settings.ws_outbox.to_string()),
        ];
        if let Some(slots) = settings.forge_slots {
            env.push(("FORGE_SLOTS".into(), slots.to_string()));
        }
        let mut schema = None;
        let mut redis = None;
        if let Some(url) = &settings.stores.database_url {
            let name = format!("lg_{tag:08x}");
            env.push(("DATABASE_URL".into(), url.clone()));
            env.push(("DATABASE_SCHEMA".into(), name.clone()));
            schema = Some((url.clone(), name));
        }
        if let Some(url) = &settings.stores.redis_url {
            let prefix = format!("lg{tag:08x}");
            env.push(("REDIS_URL".into(), url.clone()));
            env.push(("REDIS_PREFIX".into(), prefix.clone()));
            redis = Some((url.clone(), prefix));
        }
        env.extend(settings.extra_env.iter().cloned());
        let mut cmd = Command::new(&gateway_path);
        cmd.envs(env.iter().map(|(key, value)| (key, value)));
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
            gateway_path,
            gateway_env: env,
            data_dir,
            schema,
            redis,
            cleaned: false,
        })
    }

    /// Redis URL and key prefix of the gateway, when it uses Redis.
    pub fn redis(&self) -> Option<&(String, String)> {
        self.redis.as_ref()
    }

    /// Kills the gateway with SIGKILL (a crash: nothing is flushed) and starts it again on the
    /// same address, data directory and stores; the time from the spawn until it listened.
    pub async fn restart_gateway(&mut self) -> Result<Duration, String> {
        let _ = self.gateway.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.gateway.child.wait()).await;
        let bind = self.gateway.url.trim_start_matches("http://").to_owned();
        let mut cmd = Command::new(&self.gateway_path);
        cmd.envs(self.gateway_env.iter().map(|(key, value)| (key, value)))
            .env("BIND", &bind);
        let spawned = std::time::Instant::now();
        self.gateway = start(cmd, "forge-gateway", true).await?;
        Ok(spawned.elapsed())
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
            delete_redis_keys(&url, &prefix);
        }
    }
}

/// Deletes every key of `prefix` (what the gateway keeps in Redis, all under the hash tag
/// `{prefix}`), with `redis-cli`.
pub fn delete_redis_keys(url: &str, prefix: &str) {
    let keys = std::process::Command::new("redis-cli")
        .args(["-u", url, "--scan", "--pattern", &format!("{{{prefix}}}*")])
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
                .args(["-u", url, "DEL"])
                .args(chunk)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Redis's `used_memory` in bytes (`INFO memory`), with `redis-cli`.
pub fn redis_used_memory(url: &str) -> Option<u64> {
    let output = std::process::Command::new("redis-cli")
        .args(["-u", url, "INFO", "memory"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("used_memory:")?.parse().ok())
}
