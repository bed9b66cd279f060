//! Scenario `flood` (issue 14): what one misbehaving WebSocket client costs everybody else.
//!
//! User A's only WebSocket writes `{"type":"update_message","id":…,"data":{"blob":"<~60 KB>"}}`
//! frames for A's one message as fast as the socket takes them, for `--duration`; its reader is
//! a separate task that only counts (frames, `error` codes such as a future `rate_limited`, the
//! server's close), so the writer never waits on reading. Meanwhile user B, on a WebSocket of
//! its own, submits a job every `--flood-submit-every`: B's submit → `job.queued` latency and
//! lost jobs say whether the flood hurts others. The gateway's RSS is sampled every 250 ms from
//! just before the flood until 25 s after the flooder's socket closed.
//!
//! The flooder stops early when the server closes its socket, when one frame write blocks for
//! `--flood-write-stall` (the server stopped reading), or when the gateway's RSS passes
//! `--flood-rss-limit-mib`; the scenario reports either way.

use super::common::{
    account_jobs, account_sessions, close_sessions, drain, durations, merge_extra, open_sessions,
    rss_into, since, tokens, traces, wait_until,
};
use super::drive::open_loop;
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::{RssSampler, rss_kib};
use crate::session::{Counters, SessionOptions};
use crate::ws::{self, OP_CLOSE, OP_TEXT, WsReader, WsWriter};
use parking_lot::Mutex;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `--duration` when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// RSS sampling period.
const RSS_EVERY: Duration = Duration::from_millis(250);
/// When, after the flooder's socket closed, the RSS is reported.
const AFTER_CLOSE: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(25)];
/// Distinct pre-encoded frames the flooder cycles through (consecutive patches differ).
const DISTINCT_FRAMES: usize = 16;

/// What the flooder's reader saw.
#[derive(Default)]
struct FloodReader {
    frames: AtomicU64,
    updated: AtomicU64,
    /// `error` frames by code.
    errors: Mutex<BTreeMap<String, u64>>,
    /// The server's close frame: code and reason.
    close: Mutex<Option<(Option<u16>, String)>>,
    /// Why the reader ended.
    ended: Mutex<Option<String>>,
    closed: AtomicBool,
    /// The writer stopped and is closing the socket: what the reader sees from now on is the
    /// answer to our close, not the server's doing.
    closing: AtomicBool,
    /// The reader ended (close frame, EOF or error) before we closed.
    ended_first: AtomicBool,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    error: Option<Code>,
}

#[derive(Deserialize)]
struct Code {
    code: String,
}

/// Reads and counts the flooder's frames until the socket ends; `ready` fires on `snapshot`.
async fn read_flood(
    mut reader: WsReader,
    stats: Arc<FloodReader>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let reason = loop {
        match reader.next().await {
            Ok(message) if message.opcode == OP_TEXT => {
                stats.frames.fetch_add(1, Ordering::Relaxed);
                let Ok(head) = serde_json::from_slice::<Head>(&message.payload) else {
                    *stats.errors.lock().entry("unparsable".into()).or_default() += 1;
                    continue;
                };
                match head.kind.as_ref() {
                    "snapshot" => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    "message.updated" => {
                        stats.updated.fetch_add(1, Ordering::Relaxed);
                    }
                    "error" => {
                        let code = head.error.map_or_else(|| "?".into(), |error| error.code);
                        *stats.errors.lock().entry(code).or_default() += 1;
                    }
                    _ => {}
                }
            }
            Ok(message) if message.opcode == OP_CLOSE => {
                let payload = &message.payload;
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let text =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                *stats.close.lock() = Some((code, text));
                break "the server sent a close frame".to_owned();
            }
            // Pings are not answered: the flood itself shows the client is alive.
            Ok(_) => {}
            Err(err) => break err.to_string(),
        }
    };
    *stats.ended.lock() = Some(reason);
    if !stats.closing.load(Ordering::Relaxed) {
        stats.ended_first.store(true, Ordering::Relaxed);
    }
    stats.closed.store(true, Ordering::Relaxed);
}

