//! The test harness: spawns the gateway on a random port with its own Forge simulator and
//! talks to it like a client (HTTP and WebSocket).
//!
//! The database is SQLite in a temporary folder unless `TEST_DATABASE_URL` points at
//! PostgreSQL, in which case every app gets a fresh schema. `TEST_REDIS_URL` selects the Redis
//! queue and bus with a fresh key prefix per app.

#![allow(dead_code)]

use forge_gateway::app::{self, RunningApp};
use forge_gateway::config::Config;
use forge_sim::{Latency, SimConfig, SimServer};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

/// An HTTP client (the process's TLS provider installed first: reqwest has none of its own).
pub fn http_client() -> reqwest::Client {
    forge_gateway::forge_client::install_default_provider();
    reqwest::Client::new()
}

/// Longest a test waits for an expected event.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Where tests put their data.
pub struct Storage {
    /// Temporary folder (SQLite file and images).
    pub dir: tempfile::TempDir,
    /// PostgreSQL URL and schema, when testing on PostgreSQL.
    pub postgres: Option<(String, String)>,
    /// Redis URL and key prefix, when testing with Redis.
    pub redis: Option<(String, String)>,
}

impl Storage {
    /// Fresh storage for one app (or several that share it).
    pub fn fresh() -> Storage {
        let dir = tempfile::tempdir().expect("temporary folder");
        let postgres = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| (url, format!("t_{}", Uuid::now_v7().simple())));
        let redis = std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| (url, format!("t{}", Uuid::now_v7().simple())));
        Storage {
            dir,
            postgres,
            redis,
        }
    }

    /// Environment variables selecting this storage (for a gateway process).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DATA_DIR", self.dir.path().display().to_string())];
        if let Some((url, schema)) = &self.postgres {
            env.extend([
                ("DATABASE_URL", url.clone()),
                ("DATABASE_SCHEMA", schema.clone()),
            ]);
        }
        if let Some((url, prefix)) = &self.redis {
            env.extend([("REDIS_URL", url.clone()), ("REDIS_PREFIX", prefix.clone())]);
        }
        env
    }

    /// Flags selecting this storage.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--data-dir".to_owned(),
            self.dir.path().display().to_string(),
        ];
        if let Some((url, schema)) = &self.postgres {
            flags.extend([
                "--database-url".into(),
                url.clone(),
                "--database-schema".into(),
                schema.clone(),
            ]);
        }
        if let Some((url, prefix)) = &self.redis {
            flags.extend([
                "--redis-url".into(),
                url.clone(),
                "--redis-prefix".into(),
                prefix.clone(),
            ]);
        }
        flags
    }
}

/// A gateway under test with its own simulator.
pub struct TestApp {
    pub app: Option<RunningApp>,
    pub data_dir: std::path::PathBuf,
    pub base: String,
    pub http: reqwest::Client,
    pub sim: SimServer,
}

/// A simulator config that answers at once.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        latency: Latency::Fixed(Duration::from_millis(50)),
        ..SimConfig::default()
    }
}

/// Starts a simulator on a free port.
pub async fn start_sim(config: SimConfig) -> SimServer {
    SimServer::start("127.0.0.1:0".parse().expect("address"), config)
        .await
        .expect("simulator starts")
}

/// Config for a test app: dev mode, a free port, short timings, `storage`, then `extra` flags.
pub fn config(storage: &Storage, forge_urls: &[String], extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "forge-gateway".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--dev".into(),
        "--forge-progress-interval".into(),
        "100ms".into(),
        "--shutdown-grace".into(),
        "2s".into(),
    ];
    if !forge_urls.is_empty() {
        args.extend(["--forge-urls".into(), forge_urls.join(",")]);
    }
    args.extend(storage.flags());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Config::from_flags(args).expect("test config is valid")
}

impl TestApp {
    /// An app with a fast simulator and default settings.
    pub async fn spawn() -> (TestApp, Storage) {
        Self::spawn_with(fast_sim(), &[]).await
    }

