//! Scenario 3, fan-out: `--sessions` sessions (one user each) with one queued job each behind a
//! hanging backend; each of `--pops` pops (a cancel of the running job) must reach every
//! waiting session as its new `job.position`, in order, once. Target: the last session has its
//! new position within 250 ms (p99 over the pops) on PostgreSQL + Redis.

use super::common::{
    account_sessions, close_sessions, count_submit_errors, merge_extra, open_sessions, rss_into,
    tokens, wait_until,
};
use super::perf::{finish_perf, start_perf};
use super::{Ctx, Res};
use crate::client::Submitted;
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, SessionOptions};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Runs the fan-out scenario.
pub async fn fanout(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let sessions_wanted = args.sessions;
    let pops = args.pops.min(sessions_wanted);
    let mut result = ScenarioResult::new("fanout", &ctx.stores);
    result.config = format!(
        "{sessions_wanted} sessions (one user each) with one queued job each behind a hanging backend; {pops} pops, each by cancelling the running job"
    );
    let Some(sim) = ctx.sim_url() else {
        return Err("fanout needs control of the simulator (--sim-url)".into());
    };
    ctx.api
        .sim_config(&sim, serde_json::json!({"mode": "hang"}))
        .await?;
    let counters = Arc::new(Counters::default());
    let outcome = fanout_inner(ctx, &sim, sessions_wanted, pops, &counters, &mut result).await;
    let _ = ctx
        .api
        .sim_config(&sim, serde_json::json!({"mode": "normal"}))
        .await;
    outcome?;
    Ok(result)
}