/// What the flooder's writer did.
struct FloodWrite {
    frames: u64,
    bytes: u64,
    /// Time each frame write took, ms.
    write_ms: Vec<f64>,
    /// Why it stopped.
    stop: String,
    started: Instant,
    /// When the socket was closed (both halves dropped).
    closed_at: Instant,
}

/// The frames: each a masked text frame with a `blob` of `blob_bytes` characters.
fn flood_frames(id: Uuid, blob_bytes: usize) -> Vec<Vec<u8>> {
    (0..DISTINCT_FRAMES)
        .map(|k| {
            let mut blob = format!("{k:02}-");
            blob.extend(std::iter::repeat_n(
                'x',
                blob_bytes.saturating_sub(blob.len()),
            ));
            let body = format!(
                "{{\"type\":\"update_message\",\"id\":\"{id}\",\"data\":{{\"blob\":\"{blob}\"}}}}"
            );
            ws::encode_frame(OP_TEXT, body.as_bytes())
        })
        .collect()
}

/// Writes frames until `end` or a reason to stop, then closes the socket.
async fn write_flood(
    writer: WsWriter,
    frames: Vec<Vec<u8>>,
    end: Instant,
    stall: Duration,
    stats: Arc<FloodReader>,
    reader_task: tokio::task::JoinHandle<()>,
    over_limit: Arc<AtomicBool>,
) -> FloodWrite {
    let started = Instant::now();
    let (mut count, mut bytes, mut write_ms) = (0u64, 0u64, Vec::new());
    // A write cut short leaves half a frame on the wire: no close frame after it.
    let mut partial = false;
    let stop = loop {
        let now = Instant::now();
        if now >= end {
            break "the --duration ended".to_owned();
        }
        if stats.closed.load(Ordering::Relaxed) {
            break format!(
                "its socket ended: {}",
                stats.ended.lock().clone().unwrap_or_default()
            );
        }
        if over_limit.load(Ordering::Relaxed) {
            break "the gateway's RSS passed --flood-rss-limit-mib".to_owned();
        }
        let frame = &frames[count as usize % frames.len()];
        // A write that started before the end may finish after it, unless it stalls.
        match tokio::time::timeout(stall, writer.send_raw(frame)).await {
            Ok(Ok(())) => {
                count += 1;
                bytes += frame.len() as u64;
                write_ms.push(ms(now.elapsed()));
            }
            Ok(Err(err)) => break format!("a write failed: {err}"),
            Err(_) => {
                partial = true;
                break format!(
                    "one frame write blocked for {stall:?} (--flood-write-stall): the server stopped reading, or reads slower than that"
                );
            }
        }
    };
    stats.closing.store(true, Ordering::Relaxed);
    if !partial && !stats.closed.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.close()).await;
    }
    drop(writer);
    // Give the server a moment to answer the close, then drop the reading half too.
    let _ = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        stats.closed.load(Ordering::Relaxed)
    })
    .await;
    reader_task.abort();
    let _ = reader_task.await;
    FloodWrite {
        frames: count,
        bytes,
        write_ms,
        stop,
        started,
        closed_at: Instant::now(),
    }
}