    /// An app with its own simulator (`sim`) and extra flags.
    pub async fn spawn_with(sim: SimConfig, extra: &[&str]) -> (TestApp, Storage) {
        let storage = Storage::fresh();
        let app = TestApp::start(&storage, sim, extra).await;
        (app, storage)
    }

    /// An app on existing storage.
    pub async fn start(storage: &Storage, sim: SimConfig, extra: &[&str]) -> TestApp {
        let sim = start_sim(sim).await;
        let config = config(storage, &[sim.url()], extra);
        let app = app::start(config).await.expect("gateway starts");
        let base = app.url();
        TestApp {
            app: Some(app),
            data_dir: storage.dir.path().to_owned(),
            base,
            http: http_client(),
            sim,
        }
    }

    /// Handles to the app's core (store, queue, database…).
    pub fn core(&self) -> &forge_gateway::app::Core {
        self.app
            .as_ref()
            .and_then(|app| app.core())
            .expect("running app")
    }

    /// `/admin/metrics` as text.
    pub async fn metrics(&self) -> String {
        let token = std::fs::read_to_string(self.data_dir.join("dev-admin-token"))
            .expect("dev admin token");
        self.http
            .get(format!("{}/admin/metrics", self.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.sim.shutdown().await;
    }

    /// A dev-mode token for `user`.
    pub async fn token(&self, user: &str) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/dev/token", self.base))
            .json(&json!({ "user": user }))
            .send()
            .await
            .expect("dev token")
            .json()
            .await
            .expect("dev token JSON");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// A request with the user's token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
    }

    /// `POST /api/v1/messages`; returns status and body.
    pub async fn submit(&self, token: &str, body: Value) -> (u16, Value) {
        let answer = self
            .request(reqwest::Method::POST, "/api/v1/messages", token)
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `GET` a path; returns status and JSON body.
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let answer = self
            .request(reqwest::Method::GET, path, token)
            .send()
            .await
            .expect("get");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Opens a WebSocket for the token and reads `hello` and `snapshot`.
    pub async fn ws(&self, token: &str) -> WsClient {
        WsClient::connect(&self.base, token).await
    }

    /// Polls `GET /api/v1/messages/{id}` until `done` holds for it.
    pub async fn wait_message(
        &self,
        token: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, message) = self.get(token, &format!("/api/v1/messages/{id}")).await;
            if done(&message) {
                return message;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} never reached the expected state; last: {message}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A WebSocket client.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Every frame received so far.
    pub seen: Vec<Value>,
    /// The `snapshot` received on connect.
    pub snapshot: Value,
}

impl WsClient {
    /// Connects and reads `hello` and `snapshot`.
    pub async fn connect(base: &str, token: &str) -> WsClient {
        let url = format!("{}/ws?token={}", base.replacen("http", "ws", 1), token);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        let mut client = WsClient {
            stream,
            seen: Vec::new(),
            snapshot: Value::Null,
        };
        let hello = client.next().await.expect("hello");
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        let snapshot = client.next().await.expect("snapshot");
        assert_eq!(
            snapshot["type"], "snapshot",
            "second frame is snapshot: {snapshot}"
        );
        client.snapshot = snapshot;
        client
    }

    /// The next JSON frame, or `None` at the deadline or when the socket closes.
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match frame.ok()? {
                WsMessage::Text(text) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("frames are JSON");
                    self.seen.push(value.clone());
                    return Some(value);
                }
                WsMessage::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next JSON frame within the default deadline.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(DEADLINE).await
    }

    /// Reads frames until one matches; panics at the deadline.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(frame) if matches(&frame) => return frame,
                Some(_) => continue,
                None => panic!(
                    "no frame matching {what} before the deadline; seen: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for an event of `kind` about message `id`. An event already received counts:
    /// events of several jobs may arrive in any order.
    pub async fn wait_event(&mut self, kind: &str, id: &str) -> Value {
        let matches = |frame: &Value| frame["type"] == kind && frame["id"] == id;
        if let Some(seen) = self.seen.iter().find(|frame| matches(frame)) {
            return seen.clone();
        }
        self.wait_for(&format!("{kind} for {id}"), matches).await
    }

    /// Sends a JSON command.
    pub async fn send(&mut self, command: Value) {
        self.stream
            .send(WsMessage::text(command.to_string()))
            .await
            .expect("send");
    }

    /// Sends a raw frame.
    pub async fn send_raw(&mut self, frame: WsMessage) {
        self.stream.send(frame).await.expect("send");
    }

    /// The positions `id` was shown at, in order: its `job.queued`, then every `job.position`
    /// and `job.positions` entry about it.
    pub fn positions_of(&self, id: &str) -> Vec<i64> {
        self.seen
            .iter()
            .flat_map(positions_in)
            .filter(|(about, _)| about == id)
            .map(|(_, position)| position)
            .collect()
    }

    /// The newest position shown of each queued message.
    pub fn latest_positions(&self) -> HashMap<String, i64> {
        self.seen.iter().flat_map(positions_in).collect()
    }

    /// Reads frames until the newest positions shown of `expected`'s messages are these.
    pub async fn wait_positions(&mut self, expected: &[(&str, i64)]) {
        let holds = |latest: &HashMap<String, i64>| {
            expected
                .iter()
                .all(|(id, position)| latest.get(*id) == Some(position))
        };
        let deadline = Instant::now() + DEADLINE;
        while !holds(&self.latest_positions()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.next_within(left).await.is_some(),
                "positions never became {expected:?}; latest {:?}",
                self.latest_positions()
            );
        }
    }

    /// The events seen so far about message `id`, by type.
    pub fn types_for(&self, id: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|frame| frame["id"] == id)
            .map(|frame| frame["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The `(message, position)` pairs a frame shows: `job.queued` and `job.position` carry one,
/// `job.positions` several.
pub fn positions_in(frame: &Value) -> Vec<(String, i64)> {
    let one = |frame: &Value| {
        Some((
            frame["id"].as_str()?.to_owned(),
            frame["queue_position"].as_i64()?,
        ))
    };
    match frame["type"].as_str() {
        Some("job.queued" | "job.position") => one(frame).into_iter().collect(),
        Some("job.positions") => frame["positions"]
            .as_array()
            .map(|entries| entries.iter().filter_map(one).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The value of a counter or gauge in a Prometheus text exposition: `name` summed over its
/// labels, or one series when `name` carries its labels (`jobs{status="queued"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    let series = |line: &str| {
        if name.contains('{') {
            line.split(' ').next() == Some(name)
        } else {
            line.split(['{', ' ']).next() == Some(name)
        }
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| series(line))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the suite runs on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty())
}

/// Decodes a PNG and returns its size.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// A small image request.
pub fn small_prompt(prompt: &str) -> Value {
    json!({ "prompt": prompt, "width": 64, "height": 64, "steps": 4 })
}

/// The queue positions of submissions that must all have been accepted, sorted.
pub fn accepted_positions(answers: &[(u16, Value)]) -> Vec<i64> {
    let mut positions: Vec<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["queue_position"].as_i64().expect("position")
        })
        .collect();
    positions.sort();
    positions
}

/// The prompts of a `GET /api/v1/messages` answer.
pub fn listed_prompts(list: &Value) -> Vec<&str> {
    list["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|message| message["prompt"].as_str().expect("prompt"))
        .collect()
}

/// A gateway running as a child process (for kill and restart tests).
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub base: String,
    /// Every line it logged so far.
    pub logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `forge-gateway` with `env` (plus JSON logs) and waits for its `listening on` line.
    pub async fn start(env: &[(&str, String)]) -> GatewayProcess {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-gateway"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("gateway process starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
        let base = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lock().push(line.clone());
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
                    return Some(rest[..end].to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the gateway logs its address");
        // Keep draining its log so the pipe never fills.
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().push(line);
            }
        });
        GatewayProcess { child, base, logs }
    }

