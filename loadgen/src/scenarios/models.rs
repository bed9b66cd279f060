//! Scenario `models` (issue 25): `--model-jobs` jobs, each asking for a model drawn from
//! `--model-mix`, queued at once on simulators offering `--model-layout` (one list per
//! simulator), where a checkpoint switch costs `--model-switch` and a generation
//! `--model-latency`. Measures the time until every job ended, and the switches each
//! simulator made. Run it against an older gateway with `--gateway-bin` to compare routing
//! policies on the same draw.

use super::common::tokens;
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the batch may take before the scenario gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(900);

/// Runs the models scenario.
pub async fn models(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let layout: Vec<Vec<String>> = args
        .model_layout
        .split(';')
        .map(|list| list.split(',').map(|m| m.trim().to_owned()).collect())
        .collect();
    if layout.len() != ctx.sim_urls.len() {
        return Err(format!(
            "--model-layout names {} simulators, {} run",
            layout.len(),
            ctx.sim_urls.len()
        ));
    }
    let mut result = ScenarioResult::new("models", &ctx.stores);
    result.config = format!(
        "{} jobs drawn from {:?} (seed {}), queued at once; backends {}; switch {:?}, generation {:?}, 1 slot each",
        args.model_jobs,
        args.model_mix,
        args.model_seed,
        layout
            .iter()
            .map(|models| models.join(","))
            .collect::<Vec<_>>()
            .join(" / "),
        args.model_switch,
        args.model_latency
    );
    for (sim, models) in ctx.sim_urls.iter().zip(&layout) {
        ctx.api
            .sim_config(
                sim,
                json!({
                    "models": models,
                    "model_switch": humantime::format_duration(args.model_switch).to_string(),
                    "latency": humantime::format_duration(args.model_latency).to_string(),
                }),
            )
            .await?;
        reset_stats(ctx, sim).await?;
    }
    let users = tokens(ctx, "models", 1).await?;
    let token = users[0].1.clone();
    wait_for_listing(ctx, &token, &layout).await?;

    let mut draw = StdRng::seed_from_u64(args.model_seed);
    let asked: Vec<String> = (0..args.model_jobs)
        .map(|_| args.model_mix[draw.random_range(0..args.model_mix.len())].clone())
        .collect();
    log(format!(
        "models: {} jobs, mix {:?}",
        asked.len(),
        args.model_mix
    ));
    let started = Instant::now();
    let mut ids: Vec<Uuid> = Vec::new();
    for (n, model) in asked.iter().enumerate() {
        let submitted = ctx
            .api
            .submit_json(
                &token,
                json!({"prompt": format!("models {n}"), "width": 64, "height": 64, "steps": 1, "model": model}),
            )
            .await;
        let (id, _) = submitted
            .result
            .map_err(|err| format!("submit {n}: {err}"))?;
        ids.push(id);
    }
    let (mut complete, mut failed) = (0, 0);
    for id in &ids {
        match wait_terminal(ctx, &token, *id, started).await?.as_str() {
            "complete" => complete += 1,
            _ => failed += 1,
        }
    }
    let took = started.elapsed();
    result.rows.push(Row::new(
        format!(
            "{} jobs finished ({complete} complete, {failed} failed)",
            ids.len()
        ),
        format!("{:.1} s", took.as_secs_f64()),
        None,
    ));
    let mut total = 0;
    for (n, sim) in ctx.sim_urls.iter().enumerate() {
        let stats = sim_stats(ctx, sim).await?;
        let switches = stats["model_switches"].as_u64().unwrap_or(0);
        total += switches;
        result.rows.push(Row::new(
            format!(
                "backend {} ({}): jobs, switches",
                n + 1,
                layout[n].join(",")
            ),
            format!("{}, {switches}", stats["completed"].as_u64().unwrap_or(0)),
            None,
        ));
    }
    result
        .rows
        .push(Row::new("switches in all", total.to_string(), None));
    Ok(result)
}

/// Waits until the gateway lists every model of the layout.
async fn wait_for_listing(ctx: &Ctx, token: &str, layout: &[Vec<String>]) -> Res<()> {
    let mut wanted: Vec<&String> = layout.iter().flatten().collect();
    wanted.sort();
    wanted.dedup();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listing: Value = get_json(ctx, &format!("{}/api/v1/models", ctx.api.base), Some(token))
            .await
            .unwrap_or(Value::Null);
        let listed = listing["models"].as_array().map_or(0, Vec::len);
        if listed == wanted.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway never listed {wanted:?}: {listing}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls a job until it ended; its status.
async fn wait_terminal(ctx: &Ctx, token: &str, id: Uuid, since: Instant) -> Res<String> {
    loop {
        let message = ctx.api.message(token, id).await?;
        let status = message["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "complete" | "error" | "cancelled") {
            return Ok(status);
        }
        if since.elapsed() > GIVE_UP_AFTER {
            return Err(format!("job {id} did not end within {GIVE_UP_AFTER:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sim_stats(ctx: &Ctx, sim: &str) -> Res<Value> {
    get_json(
        ctx,
        &format!("{}/sim/stats", sim.trim_end_matches('/')),
        None,
    )
    .await
}

async fn reset_stats(ctx: &Ctx, sim: &str) -> Res<()> {
    let response = ctx
        .api
        .http
        .post(format!("{}/sim/reset-stats", sim.trim_end_matches('/')))
        .send()
        .await
        .map_err(|err| err.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("reset-stats: {}", response.status()))
    }
}

async fn get_json(ctx: &Ctx, url: &str, token: Option<&str>) -> Res<Value> {
    let mut request = ctx.api.http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|err| err.to_string())?;
    let body = response.bytes().await.map_err(|err| err.to_string())?;
    serde_json::from_slice(&body).map_err(|err| err.to_string())
}
