//! Scenario `open` (issue 16, item 5): open-loop intake, like `wrk -t1 -d20s -c32` on the POST.
//!
//! `--connections` tasks, each on its own HTTP connection, POST a small job to
//! `/api/v1/messages` back to back for `--duration` with one user's token, reading answers only
//! for their status. The user's one WebSocket counts `job.complete` meanwhile (listing complete
//! messages over REST would be far too slow at these rates). Reported: submits/s by status, the
//! POST round trip, completions/s inside the window, and how long the queue took to drain after.

use super::common::{
    account_sessions, backends, close_sessions, merge_extra, open_sessions, per_second, rss_into,
    tokens, warm_pool,
};
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, SessionOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// `--duration` when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(20);

/// What one connection's loop did: (status or error, count) and its round trips in ms.
struct Intake {
    by_status: BTreeMap<String, u64>,
    accepted: u64,
    round_trips: Vec<f64>,
}

/// Runs the open-loop intake scenario.
pub async fn open(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let duration = args.duration_or(DEFAULT_DURATION);
    let connections = args.connections.max(1);
    let mut result = ScenarioResult::new("open", &ctx.stores);
    result.config = format!(
        "{connections} HTTP connections POSTing back to back for {duration:?} with one user's token (answers read for their status only), {}, 64×64, 1 step; completions counted on the user's WebSocket",
        backends(ctx)
    );
    let counters = Arc::new(Counters::default());
    let user = tokens(ctx, "open", 1).await?;
    let (sessions, _) = open_sessions(ctx, &user, &counters, |_| SessionOptions::default()).await?;
    let token = user[0].1.clone();
    warm_pool(ctx, connections).await;
    let body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "prompt": "bench", "width": 64, "height": 64, "steps": 1
        }))
        .map_err(|err| err.to_string())?,
    );
    log(format!("open: {connections} connections for {duration:?}"));

    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let start = Instant::now();
    let end = start + duration;
    let complete_before = counters.complete.load(Ordering::Relaxed);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (api, token, body) = (ctx.api.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut intake = Intake {
                by_status: BTreeMap::new(),
                accepted: 0,
                round_trips: Vec::new(),
            };
            while Instant::now() < end {
                let (sent, outcome) = api.post_message_status(&token, body.clone()).await;
                intake.round_trips.push(ms(sent.elapsed()));
                let key = match outcome {
                    Ok(202) => {
                        intake.accepted += 1;
                        "202".to_owned()
                    }
                    Ok(status) => status.to_string(),
                    Err(err) => crate::procs::truncate(&err, 80),
                };
                *intake.by_status.entry(key).or_default() += 1;
            }
            intake
        }));
    }
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepted = 0u64;
    let mut round_trips = Vec::new();
    for task in tasks {
        let intake = task.await.map_err(|err| err.to_string())?;
        for (status, count) in intake.by_status {
            *by_status.entry(status).or_default() += count;
        }
        accepted += intake.accepted;
        round_trips.extend(intake.round_trips);
    }
    let submit_end = Instant::now();
    let complete_in_window = counters.complete.load(Ordering::Relaxed) - complete_before;
    let ended_at_window = counters.terminal.load(Ordering::Relaxed);
    log(format!(
        "open: {accepted} accepted, {complete_in_window} completed in the window; draining"
    ));

    // The drain: every accepted job must end. The socket shows it, unless it was told to
    // resync (frames were dropped for it): then REST's pending list is the truth, as it is
    // for any client (docs/api.md).
    let resynced = || sessions[0].state.resyncs.load(Ordering::Relaxed) > 0;
    let deadline = Instant::now() + args.drain_timeout;
    let mut drained = false;
    while Instant::now() < deadline {
        if counters.terminal.load(Ordering::Relaxed) >= accepted
            || (resynced() && ctx.api.list(&token, "pending", 1, None).await?.is_empty())
        {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_time = submit_end.elapsed();
    let ended = counters.terminal.load(Ordering::Relaxed);
    rss_into(&mut result, rss.finish().await);
    account_sessions(&sessions, &mut result);
    if !drained {
        result.lost_jobs += ctx.api.list_all(&token, "pending").await?.len() as u64;
    }
    if drained && ended < accepted {
        result.notes.push(format!(
            "{} jobs ended while the socket resynced (seen over REST, not as frames)",
            accepted - ended
        ));
    }
    for job in sessions[0].state.jobs.lock().values() {
        result.duplicated += u64::from(job.duplicates);
        result.reordered += u64::from(job.reordered);
        if let Some((_, code)) = &job.error {
            result.error(format!("job.error {code}"), 1);
        }
    }
    for (status, count) in &by_status {
        if status != "202" {
            result.error(format!("POST {status}"), *count);
        }
    }
    let submits: u64 = by_status.values().sum();
    result.rows.push(Row::new(
        "POST round trip (all answers)",
        format!(
            "{:.0} submits/s ({})",
            per_second(submits as usize, duration),
            by_status
                .iter()
                .map(|(status, count)| format!(
                    "{status}: {:.0}/s",
                    per_second(*count as usize, duration)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        summarize(round_trips),
    ));
    result.rows.push(Row::new(
        "job.complete received inside the window",
        format!(
            "{:.0} completions/s",
            per_second(complete_in_window as usize, duration)
        ),
        None,
    ));
    let after = ended.saturating_sub(ended_at_window);
    result.rows.push(Row::new(
        format!(
            "drain after the window: {after} jobs ended in {:.1} s{}",
            drain_time.as_secs_f64(),
            if drained {
                String::new()
            } else {
                format!(
                    " ({} still pending at the drain timeout)",
                    accepted - ended.min(accepted)
                )
            }
        ),
        format!("{:.0} jobs/s", per_second(after as usize, drain_time)),
        None,
    ));
    result.notes.push(format!(
        "{submits} POSTs in {:.1} s ({accepted} accepted); {complete_in_window} completed inside the {duration:?} window, {ended} jobs ended in total",
        (submit_end - start).as_secs_f64()
    ));
    merge_extra(
        &mut result,
        serde_json::json!({
            "connections": connections,
            "submits_by_status": by_status,
            "accepted": accepted,
            "completed_in_window": complete_in_window,
            "drain_s": drain_time.as_secs_f64(),
            "drained": drained,
        }),
    );
    close_sessions(sessions).await;
    Ok(result)
}
