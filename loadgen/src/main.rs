//! loadgen: the gateway's load generator.
//!
//! It drives a gateway through its public contract only (REST + WebSocket over real sockets)
//! and reports, per scenario, throughput, latency percentiles, the gateway's peak RSS and any
//! lost or duplicated event. By default it starts its own `forge-sim` (zero generation time)
//! and `forge-gateway` (found next to its own executable) for each scenario, on a fresh data
//! directory (or PostgreSQL schema and Redis prefix), and kills them at the end.
//!
//! It is a crate of its own and does not depend on `forge-gateway`: what it knows of the
//! gateway is the public contract (`../shared/design/API.md`), so it measures any build, old or
//! new, the same way. `--workspace` in the build line below is needed because `loadgen` is not
//! the root package; the three binaries land in the same `target/<profile>/`, where `loadgen`
//! looks for the other two.
//!
//! ```sh
//! cargo build --release --workspace --bin loadgen --bin forge-gateway --bin forge-sim
//! target/release/loadgen                                   # all scenarios, embedded default
//! target/release/loadgen --database-url postgres://postgres@127.0.0.1:5432/test \
//!                        --redis-url redis://127.0.0.1:6379
//! target/release/loadgen --scenario throughput --duration 10s --clients 128
//! target/release/loadgen --url http://127.0.0.1:8080 --sim-url http://127.0.0.1:7861 --gateway-pid 1234
//! target/release/loadgen --scenario flood                  # issue 14: one WebSocket floods
//! target/release/loadgen --scenario deep --sims 2 --forge-slots 64   # issue 16: deep queues
//! target/release/loadgen --scenario open --connections 128 # issue 16: open-loop intake
//! target/release/loadgen --scenario listings               # issue 22: large listings
//! ```
//!
//! Definitions (all times are taken in the load generator, on receipt):
//! - throughput: jobs whose `job.complete` arrived inside the window, divided by the window.
//! - submit → X: from just before the `POST /api/v1/messages` is sent until the frame X of
//!   that job is read from its owner's WebSocket.
//! - lost job: accepted (202) but no `job.complete`/`job.error`/`job.cancelled` within the
//!   drain timeout; lost frame: a `seq` gap on a connection, or a finished job that never got
//!   its `job.queued`/`job.processing`; duplicate: a second frame of the same type for a job
//!   (`job.position`, `job.progress`, `job.preview`, `message.updated` excepted) or a second
//!   event with the same version.
//! - position frame: a `job.position`, or a batched `job.positions` (one frame, many jobs); a
//!   position update: one job's new position, whichever frame carried it.

mod args;
mod client;
mod procs;
mod report;
mod sampling;
mod scenarios;
mod session;
mod trace;
mod ws;

use args::Args;
use clap::Parser;
use procs::{DeploySettings, Deployment, Stores};
use report::ScenarioResult;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// A progress line on stderr.
pub fn log(message: impl AsRef<str>) {
    let elapsed = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[loadgen {elapsed:7.1}s] {}", message.as_ref());
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadgen: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(args) => outcome,
            _ = tokio::signal::ctrl_c() => {
                log("interrupted: stopping the gateway and the simulator");
                Err("interrupted".to_owned())
            }
        }
    });
    // Dropping the runtime ends every session task; children were killed when their
    // deployment was dropped.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios; Ok(true) when nothing was lost or duplicated.
