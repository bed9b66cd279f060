//! Scenario 5, idle memory: `--idle-sessions` idle WebSocket sessions opened and closed
//! `--idle-rounds` times; the gateway's RSS per open session and whether closed sessions'
//! memory is reused. Target: < 20 KiB per session.

use super::common::{
    account_sessions, close_sessions, merge_extra, open_sessions, per_second, rss_into, tokens,
};
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, summarize};
use crate::sampling::{RssSampler, rss_kib};
use crate::session::{Counters, SessionOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's RSS (KiB) after waiting `wait`.
pub(super) async fn settle_rss(pid: u32, wait: Duration) -> u64 {
    tokio::time::sleep(wait).await;
    rss_kib(pid).map_or(0, |(rss, _)| rss)
}

/// Runs the idle-memory scenario.
pub async fn idle(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let n = args.idle_sessions;
    let rounds = args.idle_rounds.max(1);
    let mut result = ScenarioResult::new("idle", &ctx.stores);
    result.config = format!(
        "{n} idle WebSocket sessions (one user each), held 5 s, then closed; {rounds} round(s) with the same users"
    );
    let counters = Arc::new(Counters::default());
    let users = tokens(ctx, "idle", n).await?;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let measure = |wait: Duration| async move {
        match ctx.pid {
            Some(pid) => Some(settle_rss(pid, wait).await),
            None => None,
        }
    };
    let before = measure(Duration::from_secs(2)).await;
    let mut open_rate = Vec::new();
    let mut all_open_times = Vec::new();
    let mut series = Vec::new();
    for round in 1..=rounds {
        let started = Instant::now();
        let (sessions, open_times) =
            open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
        let open_elapsed = started.elapsed();
        open_rate.push(per_second(n, open_elapsed));
        all_open_times.extend(open_times);
        log(format!(
            "idle round {round}: {} sessions open in {:.1} s",
            sessions.len(),
            open_elapsed.as_secs_f64()
        ));
        let with_sessions = measure(Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        account_sessions(&sessions, &mut result);
        close_sessions(sessions).await;
        let closed = measure(Duration::from_secs(3)).await;
        series.push((with_sessions, closed));
    }
    rss_into(&mut result, rss.finish().await);
    result.rows.push(Row::new(
        "session open (connect → hello + snapshot)",
        format!(
            "{} sessions/s",
            open_rate
                .iter()
                .map(|rate| format!("{rate:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        summarize(all_open_times),
    ));
    if let (Some(before), Some((Some(after), _))) = (before, series.first().copied()) {
        let per = (after as f64 - before as f64) / n as f64;
        result.rows.push(Row::new(
            format!("KiB per idle session: {per:.1}"),
            "",
            None,
        ));
        let mib = |kib: Option<u64>| {
            kib.map_or("—".to_owned(), |kib| {
                format!("{:.1}", kib as f64 / 1024.0)
            })
        };
        result.notes.push(format!(
            "gateway RSS MiB: before {}; {}",
            mib(Some(before)),
            series
                .iter()
                .enumerate()
                .map(|(i, (with, closed))| format!(
                    "round {}: with {n} sessions {}, after closing them {}",
                    i + 1,
                    mib(*with),
                    mib(*closed)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        merge_extra(
            &mut result,
            serde_json::json!({
                "kib_per_session": per,
                "rss_before_kib": before,
                "rounds_rss_with_and_after_close_kib": series,
            }),
        );
    }
    Ok(result)
}
