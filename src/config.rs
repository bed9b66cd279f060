//! Configuration: command-line flags and the same names as environment variables.
//!
//! Every duration is a human duration (`180s`, `3m`, `500ms`). A bad setting stops the start
//! with one line naming it (see [`Config::load`]).

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Every setting of the gateway.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "forge-gateway",
    version,
    about = "Queues image requests, runs them on Stable Diffusion WebUI Forge servers, stores every state change and pushes it to browsers over WebSocket.",
    long_about = None,
    after_help = "Every option can also be set by the environment variable shown in brackets. Durations are human durations: 500ms, 30s, 5m, 1h.\nWith nothing configured the gateway runs its embedded default: SQLite in DATA_DIR, an in-process queue, the bundled Forge simulator and dev mode."
)]
pub struct Config {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Folder for the SQLite file and the images in the embedded default.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Folder for generated images [default: DATA_DIR/images].
    #[arg(long, env = "IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,

    /// Database URL: `postgres://…` or `sqlite://…` [default: SQLite in DATA_DIR].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL schema to use (created if missing) [default: the server's search path].
    #[arg(long, env = "DATABASE_SCHEMA")]
    pub database_schema: Option<String>,

    /// Largest number of database connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Redis URL, to share the queue and events between gateway processes [default: in-process queue and events].
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so deployments and test runs can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "fg")]
    pub redis_prefix: String,

    /// Comma-separated Forge base URLs; `http://user:pass@host:7860` sets HTTP basic auth (Forge's --api-auth) [default: start the bundled simulator].
    #[arg(long, env = "FORGE_URLS", value_delimiter = ',')]
    pub forge_urls: Vec<Url>,

    /// Deadline of one txt2img call.
    #[arg(long, env = "FORGE_TIMEOUT", default_value = "180s", value_parser = duration)]
    pub forge_timeout: Duration,

    /// Jobs one backend runs at a time (Forge itself generates one at a time).
    #[arg(long, env = "FORGE_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub forge_slots: u32,

    /// How often a running job's progress is polled.
    #[arg(long, env = "FORGE_PROGRESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub forge_progress_interval: Duration,

    /// Also fetch Forge's live preview image while a job runs and send `job.preview`.
    #[arg(long, env = "FORGE_PREVIEWS", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub forge_previews: bool,

    /// A pending job with no activity for this long is marked as stuck.
    #[arg(long, env = "STUCK_AFTER", default_value = "5m", value_parser = duration)]
    pub stuck_after: Duration,

    /// A job still pending this long after it was created fails with `timeout` (R9.2); 0 turns it off.
    #[arg(long, env = "JOB_DEADLINE", default_value = "0s", value_parser = duration)]
    pub job_deadline: Duration,

    /// How often the watchdog looks for stuck jobs.
    #[arg(long, env = "WATCHDOG_INTERVAL", default_value = "30s", value_parser = duration)]
    pub watchdog_interval: Duration,

    /// Consecutive failures (connection, timeout, 5xx) that open a backend's circuit breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,

    /// How long an open breaker waits before letting one trial request through.
    #[arg(long, env = "BREAKER_OPEN_FOR", default_value = "60s", value_parser = duration)]
    pub breaker_open_for: Duration,

    /// Pending (queued or processing) messages one user may have.
    #[arg(long, env = "MAX_PENDING_PER_USER", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_user: u32,

    /// HS256 secret of user tokens; required unless dev mode.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,

    /// Bearer token for /admin/* [dev mode: generated and printed at start].
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Dev mode: enables POST /api/v1/dev/token [default: on when nothing else is configured].
    #[arg(long = "dev", env = "DEV_MODE", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub dev_mode: Option<bool>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Server ping period on WebSockets.
    #[arg(long, env = "WS_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub ws_heartbeat: Duration,

    /// A WebSocket silent for this long is dropped.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "45s", value_parser = duration)]
    pub ws_idle_timeout: Duration,

    /// Frames a WebSocket may have waiting before the client is told to resync.
    #[arg(long, env = "WS_OUTBOX", default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65536))]
    pub ws_outbox: u32,

    /// Generation time of the bundled simulator (embedded default only).
    #[arg(long, env = "SIM_LATENCY", default_value = "2s", value_parser = duration)]
    pub sim_latency: Duration,

    /// Time a graceful shutdown waits for in-flight work.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
}