async fn fanout_inner(
    ctx: &Ctx,
    _sim: &str,
    sessions_wanted: usize,
    pops: usize,
    counters: &Arc<Counters>,
    result: &mut ScenarioResult,
) -> Res<()> {
    let users = tokens(ctx, "fan", sessions_wanted).await?;
    let blocker_user = tokens(ctx, "fan-blocker", 1).await?;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let (blocker, _) =
        open_sessions(ctx, &blocker_user, counters, |_| SessionOptions::default()).await?;
    let blocker = blocker.into_iter().next().ok_or("no blocker session")?;
    let (sessions, open_times) = open_sessions(ctx, &users, counters, |_| SessionOptions {
        record_positions: true,
        ..Default::default()
    })
    .await?;
    log(format!("fanout: {} sessions open", sessions.len()));

    // The blocker occupies the (hanging) backend.
    let submitted = ctx
        .api
        .submit(&blocker.token, "loadgen fanout blocker")
        .await;
    let (blocker_id, _) = submitted
        .result
        .map_err(|err| format!("blocker submit: {err}"))?;
    let taken = wait_until(Duration::from_secs(30), Duration::from_millis(5), || {
        blocker
            .state
            .jobs
            .lock()
            .get(&blocker_id)
            .is_some_and(|trace| trace.processing.is_some())
    })
    .await;
    if !taken {
        return Err("the blocker job was not taken by the backend within 30 s".into());
    }

    // One queued job per session.
    let started = Instant::now();
    let results: Vec<(usize, Submitted)> =
        futures::stream::iter(sessions.iter().enumerate().map(|(index, session)| {
            let api = ctx.api.clone();
            let token = session.token.clone();
            async move {
                (
                    index,
                    api.submit(&token, &format!("loadgen fanout {index}")).await,
                )
            }
        }))
        .buffer_unordered(ctx.args.submit_concurrency)
        .collect()
        .await;
    let accepted = count_submit_errors(&results, result);
    log(format!(
        "fanout: {} jobs queued in {:.1} s",
        accepted.len(),
        started.elapsed().as_secs_f64()
    ));
    if accepted.len() != sessions.len() {
        return Err(format!(
            "only {} of {} fanout jobs were accepted",
            accepted.len(),
            sessions.len()
        ));
    }
    let job_of: Vec<Uuid> = {
        let mut ids = vec![Uuid::nil(); sessions.len()];
        for job in &accepted {
            ids[job.session] = job.id;
        }
        ids
    };
    let all_queued = wait_until(Duration::from_secs(120), Duration::from_millis(10), || {
        counters.queued.load(Ordering::Relaxed) > sessions.len() as u64
    })
    .await;
    if !all_queued {
        result.lost_frames +=
            (sessions.len() as u64 + 1).saturating_sub(counters.queued.load(Ordering::Relaxed));
        return Err("not every session received its job.queued within 120 s".into());
    }
    // Let any position pushes of the submission burst settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Positions now: they must be exactly 1..=n.
    let mut initial = vec![0u32; sessions.len()];
    let mut by_position: HashMap<u32, usize> = HashMap::new();
    let mut bad_initial = 0u64;
    for (index, session) in sessions.iter().enumerate() {
        let mut jobs = session.state.jobs.lock();
        let trace = jobs.get_mut(&job_of[index]);
        let position = trace
            .as_ref()
            .and_then(|trace| trace.last_position)
            .unwrap_or(0);
        if let Some(trace) = trace {
            // Only what follows the pops matters from here on.
            trace.positions.clear();
        }
        initial[index] = position;
        if position == 0
            || position as usize > sessions.len()
            || by_position.insert(position, index).is_some()
        {
            bad_initial += 1;
        }
    }
    if bad_initial > 0 {
        result.error("initial positions not exactly 1..n", bad_initial);
    }

    // The pops.
    let perf = start_perf(ctx, "fanout");
    let mut t0 = Vec::with_capacity(pops);
    let mut cancel_rtt = Vec::with_capacity(pops);
    let mut waits_ok = 0;
    let mut running: (String, Uuid) = (blocker.token.clone(), blocker_id);
    let expected_total = |k: usize| initial.iter().filter(|p| **p as usize > k).count() as u64;
    for k in 1..=pops {
        let positions_before = counters.position.load(Ordering::Relaxed);
        let processing_before = counters.processing.load(Ordering::Relaxed);
        let expected = expected_total(k);
        let sent = Instant::now();
        let status = ctx.api.cancel(&running.0, running.1).await;
        cancel_rtt.push(ms(sent.elapsed()));
        match status {
            Ok(200) => {}
            Ok(other) => result.error(format!("cancel answered {other}"), 1),
            Err(err) => result.error(format!("cancel failed: {err}"), 1),
        }
        t0.push(sent);
        let done = wait_until(Duration::from_secs(30), Duration::from_millis(1), || {
            counters.position.load(Ordering::Relaxed) >= positions_before + expected
                && counters.processing.load(Ordering::Relaxed) > processing_before
        })
        .await;
        if done {
            waits_ok += 1;
        } else {
            log(format!(
                "fanout pop {k}: only {} of {expected} position updates within 30 s",
                counters.position.load(Ordering::Relaxed) - positions_before
            ));
        }
        // The job at position k is the one running now.
        let Some(&next) = by_position.get(&(k as u32)) else {
            return Err(format!(
                "no session had position {k}; cannot continue the pops"
            ));
        };
        running = (sessions[next].token.clone(), job_of[next]);
        // Give stragglers (positions beyond the count) a moment before the next pop.
        tokio::time::sleep(Duration::from_millis(ctx.args.pop_gap_ms)).await;
    }
    // A last look: late frames.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_perf(perf, result).await;
    let rss_report = rss.finish().await;

    // Analysis.
    let mut per_pop_last = vec![Duration::ZERO; pops];
    let mut per_pop_all: Vec<Vec<f64>> = vec![Vec::new(); pops];
    let mut missing = 0u64;
    let mut wrong = 0u64;
    let mut first_wrong = None;
    let mut processing_after = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let p = initial[index] as usize;
        if p == 0 {
            continue;
        }
        let jobs = session.state.jobs.lock();
        let Some(trace) = jobs.get(&job_of[index]) else {
            continue;
        };
        result.duplicated += u64::from(trace.duplicates);
        result.reordered += u64::from(trace.reordered);
        let mut cursor = 0;
        for k in 1..=pops.min(p.saturating_sub(1)) {
            let want = (p - k) as u32;
            // Positions must arrive in order: the next one must be `want`.
            match trace.positions[cursor..]
                .iter()
                .position(|(_, v)| *v == want)
            {
                Some(offset) => {
                    for (_, v) in &trace.positions[cursor..cursor + offset] {
                        wrong += 1;
                        first_wrong.get_or_insert(format!(
                            "a session at position {p} got {v} while {want} was due after pop {k}"
                        ));
                    }
                    let (at, _) = trace.positions[cursor + offset];
                    cursor += offset + 1;
                    let delay = at.saturating_duration_since(t0[k - 1]);
                    per_pop_last[k - 1] = per_pop_last[k - 1].max(delay);
                    per_pop_all[k - 1].push(ms(delay));
                }
                None => {
                    missing += 1;
                    first_wrong.get_or_insert(format!(
                        "a session at position {p} never got {want} (pop {k}); it got {:?}",
                        trace.positions.iter().map(|(_, v)| *v).collect::<Vec<_>>()
                    ));
                }
            }
        }
        for (_, v) in &trace.positions[cursor.min(trace.positions.len())..] {
            wrong += 1;
            first_wrong.get_or_insert(format!(
                "a session at position {p} got an extra position {v}"
            ));
        }
        if p <= pops {
            match trace.processing {
                Some(at) => processing_after.push(ms(at.saturating_duration_since(t0[p - 1]))),
                None => {
                    missing += 1;
                    first_wrong
                        .get_or_insert(format!("the job at position {p} never got job.processing"));
                }
            }
        }
    }
    result.lost_frames += missing;
    if wrong > 0 {
        result.error("wrong job.position value", wrong);
    }
    if let Some(first) = first_wrong {
        result.notes.push(format!("first problem: {first}"));
    }
    account_sessions(&sessions, result);
    rss_into(result, rss_report);

    let fan: Vec<f64> = per_pop_last.iter().map(|d| ms(*d)).collect();
    let median_pop = summarize(fan.clone());
    let throughput = median_pop.map_or(String::new(), |s| {
        format!(
            "{} positions in {:.0} ms (median pop)",
            sessions.len().saturating_sub(1),
            s.p50
        )
    });
    result.rows.push(Row::new(
        "cancel sent → last session has its new position (per pop)",
        throughput,
        median_pop,
    ));
    result.rows.push(Row::new(
        "cancel sent → each session's new position (all sessions, all pops)",
        "",
        summarize(per_pop_all.iter().flatten().copied().collect()),
    ));
    result.rows.push(Row::new(
        "cancel sent → next job's job.processing",
        "",
        summarize(processing_after),
    ));
    result.rows.push(Row::new(
        "cancel POST round trip",
        "",
        summarize(cancel_rtt),
    ));
    result.rows.push(Row::new(
        "session open (connect → hello + snapshot)",
        "",
        summarize(open_times),
    ));
    result.notes.push(format!(
        "per-pop fan-out ms: {}",
        fan.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    result.notes.push(format!(
        "per-pop p50 over sessions ms: {}",
        per_pop_all
            .iter()
            .map(|v| summarize(v.clone()).map_or("—".into(), |s| format!("{:.0}", s.p50)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if waits_ok < pops {
        result.notes.push(format!(
            "{} pops did not see every update within 30 s",
            pops - waits_ok
        ));
    }
    merge_extra(
        result,
        serde_json::json!({
            "per_pop_fanout_ms": fan,
            "sessions": sessions.len(),
            "pops": pops,
        }),
    );

    if ctx.external {
        // Leave the gateway as we found it: cancel what we queued.
        let mut all = sessions
            .iter()
            .map(|s| s.token.clone())
            .zip(job_of.iter().copied())
            .collect::<Vec<_>>();
        all.push((blocker.token.clone(), blocker_id));
        futures::stream::iter(all.into_iter().map(|(token, id)| {
            let api = ctx.api.clone();
            async move {
                let _ = api.cancel(&token, id).await;
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    }
    close_sessions(sessions).await;
    blocker.close().await;
    Ok(())
}
