//! The gateway's public contract as the load generator uses it: REST calls and WebSocket
//! sessions that record, per job, when each event arrived.

use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsReader, WsWriter};
use parking_lot::Mutex;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, oneshot};
use uuid::Uuid;

/// REST access to one gateway.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    /// `host:port` for WebSocket connections.
    pub ws_addr: String,
    pub http: reqwest::Client,
}

/// What a `POST /api/v1/messages` gave.
pub struct Submitted {
    pub sent: Instant,
    pub answered: Instant,
    /// The job id and its position, or an error code (`http 503`, `too_many_pending`, …).
    pub result: Result<(Uuid, Option<u32>), String>,
}

#[derive(Deserialize)]
struct ViewHead {
    id: Uuid,
    queue_position: Option<u32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: String,
}

fn error_code(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => format!("http {} {}", status.as_u16(), parsed.error.code),
        Err(_) => format!("http {}", status.as_u16()),
    }
}

impl Api {
    pub fn new(base: &str) -> Result<Api, String> {
        let parsed = url::Url::parse(base).map_err(|err| format!("--url {base}: {err}"))?;
        let host = parsed.host_str().ok_or("the gateway URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(Duration::from_secs(300))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| format!("http client: {err}"))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            ws_addr: format!("{host}:{port}"),
            http,
        })
    }

    /// `POST /api/v1/dev/token`.
    pub async fn token(&self, user: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let answer = self
                .http
                .post(format!("{}/api/v1/dev/token", self.base))
                .json(&serde_json::json!({ "user": user }))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => {
                    let body = response.bytes().await.map_err(|err| err.to_string())?;
                    return serde_json::from_slice::<Token>(&body)
                        .map(|token| token.token)
                        .map_err(|err| format!("token answer: {err}"));
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    last = error_code(status, &body);
                    if status.is_client_error() {
                        break;
                    }
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(format!("dev token for {user}: {last}"))
    }

    /// `POST /api/v1/messages` with a small, fast job.
    pub async fn submit(&self, token: &str, prompt: &str) -> Submitted {
        let body = serde_json::to_vec(&serde_json::json!({
            "prompt": prompt, "width": 64, "height": 64, "steps": 1
        }))
        .unwrap_or_default();
        let request = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        let sent = Instant::now();
        let result = match request.send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.as_u16() == 202 => serde_json::from_slice::<ViewHead>(&body)
                        .map(|view| (view.id, view.queue_position))
                        .map_err(|err| format!("bad 202 body: {err}")),
                    Ok(body) => Err(error_code(status, &body)),
                    Err(err) => Err(format!("body: {}", short_error(&err))),
                }
            }
            Err(err) => Err(format!("send: {}", short_error(&err))),
        };
        Submitted {
            sent,
            answered: Instant::now(),
            result,
        }
    }

    /// `POST /api/v1/messages/{id}/cancel`: the status code.
    pub async fn cancel(&self, token: &str, id: Uuid) -> Result<u16, String> {
        let response = self
            .http
            .post(format!("{}/api/v1/messages/{id}/cancel", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        Ok(status)
    }

    /// `GET /api/v1/messages/{id}`.
    pub async fn message(&self, token: &str, id: Uuid) -> Result<serde_json::Value, String> {
        let response = self
            .http
            .get(format!("{}/api/v1/messages/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| short_error(&err))?;
        if !status.is_success() {
            return Err(error_code(status, &body));
        }
        serde_json::from_slice(&body).map_err(|err| err.to_string())
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> bool {
        matches!(
            self.http.get(format!("{}/healthz", self.base)).send().await,
            Ok(response) if response.status().is_success()
        )
    }

    /// `POST <sim>/sim/config`.
    pub async fn sim_config(&self, sim: &str, body: serde_json::Value) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/sim/config", sim.trim_end_matches('/')))
            .json(&body)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(format!("sim config {status}: {body}"))
        }
    }
}

pub fn short_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_request() {
        "request"
    } else if err.is_body() {
        "body"
    } else {
        "other"
    };
    let mut text = format!("{kind}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    crate::procs::truncate(&text, 200)
}

/// What happened to one job, as one session saw it.
#[derive(Debug, Default, Clone)]
pub struct JobTrace {
    pub queued: Option<Instant>,
    pub queued_position: Option<u32>,
    pub processing: Option<Instant>,
    pub complete: Option<Instant>,
    pub error: Option<(Instant, String)>,
    pub cancelled: Option<Instant>,
    /// (time, position) of every `job.position`, when the session records them.
    pub positions: Vec<(Instant, u32)>,
    pub last_position: Option<u32>,
    pub position_events: u32,
    pub progress_events: u32,
    pub updated_events: u64,
    pub duplicates: u32,
    /// Events whose version was below one already seen.
    pub reordered: u32,
    pub last_version: i64,
}

impl JobTrace {
    pub fn terminal(&self) -> Option<Instant> {
        self.complete
            .or(self.error.as_ref().map(|(at, _)| *at))
            .or(self.cancelled)
    }
}

/// Event counts over all sessions, for scenarios that wait for a number of events.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub processing: AtomicU64,
    pub terminal: AtomicU64,
    pub position: AtomicU64,
    pub updated: AtomicU64,
    pub frames: AtomicU64,
}

/// How a session behaves.
#[derive(Clone, Default)]
pub struct SessionOptions {
    /// Keep every `job.position` with its time.
    pub record_positions: bool,
    /// In `message.updated` frames, track `data.<key>.n` as the acknowledged patch number.
    pub patch_key: Option<String>,
}

/// Shared state of one WebSocket session: written by its reader task.
pub struct SessionState {
    pub jobs: Mutex<HashMap<Uuid, JobTrace>>,
    pub counters: Arc<Counters>,
    options: SessionOptions,
    patch_needle: Option<Vec<u8>>,
    pub frames: AtomicU64,
    pub seq_gaps: AtomicU64,
    pub seq_regressions: AtomicU64,
    pub resyncs: AtomicU64,
    pub bad_frames: AtomicU64,
    pub command_errors: Mutex<BTreeMap<String, u64>>,
    /// Permits added on each job's first terminal event (for closed-loop submitters).
    pub done: Semaphore,
    /// The highest patch number acknowledged (`patch_key`), -1 before any.
    pub acked: AtomicI64,
    pub ack_notify: Notify,
    pub updated: AtomicU64,
    pub closing: AtomicBool,
    pub closed: AtomicBool,
    pub end_reason: Mutex<Option<String>>,
    ready: Mutex<Option<oneshot::Sender<()>>>,
    saw_hello: AtomicBool,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    version: Option<i64>,
    queue_position: Option<u32>,
    error: Option<FrameError>,
}

#[derive(Deserialize)]
struct FrameError {
    code: String,
}

impl SessionState {
    fn new(counters: Arc<Counters>, options: SessionOptions, ready: oneshot::Sender<()>) -> Self {
        let patch_needle = options
            .patch_key
            .as_ref()
            .map(|key| format!("\"{key}\":{{\"n\":").into_bytes());
        SessionState {
            jobs: Mutex::new(HashMap::new()),
            counters,
            options,
            patch_needle,
            frames: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            seq_regressions: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            command_errors: Mutex::new(BTreeMap::new()),
            done: Semaphore::new(0),
            acked: AtomicI64::new(-1),
            ack_notify: Notify::new(),
            updated: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            end_reason: Mutex::new(None),
            ready: Mutex::new(Some(ready)),
            saw_hello: AtomicBool::new(false),
        }
    }

    /// Handles one text frame. `last_seq` is the reader's.
    fn handle_text(&self, payload: &[u8], now: Instant, last_seq: &mut u64) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        let frame: Frame = match serde_json::from_slice(payload) {
            Ok(frame) => frame,
            Err(_) => {
                self.bad_frames.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match frame.seq {
            Some(seq) if seq == *last_seq + 1 => *last_seq = seq,
            Some(seq) if seq > *last_seq + 1 => {
                self.seq_gaps
                    .fetch_add(seq - *last_seq - 1, Ordering::Relaxed);
                *last_seq = seq;
            }
            Some(_) => {
                self.seq_regressions.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
        let kind = frame.kind.as_ref();
        match kind {
            "hello" => self.saw_hello.store(true, Ordering::Relaxed),
            "snapshot" => {
                if let Some(ready) = self.ready.lock().take() {
                    let _ = ready.send(());
                }
            }
            "pong" => {}
            "resync" => {
                self.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            "error" => {
                let code = frame
                    .error
                    .map(|error| error.code)
                    .unwrap_or_else(|| "?".into());
                *self
                    .command_errors
                    .lock()
                    .entry(format!("ws error {code}"))
                    .or_default() += 1;
            }
            _ if kind.starts_with("job.") || kind == "message.updated" => {
                let Some(id) = frame.id.as_deref().and_then(|id| Uuid::try_parse(id).ok()) else {
                    self.bad_frames.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                self.job_event(kind, id, &frame, payload, now);
            }
            _ => {
                self.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn job_event(&self, kind: &str, id: Uuid, frame: &Frame, payload: &[u8], now: Instant) {
        let counters = &self.counters;
        let mut terminal = false;
        {
            let mut jobs = self.jobs.lock();
            let trace = jobs.entry(id).or_default();
            let mut duplicate = false;
            if let Some(version) = frame.version {
                if version < trace.last_version {
                    trace.reordered += 1;
                } else if version == trace.last_version {
                    duplicate = true;
                }
                trace.last_version = trace.last_version.max(version);
            }
            match kind {
                "job.queued" => {
                    if trace.queued.is_some() {
                        duplicate = true;
                    } else {
                        trace.queued = Some(now);
                        trace.queued_position = frame.queue_position;
                        trace.last_position = frame.queue_position;
                    }
                    counters.queued.fetch_add(1, Ordering::Relaxed);
                }
                "job.position" => {
                    trace.position_events += 1;
                    if let Some(position) = frame.queue_position {
                        trace.last_position = Some(position);
                        if self.options.record_positions {
                            trace.positions.push((now, position));
                        }
                    }
                    counters.position.fetch_add(1, Ordering::Relaxed);
                }
                "job.processing" => {
                    if trace.processing.is_some() {
                        duplicate = true;
                    } else {
                        trace.processing = Some(now);
                    }
                    counters.processing.fetch_add(1, Ordering::Relaxed);
                }
                "job.progress" | "job.preview" => trace.progress_events += 1,
                "job.complete" => {
                    terminal = trace.terminal().is_none();
                    if trace.complete.is_some() {
                        duplicate = true;
                    } else {
                        trace.complete = Some(now);
                    }
                }
                "job.error" => {
                    terminal = trace.terminal().is_none();
                    if trace.error.is_some() {
                        duplicate = true;
                    } else {
                        let code = frame
                            .error
                            .as_ref()
                            .map(|error| error.code.clone())
                            .unwrap_or_else(|| "?".into());
                        trace.error = Some((now, code));
                    }
                }
                "job.cancelled" => {
                    terminal = trace.terminal().is_none();
                    if trace.cancelled.is_some() {
                        duplicate = true;
                    } else {
                        trace.cancelled = Some(now);
                    }
                }
                "message.updated" => {
                    trace.updated_events += 1;
                    self.updated.fetch_add(1, Ordering::Relaxed);
                    counters.updated.fetch_add(1, Ordering::Relaxed);
                    if let Some(needle) = &self.patch_needle
                        && let Some(n) = number_after(payload, needle)
                    {
                        self.acked.fetch_max(n, Ordering::Relaxed);
                        self.ack_notify.notify_one();
                    }
                }
                _ => {}
            }
            if duplicate {
                trace.duplicates += 1;
            }
        }
        if terminal {
            counters.terminal.fetch_add(1, Ordering::Relaxed);
            self.done.add_permits(1);
        }
    }
}

/// The integer right after `needle` in `haystack`.
fn number_after(haystack: &[u8], needle: &[u8]) -> Option<i64> {
    let at = haystack
        .windows(needle.len())
        .position(|window| window == needle)?;
    let digits = &haystack[at + needle.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit() && *b != b'-')
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// One open WebSocket session of a user.
pub struct Session {
    pub token: String,
    pub writer: WsWriter,
    pub state: Arc<SessionState>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Connects, starts the reader and waits for `hello` + `snapshot`.
    pub async fn open(
        api: &Api,
        user: &str,
        token: &str,
        counters: Arc<Counters>,
        options: SessionOptions,
    ) -> Result<Session, String> {
        let query: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let mut last = String::new();
        let mut connection = None;
        for attempt in 0..4u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            match tokio::time::timeout(
                Duration::from_secs(20),
                ws::connect(&api.ws_addr, &format!("/ws?token={query}")),
            )
            .await
            {
                Ok(Ok(pair)) => {
                    connection = Some(pair);
                    break;
                }
                Ok(Err(err)) => last = err.to_string(),
                Err(_) => last = "handshake timed out (20 s)".into(),
            }
        }
        let Some((reader, writer)) = connection else {
            return Err(format!("WebSocket of {user}: {last}"));
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let state = Arc::new(SessionState::new(counters, options, ready_tx));
        let task = tokio::spawn(read_loop(reader, writer.clone(), state.clone()));
        match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(())) if state.saw_hello.load(Ordering::Relaxed) => {}
            Ok(Ok(())) => return Err(format!("WebSocket of {user}: snapshot without hello")),
            Ok(Err(_)) => {
                let reason = state.end_reason.lock().clone().unwrap_or_default();
                return Err(format!(
                    "WebSocket of {user} closed before its snapshot: {reason}"
                ));
            }
            Err(_) => return Err(format!("WebSocket of {user}: no snapshot within 60 s")),
        }
        Ok(Session {
            token: token.to_owned(),
            writer,
            state,
            task,
        })
    }

    /// Sends a close frame and waits (briefly) for the reader to end.
    pub async fn close(self) {
        self.state.closing.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer.close()).await;
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Whether the reader ended without us asking.
    pub fn dropped(&self) -> Option<String> {
        if self.state.closed.load(Ordering::Relaxed) && !self.state.closing.load(Ordering::Relaxed)
        {
            Some(
                self.state
                    .end_reason
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            )
        } else {
            None
        }
    }
}

async fn read_loop(mut reader: WsReader, writer: WsWriter, state: Arc<SessionState>) {
    let mut last_seq = 0u64;
    let reason = loop {
        match reader.next().await {
            Ok(message) => match message.opcode {
                OP_TEXT => state.handle_text(&message.payload, Instant::now(), &mut last_seq),
                OP_PING => {
                    if let Err(err) = writer.send(OP_PONG, &message.payload).await {
                        break format!("pong failed: {err}");
                    }
                }
                OP_CLOSE => {
                    let code = (message.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([message.payload[0], message.payload[1]]));
                    let text =
                        String::from_utf8_lossy(message.payload.get(2..).unwrap_or_default())
                            .into_owned();
                    if !state.closing.load(Ordering::Relaxed) {
                        let _ = writer
                            .send(OP_CLOSE, &message.payload[..message.payload.len().min(2)])
                            .await;
                    }
                    break format!("server closed: {code:?} {text}");
                }
                _ => {}
            },
            Err(err) => break err.to_string(),
        }
    };
    *state.end_reason.lock() = Some(reason);
    state.closed.store(true, Ordering::Relaxed);
    // Wake anything waiting on this session.
    state.ack_notify.notify_one();
    state.done.add_permits(1 << 20);
    state.ready.lock().take();
}