/// Samples the gateway's RSS every [`RSS_EVERY`] into `series` (seconds since `t0`, KiB) until
/// `stop`; sets `over_limit` past `limit_kib` (0: none).
fn sample_rss(
    pid: u32,
    t0: Instant,
    limit_kib: u64,
    series: Arc<Mutex<Vec<(f64, u64)>>>,
    over_limit: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RSS_EVERY);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if let Some((rss, _)) = rss_kib(pid) {
                series.lock().push((t0.elapsed().as_secs_f64(), rss));
                if limit_kib > 0 && rss > limit_kib {
                    over_limit.store(true, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Runs the flood scenario.
pub async fn flood(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let duration = args.duration_or(DEFAULT_DURATION);
    let mut result = ScenarioResult::new("flood", &ctx.stores);
    result.config = format!(
        "one WebSocket of user A writes update_message frames ({} B data.blob) for {duration:?} as fast as the socket takes them; user B (own WebSocket) submits a job every {:?}; gateway RSS every 250 ms",
        args.flood_blob_bytes, args.flood_submit_every
    );
    let users = tokens(ctx, "flood", 2).await?;
    let (token_a, user_b) = (users[0].1.clone(), users[1..].to_vec());
    let counters = Arc::new(Counters::default());
    let (b_sessions, _) =
        open_sessions(ctx, &user_b, &counters, |_| SessionOptions::default()).await?;

    // A's one message, finished before the flood.
    let (id, _) = ctx
        .api
        .submit(&token_a, "loadgen flood target")
        .await
        .result
        .map_err(|err| format!("A's message: {err}"))?;
    let mut finished = false;
    for _ in 0..600 {
        let view = ctx.api.message(&token_a, id).await?;
        if matches!(
            view["status"].as_str(),
            Some("complete" | "error" | "cancelled")
        ) {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !finished {
        return Err("A's message did not finish within 60 s".into());
    }

    // The flooder's socket.
    let query: String = url::form_urlencoded::byte_serialize(token_a.as_bytes()).collect();
    let (reader, writer) = ws::connect(&ctx.api.ws_addr, &format!("/ws?token={query}"))
        .await
        .map_err(|err| format!("A's WebSocket: {err}"))?;
    let stats = Arc::new(FloodReader::default());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let reader_task = tokio::spawn(read_flood(reader, stats.clone(), ready_tx));
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| "A's WebSocket: no snapshot within 30 s".to_owned())?
        .map_err(|_| "A's WebSocket closed before its snapshot".to_owned())?;
    let frames = flood_frames(id, args.flood_blob_bytes);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = ctx.pid.and_then(rss_kib).map(|(rss, _)| rss);
    log(format!(
        "flood: {duration:?} of {} B frames; B submits every {:?}",
        frames[0].len(),
        args.flood_submit_every
    ));
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let t0 = Instant::now();
    let series = Arc::new(Mutex::new(Vec::new()));
    let over_limit = Arc::new(AtomicBool::new(false));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = ctx.pid.map(|pid| {
        sample_rss(
            pid,
            t0,
            args.flood_rss_limit_mib * 1024,
            series.clone(),
            over_limit.clone(),
            stop_sampling.clone(),
        )
    });
    let flooder = tokio::spawn(write_flood(
        writer,
        frames,
        t0 + duration,
        args.flood_write_stall,
        stats.clone(),
        reader_task,
        over_limit,
    ));
    let rate = 1.0 / args.flood_submit_every.as_secs_f64().max(1e-3);
    let run = open_loop(ctx, &b_sessions, rate, duration, &mut result, |_| {}).await;
    let write = flooder.await.map_err(|err| err.to_string())?;
    log(format!(
        "flood: the flooder wrote {} frames and stopped ({}); B: {} jobs accepted",
        write.frames,
        write.stop,
        run.accepted.len()
    ));
    drain(ctx, &counters, &b_sessions, &run.accepted).await;
    let last = write.closed_at + AFTER_CLOSE[AFTER_CLOSE.len() - 1] + RSS_EVERY * 2;
    tokio::time::sleep_until(last.into()).await;
    stop_sampling.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    rss_into(&mut result, rss.finish().await);

    let traces = traces(&b_sessions);
    account_sessions(&b_sessions, &mut result);
    account_jobs(&run.accepted, &traces, &mut result);
    let accepted = &run.accepted;
    result.rows.push(Row::new(
        "B: POST sent → job.queued received",
        format!("{} jobs accepted ({rate:.0}/s offered)", accepted.len()),
        summarize(durations(accepted, &traces, |job, trace| {
            since(trace.queued, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "B: POST round trip",
        "",
        summarize(
            accepted
                .iter()
                .map(|job| ms(job.answered - job.sent))
                .collect(),
        ),
    ));
    result.rows.push(Row::new(
        "B: POST sent → job.complete received",
        "",
        summarize(durations(accepted, &traces, |job, trace| {
            since(trace.complete, job.sent)
        })),
    ));
    let flood_s = (write.closed_at - write.started).as_secs_f64().max(1e-9);
    result.rows.push(Row::new(
        "flooder: time to write one frame",
        format!(
            "{} frames, {:.0} MB, {:.0} frames/s",
            write.frames,
            write.bytes as f64 / 1e6,
            write.frames as f64 / flood_s
        ),
        summarize(write.write_ms.clone()),
    ));
    let memory = memory_row(idle, &series.lock(), write.closed_at - t0);
    result.rows.push(Row::new(memory.0, "", None));
    let errors = stats.errors.lock().clone();
    let close = stats.close.lock().clone();
    let closed_by_server = match (&close, stats.ended_first.load(Ordering::Relaxed)) {
        (Some((code, reason)), true) => format!("yes, close code {code:?} reason {reason:?}"),
        (None, true) => format!(
            "the socket ended without a close frame ({})",
            stats.ended.lock().clone().unwrap_or_default()
        ),
        (Some((code, _)), false) => format!("no (it answered our close with code {code:?})"),
        (None, false) => "no".to_owned(),
    };
    result.rows.push(Row::new(
        format!(
            "flooder: {} frames received ({} message.updated), error frames {}; closed by the server: {closed_by_server}",
            stats.frames.load(Ordering::Relaxed),
            stats.updated.load(Ordering::Relaxed),
            if errors.is_empty() {
                "0".to_owned()
            } else {
                errors
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        "",
        None,
    ));
    result
        .notes
        .push(format!("the flooder stopped because {}", write.stop));
    result.notes.push(format!(
        "gateway RSS series (s since the flood started: MiB, every 1 s): {}",
        series
            .lock()
            .iter()
            .step_by(4)
            .map(|(t, kib)| format!("{t:.0}:{:.0}", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    merge_extra(
        &mut result,
        serde_json::json!({
            "flood_frames_written": write.frames,
            "flood_bytes_written": write.bytes,
            "flood_stop": write.stop,
            "flood_frames_received": stats.frames.load(Ordering::Relaxed),
            "flood_message_updated": stats.updated.load(Ordering::Relaxed),
            "flood_error_frames": errors,
            "flood_closed_by_server": stats.ended_first.load(Ordering::Relaxed),
            "flood_close": close.map(|(code, reason)| serde_json::json!({"code": code, "reason": reason})),
            "rss_kib": memory.1,
        }),
    );
    close_sessions(b_sessions).await;
    Ok(result)
}

/// The memory row's text and its numbers: idle, peak, peak − idle, at close, +5 s, +25 s (KiB).
fn memory_row(
    idle: Option<u64>,
    series: &[(f64, u64)],
    closed_after: Duration,
) -> (String, serde_json::Value) {
    let mib = |kib: Option<u64>| {
        kib.map_or("—".to_owned(), |kib| {
            format!("{:.1}", kib as f64 / 1024.0)
        })
    };
    let at = |offset: Duration| {
        let t = (closed_after + offset).as_secs_f64();
        series.iter().find(|(at, _)| *at >= t).map(|(_, kib)| *kib)
    };
    let peak = series.iter().max_by_key(|(_, kib)| *kib).copied();
    let at_close = at(Duration::ZERO);
    let after: Vec<Option<u64>> = AFTER_CLOSE.iter().map(|offset| at(*offset)).collect();
    let growth = idle.zip(peak).map_or("—".to_owned(), |(idle, (_, peak))| {
        format!("{:+.1}", (peak as f64 - idle as f64) / 1024.0)
    });
    let text = format!(
        "gateway RSS MiB: idle {} / peak {} ({growth} over idle, at {}) / at the flooder's close {} / {}",
        mib(idle),
        mib(peak.map(|(_, kib)| kib)),
        peak.map_or("—".to_owned(), |(t, _)| format!("{t:.1} s")),
        mib(at_close),
        AFTER_CLOSE
            .iter()
            .zip(&after)
            .map(|(offset, kib)| format!("+{} s {}", offset.as_secs(), mib(*kib)))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let numbers = serde_json::json!({
        "idle": idle,
        "peak": peak.map(|(_, kib)| kib),
        "peak_at_s": peak.map(|(t, _)| t),
        "at_close": at_close,
        "after_close_5s": after.first().copied().flatten(),
        "after_close_25s": after.get(1).copied().flatten(),
    });
    (text, numbers)
}
