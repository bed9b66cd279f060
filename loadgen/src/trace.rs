//! What a WebSocket session recorded: per job, when each event arrived (`JobTrace`), counts
//! shared by a scenario's sessions (`Counters`), and the frame handling that fills them, `seq`
//! checks included. Both the per-job `job.position` frame and a batched `job.positions` frame
//! (one frame, many jobs) are understood, so the same scenarios measure the gateway before and
//! after it batches positions. The socket side is `session.rs`.

use parking_lot::Mutex;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{Notify, Semaphore, oneshot};
use uuid::Uuid;

/// What happened to one job, as one session saw it.
#[derive(Debug, Default, Clone)]
pub struct JobTrace {
    /// When `job.queued` arrived.
    pub queued: Option<Instant>,
    /// The position `job.queued` carried.
    pub queued_position: Option<u32>,
    /// When `job.processing` arrived.
    pub processing: Option<Instant>,
    /// When `job.complete` arrived.
    pub complete: Option<Instant>,
    /// When `job.error` arrived, with its code.
    pub error: Option<(Instant, String)>,
    /// When `job.cancelled` arrived.
    pub cancelled: Option<Instant>,
    /// (time, position) of every position update, when the session records them.
    pub positions: Vec<(Instant, u32)>,
    /// The latest position heard (`job.queued`, `job.position` or an entry of `job.positions`).
    pub last_position: Option<u32>,
    /// Position updates received for this job.
    pub position_events: u32,
    /// `job.progress` and `job.preview` frames received.
    pub progress_events: u32,
    /// `message.updated` frames received.
    pub updated_events: u64,
    /// Frames of a once-only type received again, or events repeating a version.
    pub duplicates: u32,
    /// Events whose version was below one already seen.
    pub reordered: u32,
    pub last_version: i64,
}

impl JobTrace {
    /// When the first terminal event (complete, error, cancelled) arrived.
    pub fn terminal(&self) -> Option<Instant> {
        self.complete
            .or(self.error.as_ref().map(|(at, _)| *at))
            .or(self.cancelled)
    }
}

/// Event counts over all sessions, for scenarios that wait for a number of events.
#[derive(Default)]
pub struct Counters {
    /// `job.queued` frames.
    pub queued: AtomicU64,
    /// `job.processing` frames.
    pub processing: AtomicU64,
    /// Jobs that got their first terminal event.
    pub terminal: AtomicU64,
    /// `job.complete` frames.
    pub complete: AtomicU64,
    /// Position updates: one per `job.position` frame, one per entry of a `job.positions` frame.
    pub position: AtomicU64,
    /// Position frames: `job.position` and `job.positions` alike count one each.
    pub position_frames: AtomicU64,
    /// `message.updated` frames.
    pub updated: AtomicU64,
    /// All text frames.
    pub frames: AtomicU64,
}

/// How a session behaves.
#[derive(Clone, Default)]
pub struct SessionOptions {
    /// Keep every position update with its time.
    pub record_positions: bool,
    /// In `message.updated` frames, track `data.<key>.n` as the acknowledged patch number.
    pub patch_key: Option<String>,
    /// Count position frames per whole second since this instant
    /// ([`SessionState::position_frames_per_second`]).
    pub position_buckets_since: Option<Instant>,
}

