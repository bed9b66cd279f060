//! forge-sim: a stand-in for a Stable Diffusion WebUI Forge server, for running the gateway
//! without a GPU and for making a backend misbehave on purpose. The server is the library
//! (`forge_sim`); this is its command line.

use clap::Parser;
use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use forge_sim::{Latency, SimConfig, SimMode, SimServer, TlsIdentity};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Serves the part of the AUTOMATIC1111 API the gateway uses, with injectable faults.
#[derive(Debug, Parser)]
#[command(
    name = "forge-sim",
    version,
    about = "A Forge (AUTOMATIC1111 API) simulator with injectable faults.",
    after_help = "Every option can also be set by the environment variable shown in brackets. Faults can be changed while running: POST /sim/config {\"mode\":\"hang\"}."
)]
struct Args {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "SIM_BIND", default_value = "127.0.0.1:7861")]
    bind: SocketAddr,

    /// Generation time: a human duration (2s, 500ms) or a range picked at random (1s..3s).
    #[arg(long, env = "SIM_LATENCY", default_value = "2s", value_parser = latency)]
    latency: Latency,

    /// Probability (0..1) that a txt2img fails with a random fault (error500, reset, garbage).
    #[arg(long, env = "SIM_FAIL_RATE", default_value_t = 0.0, value_parser = fail_rate)]
    fail_rate: f64,

    /// How txt2img answers: normal, hang, error500, reset, garbage or close.
    #[arg(long, env = "SIM_MODE", default_value = "normal", value_parser = mode)]
    mode: SimMode,

    /// Sampling speed; when set, a generation takes steps / steps-per-second instead of --latency.
    #[arg(long, env = "SIM_STEPS_PER_SECOND", value_parser = steps_per_second)]
    steps_per_second: Option<f64>,

    /// Seed of random seeds, latency picks and failures, so runs repeat.
    #[arg(long, env = "SIM_SEED", default_value_t = 0)]
    seed: u64,

    /// Whether /sdapi/v1/progress returns a live preview image.
    #[arg(long, env = "SIM_PREVIEWS", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    previews: bool,

    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "SIM_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SIM_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The checkpoints offered, comma-separated; the first is loaded at start.
    #[arg(long, env = "SIM_MODELS", value_delimiter = ',', default_value = forge_sim::DEFAULT_MODEL)]
    models: Vec<String>,

    /// What loading another checkpoint costs (a human duration: 3s, 500ms).
    #[arg(long, env = "SIM_MODEL_SWITCH", default_value = "0s", value_parser = humantime::parse_duration)]
    model_switch: std::time::Duration,
}

fn latency(text: &str) -> Result<Latency, String> {
    text.trim().parse().map_err(|err| format!("{err}"))
}

fn mode(text: &str) -> Result<SimMode, String> {
    text.parse().map_err(|err| format!("{err}"))
}

fn fail_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number between 0 and 1, got {text:?}")),
    }
}

fn steps_per_second(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("expected a number above 0, got {text:?}")),
    }
}

/// Clap's message (it names the flag and the value) on one line, without its usage block. A
/// missing flag is named on the lines after the first, so those are kept, joined.
fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|line| line.is_empty())
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .collect();
    if message.is_empty() {
        return "invalid arguments".to_owned();
    }
    message.join(" ").trim_start_matches("error: ").to_owned()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            print!("{}", err.render());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("forge-sim: {}", one_line(&err));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        // Colour codes only on a terminal, so that a script can grep the log for the URL.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match TlsIdentity::from_pem_files(cert, key) {
            Ok(identity) => Some(identity),
            Err(err) => {
                eprintln!("forge-sim: --tls-cert/--tls-key: {err}");
                return ExitCode::from(2);
            }
        },
        // clap makes each of the two require the other.
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = SimConfig {
        latency: args.latency,
        fail_rate: args.fail_rate,
        mode: args.mode,
        steps_per_second: args.steps_per_second,
        seed: args.seed,
        previews: args.previews,
        tls,
        models: args.models,
        model_switch: args.model_switch,
    };
    if let Err(err) = config.validate() {
        eprintln!("forge-sim: --models: {err}");
        return ExitCode::from(2);
    }
    let server = match SimServer::start(args.bind, config.clone()).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("forge-sim: cannot listen on {} (--bind): {err}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        mode = %config.mode,
        latency = %config.latency,
        fail_rate = config.fail_rate,
        "listening on {scheme}://{}",
        server.addr()
    );

    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM (only Ctrl-C where SIGTERM does not exist).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops forge-sim");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