/// A configuration that cannot start the gateway, as one line naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// What `Config::load` found.
pub enum Loaded {
    /// Start with this configuration.
    Run(Box<Config>),
    /// `--help` or `--version`: print this and exit successfully.
    Print(String),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{err} (expected a duration such as 500ms, 30s, 5m)"))
}

impl Config {
    /// Parses the process's arguments and environment, then checks the settings together.
    pub fn load() -> Result<Loaded, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Like [`load`](Self::load) with explicit arguments (the environment is still read).
    pub fn load_from<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match Config::try_parse_from(args) {
            Ok(config) => {
                config.validate()?;
                Ok(Loaded::Run(Box::new(config)))
            }
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                ) =>
            {
                Ok(Loaded::Print(err.render().to_string()))
            }
            Err(err) => Err(one_line(&err)),
        }
    }

    /// Defaults plus `args` (flags only), without reading the environment. For tests and tools.
    pub fn from_flags<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Config::command();
        command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(args)
            .map_err(|err| one_line(&err))?;
        let config = <Config as clap::FromArgMatches>::from_arg_matches(&matches)
            .map_err(|err| one_line(&err))?;
        config.validate()?;
        Ok(config)
    }

    /// Whether the dev token endpoint is on: as set, or on when nothing else is configured.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode.unwrap_or(self.is_embedded_default())
    }

    /// No database, Redis, Forge or JWT secret configured.
    pub fn is_embedded_default(&self) -> bool {
        self.database_url.is_none()
            && self.redis_url.is_none()
            && self.forge_urls.is_empty()
            && self.auth_jwt_secret.is_none()
    }

    /// Where images are stored.
    pub fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }

    /// The database URL, defaulting to SQLite in the data folder.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("forge-gateway.db").display()
            )
        })
    }

    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if let Some(secret) = &self.auth_jwt_secret
            && secret.is_empty()
        {
            return fail("AUTH_JWT_SECRET (--auth-jwt-secret) must not be empty".into());
        }
        if let Some(token) = &self.admin_token
            && token.len() < 8
        {
            return fail("ADMIN_TOKEN (--admin-token) must be at least 8 characters".into());
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return fail(format!(
                "DATABASE_URL (--database-url) must start with postgres:// or sqlite: (got {:?})",
                url.split(':').next().unwrap_or_default()
            ));
        }
        if let Some(schema) = &self.database_schema
            && (schema.is_empty()
                || schema.len() > 63
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || schema.starts_with(|c: char| c.is_ascii_digit()))
        {
            return fail(format!(
                "DATABASE_SCHEMA (--database-schema) must be a plain identifier (letters, digits, _), got {schema:?}"
            ));
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return fail("REDIS_URL (--redis-url) must start with redis:// or rediss://".into());
        }
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        {
            return fail(format!(
                "REDIS_PREFIX (--redis-prefix) must be letters, digits or -_:. (got {:?})",
                self.redis_prefix
            ));
        }
        for url in &self.forge_urls {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return fail(format!(
                    "FORGE_URLS (--forge-urls): {url} is not an http(s) URL"
                ));
            }
        }
        if self.database_max_connections == 0 {
            return fail(
                "DATABASE_MAX_CONNECTIONS (--database-max-connections) must be at least 1".into(),
            );
        }
        let positive = [
            ("FORGE_TIMEOUT (--forge-timeout)", self.forge_timeout),
            (
                "FORGE_PROGRESS_INTERVAL (--forge-progress-interval)",
                self.forge_progress_interval,
            ),
            ("STUCK_AFTER (--stuck-after)", self.stuck_after),
            (
                "WATCHDOG_INTERVAL (--watchdog-interval)",
                self.watchdog_interval,
            ),
            (
                "BREAKER_OPEN_FOR (--breaker-open-for)",
                self.breaker_open_for,
            ),
            ("WS_HEARTBEAT (--ws-heartbeat)", self.ws_heartbeat),
            ("WS_IDLE_TIMEOUT (--ws-idle-timeout)", self.ws_idle_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return fail(format!("{name} must be longer than 0"));
            }
        }
        if self.ws_idle_timeout <= self.ws_heartbeat {
            return fail(
                "WS_IDLE_TIMEOUT (--ws-idle-timeout) must be longer than WS_HEARTBEAT".into(),
            );
        }
        if !self.dev_mode() && self.auth_jwt_secret.is_none() {
            return fail("AUTH_JWT_SECRET (--auth-jwt-secret) is required unless dev mode is on (DEV_MODE=true)".into());
        }
        Ok(())
    }
}