async fn run(args: Args) -> Result<bool, String> {
    let scenarios = args::scenario_list(&args.scenario)?;
    let stores = Stores {
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
    };
    let mut extra_env = Vec::new();
    for pair in &args.gateway_env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--gateway-env {pair:?}: expected KEY=VALUE"))?;
        extra_env.push((key.to_owned(), value.to_owned()));
    }
    let tag = format!("{:04x}", rand::random::<u16>());
    let mut results: Vec<ScenarioResult> = Vec::new();
    for name in &scenarios {
        let (ctx, deployment) = match &args.url {
            Some(url) => {
                let label = if args.database_url.is_some() || args.redis_url.is_some() {
                    stores.label()
                } else {
                    "external".to_owned()
                };
                (
                    scenarios::Ctx {
                        api: client::Api::new(url)?,
                        sim_urls: args.sim_url.iter().cloned().collect(),
                        pid: args.gateway_pid,
                        stores: label,
                        args: args.clone(),
                        external: true,
                        others: Vec::new(),
                        tag: tag.clone(),
                    },
                    None,
                )
            }
            None => {
                let many = matches!(
                    name.as_str(),
                    "throughput" | "latency" | "soak" | "deep" | "open" | "big"
                );
                // The scenarios measure capacity, not the gateway's per-user and per-process
                // limits: those are lifted (the user's --gateway-env still wins), except for
                // the flood, which measures what the limits do.
                let mut extra_env = extra_env.clone();
                if name != "flood" {
                    for key in [
                        "MAX_SESSIONS",
                        "MAX_SESSIONS_PER_USER",
                        "MAX_CONNECTIONS",
                        "WS_COMMANDS_PER_SECOND",
                    ] {
                        extra_env.insert(0, (key.to_owned(), "1000000".to_owned()));
                    }
                }
                let settings = DeploySettings {
                    stores: stores.clone(),
                    sim_latency: "0s".into(),
                    sims: if name == "models" {
                        args.model_layout.split(';').count()
                    } else if many {
                        args.sims
                    } else {
                        1
                    },
                    forge_slots: if many { args.forge_slots } else { Some(1) },
                    ws_outbox: args.ws_outbox,
                    data_dir_base: args
                        .data_dir_base
                        .clone()
                        .unwrap_or_else(std::env::temp_dir),
                    extra_env,
                    gateway_bin: args.gateway_bin.clone(),
                };
                let deployment = match Deployment::start(&settings).await {
                    Ok(deployment) => deployment,
                    Err(err) => {
                        let mut failed = ScenarioResult::new(name, &stores.label());
                        failed.failed = Some(format!("could not start the gateway: {err}"));
                        log(format!(
                            "{name}: {}",
                            failed.failed.as_deref().unwrap_or("")
                        ));
                        results.push(failed);
                        continue;
                    }
                };
                log(format!(
                    "{name}: gateway {} (pid {}), simulator(s) {} — {}",
                    deployment.gateway.url,
                    deployment.gateway.pid,
                    deployment
                        .sims
                        .iter()
                        .map(|sim| sim.url.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    stores.label()
                ));
                (
                    scenarios::Ctx {
                        api: client::Api::new(&deployment.gateway.url)?,
                        sim_urls: deployment.sims.iter().map(|sim| sim.url.clone()).collect(),
                        pid: Some(deployment.gateway.pid),
                        stores: stores.label(),
                        args: args.clone(),
                        external: false,
                        others: deployment
                            .sims
                            .iter()
                            .map(|sim| ("forge-sim".to_owned(), sim.pid))
                            .collect(),
                        tag: tag.clone(),
                    },
                    Some(deployment),
                )
            }
        };
        let started = Instant::now();
        let (ctx, mut deployment) = (ctx, deployment);
        let outcome = match name.as_str() {
            "throughput" => scenarios::throughput(&ctx).await,
            "latency" => scenarios::latency(&ctx).await,
            "fanout" => scenarios::fanout(&ctx).await,
            "hot" => scenarios::hot(&ctx).await,
            "idle" => scenarios::idle(&ctx).await,
            "soak" => scenarios::soak(&ctx).await,
            "flood" => scenarios::flood(&ctx).await,
            "deep" => scenarios::deep(&ctx).await,
            "open" => scenarios::open(&ctx).await,
            "big" => scenarios::big(&ctx, deployment.as_mut()).await,
            "listings" => scenarios::listings(&ctx).await,
            "models" => scenarios::models(&ctx).await,
            _ => unreachable!("checked by args::scenario_list"),
        };
        let mut result = match outcome {
            Ok(result) => result,
            Err(err) => {
                let mut failed = ScenarioResult::new(name, &ctx.stores);
                failed.failed = Some(err);
                failed
            }
        };
        if let Some(mut deployment) = deployment {
            if let Ok(Some(status)) = deployment.gateway.child.try_wait() {
                result
                    .notes
                    .push(format!("the gateway exited during the scenario: {status}"));
            }
            result.gateway_log = deployment.gateway.logs.problems();
            deployment.stop().await;
        }
        log(format!(
            "{name} done in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            result
                .failed
                .as_ref()
                .map(|err| format!(" — FAILED: {err}"))
                .unwrap_or_default()
        ));
        eprint!("{}", report::markdown(std::slice::from_ref(&result)));
        results.push(result);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(|err| err.to_string())?
        );
    } else {
        println!("{}", report::markdown(&results));
    }
    Ok(results.iter().all(ScenarioResult::clean))
}