/// Shared state of one WebSocket session: written by its reader task.
pub struct SessionState {
    /// What this session saw of each job.
    pub jobs: Mutex<HashMap<Uuid, JobTrace>>,
    /// Counts shared with the scenario's other sessions.
    pub counters: Arc<Counters>,
    options: SessionOptions,
    patch_needle: Option<Vec<u8>>,
    /// Position frames per whole second since `options.position_buckets_since`.
    position_buckets: Mutex<Vec<u32>>,
    /// Text frames received.
    pub frames: AtomicU64,
    /// `seq` numbers skipped.
    pub seq_gaps: AtomicU64,
    /// Frames whose `seq` was not above the previous one.
    pub seq_regressions: AtomicU64,
    /// `resync` frames received.
    pub resyncs: AtomicU64,
    /// Frames that were not JSON, lacked a `seq` or an id, or had an unknown type.
    pub bad_frames: AtomicU64,
    /// `error` frames, by `ws error <code>`.
    pub command_errors: Mutex<BTreeMap<String, u64>>,
    /// Permits added on each job's first terminal event (for closed-loop submitters).
    pub done: Semaphore,
    /// The highest patch number acknowledged (`patch_key`), -1 before any.
    pub acked: AtomicI64,
    /// Woken on each acknowledged patch and when the session ends.
    pub ack_notify: Notify,
    /// `message.updated` frames received.
    pub updated: AtomicU64,
    /// We asked for the close.
    pub closing: AtomicBool,
    /// The reader ended.
    pub closed: AtomicBool,
    /// Why the reader ended.
    pub end_reason: Mutex<Option<String>>,
    /// Fired by the `snapshot` frame (taken when the session ends).
    pub(crate) ready: Mutex<Option<oneshot::Sender<()>>>,
    /// The `hello` frame arrived.
    pub(crate) saw_hello: AtomicBool,
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
    /// The entries of a batched `job.positions` frame.
    positions: Option<Vec<PositionEntry>>,
}

#[derive(Deserialize)]
struct PositionEntry {
    id: Uuid,
    queue_position: Option<u32>,
}

#[derive(Deserialize)]
struct FrameError {
    code: String,
}

impl SessionState {
    /// The state of a new session; `ready` fires on its `snapshot`.
    pub(crate) fn new(
        counters: Arc<Counters>,
        options: SessionOptions,
        ready: oneshot::Sender<()>,
    ) -> Self {
        let patch_needle = options
            .patch_key
            .as_ref()
            .map(|key| format!("\"{key}\":{{\"n\":").into_bytes());
        SessionState {
            jobs: Mutex::new(HashMap::new()),
            counters,
            options,
            patch_needle,
            position_buckets: Mutex::new(Vec::new()),
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
    pub(crate) fn handle_text(&self, payload: &[u8], now: Instant, last_seq: &mut u64) {
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
            "job.positions" => self.position_batch(frame.positions.unwrap_or_default(), now),
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
                    self.position_update(trace, frame.queue_position, now);
                    self.count_position_frame(now);
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
                    counters.complete.fetch_add(1, Ordering::Relaxed);
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

impl SessionState {
    /// One position update of one job (a `job.position` frame or a `job.positions` entry).
    fn position_update(&self, trace: &mut JobTrace, position: Option<u32>, now: Instant) {
        trace.position_events += 1;
        if let Some(position) = position {
            trace.last_position = Some(position);
            if self.options.record_positions {
                trace.positions.push((now, position));
            }
        }
        self.counters.position.fetch_add(1, Ordering::Relaxed);
    }

    /// A batched `job.positions` frame: `{"positions":[{"id","queue_position","eta_s"},…]}`.
    fn position_batch(&self, entries: Vec<PositionEntry>, now: Instant) {
        self.count_position_frame(now);
        let mut jobs = self.jobs.lock();
        for entry in entries {
            let trace = jobs.entry(entry.id).or_default();
            self.position_update(trace, entry.queue_position, now);
        }
    }

    fn count_position_frame(&self, now: Instant) {
        self.counters
            .position_frames
            .fetch_add(1, Ordering::Relaxed);
        if let Some(since) = self.options.position_buckets_since {
            let second = now.saturating_duration_since(since).as_secs() as usize;
            let mut buckets = self.position_buckets.lock();
            if buckets.len() <= second {
                buckets.resize(second + 1, 0);
            }
            buckets[second] += 1;
        }
    }

    /// Position frames received in each whole second `from..to` (seconds since
    /// `SessionOptions::position_buckets_since`); empty without it.
    pub fn position_frames_per_second(&self, from: usize, to: usize) -> Vec<u32> {
        if self.options.position_buckets_since.is_none() {
            return Vec::new();
        }
        let buckets = self.position_buckets.lock();
        (from..to)
            .map(|second| buckets.get(second).copied().unwrap_or(0))
            .collect()
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
