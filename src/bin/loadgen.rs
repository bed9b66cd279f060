//! loadgen: the gateway's load generator.
//!
//! It drives a gateway through its public contract only (REST + WebSocket over real sockets)
//! and reports, per scenario, throughput, latency percentiles, the gateway's peak RSS and any
//! lost or duplicated event. By default it starts its own `forge-sim` (zero generation time)
//! and `forge-gateway` (found next to its own executable) for each scenario, on a fresh data
//! directory (or PostgreSQL schema and Redis prefix), and kills them at the end.
//!
//! ```sh
//! cargo build --release --workspace --bin loadgen --bin forge-gateway --bin forge-sim
//! target/release/loadgen                                   # all scenarios, embedded default
//! target/release/loadgen --database-url postgres://postgres@127.0.0.1:5432/test \
//!                        --redis-url redis://127.0.0.1:6379
//! target/release/loadgen --scenario throughput --duration 10s --clients 128
//! target/release/loadgen --url http://127.0.0.1:8080 --sim-url http://127.0.0.1:7861 --gateway-pid 1234
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

#[path = "loadgen/client.rs"]
mod client;
#[path = "loadgen/procs.rs"]
mod procs;
#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/scenarios.rs"]
mod scenarios;
#[path = "loadgen/ws.rs"]
mod ws;

use clap::Parser;
use procs::{DeploySettings, Deployment, Stores};
use report::ScenarioResult;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Load generator of forge-gateway: throughput, latency, fan-out, hot message, idle memory, soak.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Scenarios to run, comma-separated: throughput, latency, fanout, hot, idle, soak, or all
    /// (= throughput,latency,fanout,hot,idle).
    #[arg(long, default_value = "all")]
    pub scenario: String,

    /// Target an already running gateway instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the simulator behind it (needed by fanout).
    #[arg(long)]
    pub sim_url: Option<String>,
    /// With --url: the gateway's pid, to measure its memory.
    #[arg(long)]
    pub gateway_pid: Option<u32>,

    /// PostgreSQL for the started gateway (a fresh schema per scenario, dropped afterwards).
    #[arg(long, env = "LOADGEN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the started gateway (a fresh key prefix per scenario, deleted afterwards).
    #[arg(long, env = "LOADGEN_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Simulators (Forge backends) for the throughput, latency and soak runs; fanout, hot and
    /// idle always use one.
    #[arg(long, default_value_t = 1)]
    pub sims: usize,
    /// FORGE_SLOTS of the started gateway for the throughput, latency and soak runs (jobs one
    /// backend runs at a time) [default: the gateway's default].
    #[arg(long)]
    pub forge_slots: Option<u32>,
    /// WS_OUTBOX of the started gateway.
    #[arg(long, default_value_t = 65536)]
    pub ws_outbox: u32,
    /// Where the started gateways' fresh DATA_DIRs (SQLite file, images) are created
    /// [default: the system temp dir].
    #[arg(long)]
    pub data_dir_base: Option<std::path::PathBuf>,
    /// Extra environment for the started gateway, KEY=VALUE (repeatable).
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,

    /// Length of the throughput and latency runs.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,
    /// throughput: concurrent users, each with a WebSocket.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// throughput: outstanding jobs per user.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// latency: offered load, jobs per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// latency and soak: users the load is spread over.
    #[arg(long, default_value_t = 32)]
    pub latency_users: usize,
    /// fanout: WebSocket sessions, each with one queued job.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// fanout: pops to measure.
    #[arg(long, default_value_t = 20)]
    pub pops: usize,
    /// fanout: pause between pops after every update arrived, in ms.
    #[arg(long, default_value_t = 100)]
    pub pop_gap_ms: u64,
    /// hot: sessions patching the one message.
    #[arg(long, default_value_t = 64)]
    pub patchers: usize,
    /// hot: unacknowledged patches per session.
    #[arg(long, default_value_t = 32)]
    pub patch_window: usize,
    /// hot: how long the patchers run.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub hot_duration: Duration,
    /// idle: sessions to open.
    #[arg(long, default_value_t = 10_000)]
    pub idle_sessions: usize,
    /// idle: open/close rounds (the second shows whether closed sessions' memory is reused).
    #[arg(long, default_value_t = 2)]
    pub idle_rounds: usize,
    /// soak: length.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub soak_duration: Duration,
    /// soak: jobs per second.
    #[arg(long, default_value_t = 100.0)]
    pub soak_rate: f64,
    /// soak: idle sessions held open meanwhile.
    #[arg(long, default_value_t = 1000)]
    pub soak_idle: usize,

    /// How long after a run's last submission every job must have ended.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Parallel WebSocket connects and token requests.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Parallel submissions when queueing many jobs at once (fanout).
    #[arg(long, default_value_t = 200)]
    pub submit_concurrency: usize,
    /// Finished jobs read back over REST to check their stored status.
    #[arg(long, default_value_t = 500)]
    pub verify_sample: usize,
    /// Record a `perf` profile of the gateway during the throughput window into PREFIX-<stores>.data.
    #[arg(long)]
    pub perf_out: Option<String>,
    /// Print a JSON summary on stdout instead of the Markdown tables (which still go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| format!("{err}"))
}

static START: OnceLock<Instant> = OnceLock::new();

/// A progress line on stderr.
pub fn log(message: impl AsRef<str>) {
    let elapsed = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[loadgen {elapsed:7.1}s] {}", message.as_ref());
}

fn scenario_list(text: &str) -> Result<Vec<String>, String> {
    let mut list = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "all" => {
                list.extend(["throughput", "latency", "fanout", "hot", "idle"].map(String::from))
            }
            "throughput" | "latency" | "fanout" | "hot" | "idle" | "soak" => {
                list.push(name.to_owned())
            }
            other => return Err(format!("unknown scenario {other:?}")),
        }
    }
    if list.is_empty() {
        return Err("no scenario given".into());
    }
    Ok(list)
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
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
    let scenarios = scenario_list(&args.scenario)?;
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
                        sim_url: args.sim_url.clone(),
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
                let many = matches!(name.as_str(), "throughput" | "latency" | "soak");
                let settings = DeploySettings {
                    stores: stores.clone(),
                    sim_latency: "0s".into(),
                    sims: if many { args.sims } else { 1 },
                    forge_slots: if many { args.forge_slots } else { Some(1) },
                    ws_outbox: args.ws_outbox,
                    data_dir_base: args
                        .data_dir_base
                        .clone()
                        .unwrap_or_else(std::env::temp_dir),
                    extra_env: extra_env.clone(),
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
                        sim_url: deployment.sims.first().map(|sim| sim.url.clone()),
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
        let outcome = match name.as_str() {
            "throughput" => scenarios::throughput(&ctx).await,
            "latency" => scenarios::latency(&ctx).await,
            "fanout" => scenarios::fanout(&ctx).await,
            "hot" => scenarios::hot(&ctx).await,
            "idle" => scenarios::idle(&ctx).await,
            "soak" => scenarios::soak(&ctx).await,
            _ => unreachable!("checked by scenario_list"),
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
