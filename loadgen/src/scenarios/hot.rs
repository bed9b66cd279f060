//! Scenario 4, hot message: `--patchers` sessions of one user patch one message over the
//! WebSocket (`update_message`), at most `--patch-window` unacknowledged each, for
//! `--hot-duration`; every patch must reach every session and the last values REST.

use super::common::{
    account_sessions, close_sessions, merge_extra, open_sessions, per_second, rss_into, tokens,
    wait_until,
};
use super::perf::{finish_perf, start_perf};
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, SessionOptions};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Runs the hot-message scenario.
pub async fn hot(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let patchers = args.patchers;
    let mut result = ScenarioResult::new("hot", &ctx.stores);
    result.config = format!(
        "{patchers} sessions of one user patching one (complete) message via update_message, at most {} unacknowledged each, for {:?}",
        args.patch_window, args.hot_duration
    );
    let counters = Arc::new(Counters::default());
    let user = tokens(ctx, "hot", 1).await?;
    let users: Vec<(String, String)> = (0..patchers).map(|_| user[0].clone()).collect();
    let (sessions, _) = open_sessions(ctx, &users, &counters, |k| SessionOptions {
        patch_key: Some(format!("p{k}")),
        ..Default::default()
    })
    .await?;
    let token = user[0].1.clone();
    let submitted = ctx.api.submit(&token, "loadgen hot message").await;
    let (id, _) = submitted
        .result
        .map_err(|err| format!("hot message submit: {err}"))?;
    let finished = wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
        sessions[0]
            .state
            .jobs
            .lock()
            .get(&id)
            .is_some_and(|trace| trace.terminal().is_some())
    })
    .await;
    if !finished {
        return Err("the hot message did not finish within 60 s".into());
    }
    let updated_before: Vec<u64> = sessions
        .iter()
        .map(|s| s.state.updated.load(Ordering::Relaxed))
        .collect();
    log(format!(
        "hot: {patchers} patchers for {:?}",
        args.hot_duration
    ));

    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let perf = start_perf(ctx, "hot");
    let start = Instant::now();
    let end = start + args.hot_duration;
    let mut tasks = Vec::new();
    for (k, session) in sessions.iter().enumerate() {
        let writer = session.writer.clone();
        let state = session.state.clone();
        let window = args.patch_window as i64;
        tasks.push(tokio::spawn(async move {
            let mut next: i64 = 0;
            let mut pending: std::collections::VecDeque<(i64, Instant)> = Default::default();
            let mut acks = Vec::new();
            let mut send_error = None;
            loop {
                let acked = state.acked.load(Ordering::Relaxed);
                let now = Instant::now();
                while pending.front().is_some_and(|(n, _)| *n <= acked) {
                    let (_, sent) = pending.pop_front().unwrap_or((0, now));
                    acks.push(ms(now - sent));
                }
                if now >= end || state.closed.load(Ordering::Relaxed) {
                    break;
                }
                if next - (acked + 1) < window {
                    let frame = format!(
                        "{{\"type\":\"update_message\",\"id\":\"{id}\",\"data\":{{\"p{k}\":{{\"n\":{next}}}}}}}"
                    );
                    if let Err(err) = writer.text(&frame).await {
                        send_error = Some(err.to_string());
                        break;
                    }
                    pending.push_back((next, Instant::now()));
                    next += 1;
                } else {
                    tokio::select! {
                        () = state.ack_notify.notified() => {}
                        () = tokio::time::sleep_until(end.into()) => {}
                    }
                }
            }
            (next - 1, next as u64, acks, pending, send_error)
        }));
    }
    let mut last_sent = Vec::with_capacity(patchers);
    let mut total_sent = 0u64;
    let mut ack_latencies = Vec::new();
    let mut leftovers = Vec::new();
    for task in tasks {
        let (last, sent, acks, pending, error) = task.await.map_err(|err| err.to_string())?;
        if let Some(error) = error {
            result.error(format!("patch send failed: {error}"), 1);
        }
        last_sent.push(last);
        total_sent += sent;
        ack_latencies.extend(acks);
        leftovers.push(pending);
    }
    log(format!(
        "hot: {total_sent} patches sent; waiting until each patcher sees its last one"
    ));
    let all_acked = wait_until(Duration::from_secs(120), Duration::from_millis(1), || {
        sessions
            .iter()
            .zip(&last_sent)
            .all(|(s, last)| s.state.acked.load(Ordering::Relaxed) >= *last)
    })
    .await;
    let visible_at = Instant::now();
    // The acknowledgement latency of the patches still pending at the end.
    for (pending, session) in leftovers.into_iter().zip(&sessions) {
        let acked = session.state.acked.load(Ordering::Relaxed);
        for (n, sent) in pending {
            if n <= acked {
                ack_latencies.push(ms(visible_at - sent));
            }
        }
    }
    if !all_acked {
        result
            .notes
            .push("not every patcher saw its last patch over the WebSocket within 120 s".into());
    }
    // REST agrees?
    let mut rest_ok = false;
    let mut missing_in_rest = 0;
    for _ in 0..100 {
        match ctx.api.message(&token, id).await {
            Ok(view) => {
                missing_in_rest = last_sent
                    .iter()
                    .enumerate()
                    .filter(|(k, last)| {
                        **last >= 0 && view["data"][format!("p{k}")]["n"].as_i64() != Some(**last)
                    })
                    .count();
                if missing_in_rest == 0 {
                    rest_ok = true;
                    break;
                }
            }
            Err(err) => result.error(format!("GET message: {err}"), 1),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest_at = Instant::now();
    if !rest_ok {
        result.lost_frames += missing_in_rest as u64;
        result.error(
            "patcher's last value missing in REST",
            missing_in_rest as u64,
        );
    }
    // Let late message.updated frames arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_perf(perf, &mut result).await;
    rss_into(&mut result, rss.finish().await);
    let elapsed = visible_at - start;
    let merges = per_second(total_sent as usize, elapsed);
    // `message.updated` carries the whole data, so a gateway may coalesce the unsent ones of
    // a session that lags: a session receives at most one per patch (more is a duplicate),
    // and what counts is that every patcher saw its last value (above) and REST agrees.
    let mut received = 0u64;
    for (session, before) in sessions.iter().zip(&updated_before) {
        let got = session.state.updated.load(Ordering::Relaxed) - before;
        received += got;
        result.duplicated += got.saturating_sub(total_sent);
    }
    for session in &sessions {
        if let Some(trace) = session.state.jobs.lock().get(&id) {
            result.duplicated += u64::from(trace.duplicates);
            result.reordered += u64::from(trace.reordered);
        }
    }
    account_sessions(&sessions, &mut result);
    result.rows.push(Row::new(
        "patch sent → own value seen in message.updated",
        format!("{merges:.0} merges/s"),
        summarize(ack_latencies),
    ));
    result.notes.push(format!(
        "{total_sent} patches in {:.2} s until all visible over the WebSocket ({:.2} s incl. the REST check); {received} message.updated frames received ({:.0}/s; at most {} = patches × sessions, fewer when coalesced)",
        elapsed.as_secs_f64(),
        (rest_at - start).as_secs_f64(),
        per_second(received as usize, elapsed),
        total_sent * patchers as u64
    ));
    merge_extra(
        &mut result,
        serde_json::json!({
            "patches": total_sent,
            "merges_per_second": merges,
            "message_updated_received": received,
        }),
    );
    close_sessions(sessions).await;
    Ok(result)
}