    /// Its resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse().ok())
            })
            .expect("VmRSS")
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("exits in time")
            .expect("exit status")
    }

    /// A client of this process.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: http_client(),
        }
    }
}

/// A plain HTTP client of a gateway (process or in-process).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    /// A dev-mode token.
    pub async fn token(&self, user: &str) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/dev/token", self.base))
            .json(&json!({"user": user}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// `POST /api/v1/messages`.
    pub async fn submit(&self, token: &str, body: Value) -> (u16, Value) {
        let answer = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `GET` a path.
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let answer = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Polls a message until `done` holds.
    pub async fn wait_message(
        &self,
        token: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, message) = self.get(token, &format!("/api/v1/messages/{id}")).await;
            if done(&message) {
                return message;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} never reached the expected state; last: {message}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Opens a WebSocket.
    pub async fn ws(&self, token: &str) -> WsClient {
        WsClient::connect(&self.base, token).await
    }
}

/// A TCP proxy that can be cut (the server behind it "goes away": every connection closes and
/// new ones are refused) and restored on the same port.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    state: std::sync::Arc<parking_lot::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    open: bool,
    /// The accept loop and every proxied connection.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: String) -> TcpProxy {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = probe.local_addr().expect("address").port();
        drop(probe);
        let proxy = TcpProxy {
            port,
            target,
            state: std::sync::Arc::default(),
        };
        proxy.resume();
        proxy
    }

    pub fn resume(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(([127, 0, 0, 1], self.port).into())
            .expect("bind the proxy port");
        let listener = socket.listen(64).expect("listen");
        let (target, state) = (self.target.clone(), self.state.clone());
        let mut guard = self.state.lock();
        guard.open = true;
        guard.tasks.push(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Registered under the lock, so a cut either sees this connection or it is
                // never proxied.
                let mut state = state.lock();
                if !state.open {
                    return;
                }
                let target = target.clone();
                state.tasks.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        }));
    }

    /// Closes the listener and every proxied connection, and returns once they are closed.
    pub async fn cut(&self) {
        let tasks = {
            let mut state = self.state.lock();
            state.open = false;
            std::mem::take(&mut state.tasks)
        };
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// `host:port` of a `scheme://user@host:port/db` URL.
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

/// `url` with its `host:port` replaced (to go through a [`TcpProxy`]).
pub fn with_authority(url: &str, authority_now: &str) -> String {
    url.replacen(&authority(url), authority_now, 1)
}

/// Storage on PostgreSQL and Redis (the multi-process tests need both); panics with a clear
/// message when they are not configured.
pub fn shared_storage() -> Storage {
    let storage = Storage::fresh();
    assert!(
        storage.postgres.is_some() && storage.redis.is_some(),
        "set TEST_DATABASE_URL=postgres://… and TEST_REDIS_URL=redis://… to run this test"
    );
    storage
}

/// A plain Redis client for what the stores do not offer (deleting keys, CLIENT LIST).
pub async fn plain_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::*;
    let config = Config::from_url(url).expect("a valid Redis URL");
    let client = Builder::from_config(config)
        .build()
        .expect("a Redis client");
    client.init().await.expect("Redis answers");
    client
}

/// Deletes every key of `prefix` (SCAN MATCH `{prefix}:*` + DEL): what a Redis restart does to
/// the queue, and the cleanup after a test. Never touches another prefix.
pub async fn delete_redis_prefix(url: &str, prefix: &str) {
    use fred::prelude::*;
    let client = plain_client(url).await;
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(format!("{{{prefix}}}:*"), Some(500), None)
        .filter_map(|key| async move { key.ok() })
        .collect()
        .await;
    for chunk in keys.chunks(500) {
        let _: i64 = client.del(chunk.to_vec()).await.expect("DEL");
    }
    let _ = client.quit().await;
}