/// Renders a clap error as one line that names the setting by its variable and flag.
fn one_line(err: &clap::Error) -> ConfigError {
    let command = Config::command();
    let setting = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            let flag = arg.split_whitespace().next().unwrap_or(arg);
            let env = command
                .get_arguments()
                .find(|candidate| {
                    candidate
                        .get_long()
                        .is_some_and(|long| flag == format!("--{long}"))
                })
                .and_then(|candidate| candidate.get_env())
                .map(|env| env.to_string_lossy().into_owned());
            match env {
                Some(env) => format!("{env} ({flag})"),
                None => flag.to_owned(),
            }
        }
        _ => String::new(),
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => format!(" = {value:?}"),
        _ => String::new(),
    };
    let detail = err
        .source()
        .map(|source| source.to_string())
        .or_else(|| {
            let rendered = err.render().to_string();
            rendered
                .lines()
                .next()
                .map(|line| line.trim_start_matches("error: ").to_owned())
        })
        .unwrap_or_default();
    let message = if setting.is_empty() {
        detail
    } else {
        format!("{setting}{value}: {detail}")
    };
    ConfigError(message.replace('\n', " "))
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::from_flags(["forge-gateway"]).unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.forge_timeout, Duration::from_secs(180));
        assert_eq!(config.stuck_after, Duration::from_secs(300));
        assert_eq!(config.watchdog_interval, Duration::from_secs(30));
        assert_eq!(config.breaker_failures, 5);
        assert_eq!(config.breaker_open_for, Duration::from_secs(60));
        assert_eq!(config.max_pending_per_user, 20);
        assert_eq!(config.redis_prefix, "fg");
        assert!(config.dev_mode(), "the embedded default is dev mode");
    }

    #[test]
    fn durations_are_human() {
        let config = Config::from_flags([
            "forge-gateway",
            "--forge-timeout",
            "3m",
            "--stuck-after",
            "750ms",
        ])
        .unwrap();
        assert_eq!(config.forge_timeout, Duration::from_secs(180));
        assert_eq!(config.stuck_after, Duration::from_millis(750));
    }

    #[test]
    fn a_bad_setting_is_one_line_naming_it() {
        let err = Config::from_flags(["forge-gateway", "--forge-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--forge-timeout"), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = Config::from_flags(["forge-gateway", "--breaker-failures", "0"]).unwrap_err();
        assert!(err.to_string().contains("--breaker-failures"), "{err}");
        let err = Config::from_flags(["forge-gateway", "--forge-urls", "ftp://x"]).unwrap_err();
        assert!(err.to_string().contains("FORGE_URLS"), "{err}");
    }

    #[test]
    fn without_dev_mode_a_secret_is_required() {
        let err =
            Config::from_flags(["forge-gateway", "--database-url", "postgres://x/y"]).unwrap_err();
        assert!(err.to_string().contains("AUTH_JWT_SECRET"), "{err}");
        let config =
            Config::from_flags(["forge-gateway", "--database-url", "postgres://x/y", "--dev"])
                .unwrap();
        assert!(config.dev_mode());
        let config = Config::from_flags([
            "forge-gateway",
            "--auth-jwt-secret",
            "s3cret",
            "--dev=false",
        ])
        .unwrap();
        assert!(!config.dev_mode());
    }

    #[test]
    fn forge_urls_split_on_commas() {
        let config = Config::from_flags([
            "forge-gateway",
            "--forge-urls",
            "http://a:7860,http://u:p@b:7861",
            "--dev",
        ])
        .unwrap();
        assert_eq!(config.forge_urls.len(), 2);
        assert_eq!(config.forge_urls[1].username(), "u");
    }
}
