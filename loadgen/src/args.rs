//! The command line: every knob of every scenario is a flag, so a run is reproducible from the
//! command alone (`docs/benchmarks.md` quotes them).

use clap::Parser;
use std::time::Duration;

/// The scenarios `--scenario` accepts, in the order `--help` lists them.
pub const SCENARIOS: [&str; 12] = [
    "throughput",
    "latency",
    "fanout",
    "hot",
    "idle",
    "soak",
    "flood",
    "deep",
    "open",
    "big",
    "listings",
    "models",
];

/// What `--scenario all` runs.
pub const ALL: [&str; 5] = ["throughput", "latency", "fanout", "hot", "idle"];

/// Load generator of forge-gateway: throughput, latency, fan-out, hot message, idle memory, soak,
/// WebSocket flood, deep queues, open-loop intake, a big queue and large listings.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Scenarios to run, comma-separated: throughput, latency, fanout, hot, idle, soak, flood,
    /// deep, open, big, listings, models, or all (= throughput,latency,fanout,hot,idle).
    #[arg(long, default_value = "all")]
    pub scenario: String,

    /// Target an already running gateway instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the simulator behind it (needed by fanout and deep's drain measurement).
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
    /// Simulators (Forge backends) for the throughput, latency, soak, deep and open runs;
    /// fanout, hot, idle, flood and listings always use one.
    #[arg(long, default_value_t = 1)]
    pub sims: usize,
    /// FORGE_SLOTS of the started gateway for the throughput, latency, soak, deep and open runs
    /// (jobs one backend runs at a time) [default: the gateway's default].
    #[arg(long)]
    pub forge_slots: Option<u32>,
    /// WS_OUTBOX of the started gateway.
    #[arg(long, default_value_t = 65536)]
    pub ws_outbox: u32,
    /// Where the started gateways' fresh DATA_DIRs (SQLite file, images) are created
    /// [default: the system temp dir].
    #[arg(long)]
    pub data_dir_base: Option<std::path::PathBuf>,
    /// The gateway binary to start [default: forge-gateway beside loadgen] (to measure an
    /// older build against the same scenario).
    #[arg(long)]
    pub gateway_bin: Option<std::path::PathBuf>,
    /// Extra environment for the started gateway, KEY=VALUE (repeatable).
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,

    /// Length of the run [default: 30s for throughput and latency, 10s for flood and listings,
    /// 20s for open, 10s per window for deep].
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// throughput and deep: concurrent users, each with a WebSocket (deep's drain spreads its
    /// jobs over them too).
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

    /// flood: size of the `data.blob` string of each `update_message` frame, in bytes.
    #[arg(long, default_value_t = 60_000)]
    pub flood_blob_bytes: usize,
    /// flood: the second user's submission period while the flood runs.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub flood_submit_every: Duration,
    /// flood: a single frame write blocked this long means the server stopped reading; the
    /// flooder then stops.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub flood_write_stall: Duration,
    /// flood: stop the flooder when the gateway's RSS passes this many MiB (the machine is
    /// shared; 0: no limit).
    #[arg(long, default_value_t = 4096)]
    pub flood_rss_limit_mib: u64,
    /// deep: outstanding jobs per user, one closed-loop run per value, comma-separated.
    #[arg(long, default_value = "2,32,160", value_delimiter = ',', value_parser = window_list)]
    pub windows: Vec<usize>,
    /// deep: jobs queued behind a hanging backend for each drain measurement (spread over
    /// --clients users); 0 skips the drain and staleness measurements.
    #[arg(long, default_value_t = 10_240)]
    pub drain_jobs: usize,
    /// deep: how long after the queue stops every session's positions must equal REST's.
    #[arg(long, default_value = "1500ms", value_parser = duration)]
    pub stale_after: Duration,
    /// big: jobs queued behind hanging backends (spread over --clients users).
    #[arg(long, default_value_t = 100_000)]
    pub big_jobs: usize,
    /// open: concurrent HTTP connections, each POSTing back to back.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// How long after a run's last submission every job must have ended.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Parallel WebSocket connects and token requests.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Parallel submissions when queueing many jobs at once (fanout, deep).
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
    /// models: jobs queued at once.
    #[arg(long, default_value_t = 60)]
    pub model_jobs: usize,
    /// models: the models the jobs ask for, drawn uniformly (seeded by --model-seed).
    #[arg(long, default_value = "a,b,c", value_delimiter = ',')]
    pub model_mix: Vec<String>,
    /// models: each simulator's checkpoints, `;` between simulators (the first of each is
    /// loaded at start); as many simulators as lists.
    #[arg(long, default_value = "a,b,c;b,c,a")]
    pub model_layout: String,
    /// models: what a checkpoint switch costs in the simulators.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub model_switch: Duration,
    /// models: a generation's time in the simulators.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub model_latency: Duration,
    /// models: seed of the model draw.
    #[arg(long, default_value_t = 1)]
    pub model_seed: u64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

impl Args {
    /// `--duration`, or the scenario's own default when it was not given.
    pub fn duration_or(&self, default: Duration) -> Duration {
        self.duration.unwrap_or(default)
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| format!("{err}"))
}

fn window_list(text: &str) -> Result<usize, String> {
    let window: usize = text
        .trim()
        .parse()
        .map_err(|err| format!("{text:?}: {err}"))?;
    if window == 0 {
        return Err("a window must be at least 1".into());
    }
    Ok(window)
}

/// The scenarios named by `--scenario`, in the order given (`all` expanded).
pub fn scenario_list(text: &str) -> Result<Vec<String>, String> {
    let mut list = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            list.extend(ALL.map(String::from));
        } else if SCENARIOS.contains(&name) {
            list.push(name.to_owned());
        } else {
            return Err(format!("unknown scenario {name:?}"));
        }
    }
    if list.is_empty() {
        return Err("no scenario given".into());
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_and_unknown_names_are_refused() {
        assert_eq!(scenario_list("all").unwrap(), ALL.map(String::from));
        assert_eq!(
            scenario_list("flood, deep,open").unwrap(),
            ["flood", "deep", "open"].map(String::from)
        );
        assert!(scenario_list("nope").is_err());
        assert!(scenario_list(" , ").is_err());
    }

    #[test]
    fn the_duration_defaults_per_scenario() {
        let args = Args::try_parse_from(["loadgen"]).unwrap();
        assert_eq!(args.duration, None);
        assert_eq!(
            args.duration_or(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        let args = Args::try_parse_from(["loadgen", "--duration", "3s"]).unwrap();
        assert_eq!(
            args.duration_or(Duration::from_secs(7)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn windows_are_a_comma_separated_list() {
        let args = Args::try_parse_from(["loadgen", "--windows", "2,32,160"]).unwrap();
        assert_eq!(args.windows, vec![2, 32, 160]);
        let args = Args::try_parse_from(["loadgen"]).unwrap();
        assert_eq!(args.windows, vec![2, 32, 160]);
        assert!(Args::try_parse_from(["loadgen", "--windows", "0"]).is_err());
    }
}
