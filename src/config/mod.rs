//! Configuration: command-line flags and the same names as environment variables.
//!
//! Every duration is a human duration (`180s`, `3m`, `500ms`). A bad setting stops the start
//! with one line naming it (see [`Config::load`]).

use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
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

/// What is between the gateway and PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatabasePooler {
    /// Nothing, or a pooler in session mode: the gateway's connections are sessions.
    None,
    /// A pooler in transaction mode: each transaction may run on another server connection.
    Transaction,
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
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: Option<SecretString>,

    /// PostgreSQL schema to use (created if missing) [default: the server's search path].
    #[arg(long, env = "DATABASE_SCHEMA")]
    pub database_schema: Option<String>,

    /// Largest number of database connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// `transaction` when DATABASE_URL goes through a connection pooler in transaction mode
    /// (PgBouncer, or a managed PostgreSQL's pooler): no prepared statement or setting
    /// outlives a transaction (see docs/operations.md, "Connection poolers").
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value = "none")]
    pub database_pooler: DatabasePooler,
    /// Where the migrations run at start, if not through DATABASE_URL (e.g. straight to
    /// PostgreSQL when DATABASE_URL goes through a pooler) [default: DATABASE_URL].
    #[arg(long, env = "DATABASE_MIGRATION_URL", hide_env_values = true, value_parser = secret)]
    pub database_migration_url: Option<SecretString>,
    /// The longest a request waits for a database connection, and the longest one statement
    /// may run (a locked table included); past it the client gets `503 unavailable`. Migrations
    /// at start are not bound by it.
    #[arg(long, env = "DATABASE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub database_timeout: Duration,
    /// A page of `GET /api/v1/messages` ends once its messages hold about this many bytes
    /// (at least one message); its `next` continues it.
    #[arg(long, env = "LIST_MAX_BYTES", default_value = "2MiB", value_parser = bytes)]
    pub list_max_bytes: usize,
    /// Parts of listings (`GET /api/v1/messages`, 16 messages each) decoded at once by this
    /// process; more wait their turn.
    #[arg(long, env = "LIST_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub list_concurrency: u32,
    /// Redis URL, to share the queue and events between gateway processes [default: in-process queue and events].
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<SecretString>,

    /// Prefix of every Redis key and channel, so deployments and test runs can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "fg")]
    pub redis_prefix: String,

    /// Comma-separated Forge base URLs; `http://user:pass@host:7860` sets HTTP basic auth (Forge's --api-auth) [default: start the bundled simulator].
    #[arg(long, env = "FORGE_URLS", value_delimiter = ',', hide_env_values = true, value_parser = forge_url)]
    pub forge_urls: Vec<BackendUrl>,

    /// Deadline of one txt2img call.
    #[arg(long, env = "FORGE_TIMEOUT", default_value = "180s", value_parser = duration)]
    pub forge_timeout: Duration,

    /// Largest answer read from Forge (the txt2img JSON with its base64 image, a progress
    /// answer with a preview); a call whose answer passes it fails at once (R9.4). A
    /// 2048×2048 PNG is under 20 MB, 27 MB in base64.
    #[arg(long, env = "FORGE_MAX_ANSWER", default_value = "32MiB", value_parser = bytes)]
    pub forge_max_answer: usize,
    /// Deadline of opening a connection to a Forge backend (an unreachable backend fails with
    /// R9.1 after this).
    #[arg(long, env = "FORGE_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub forge_connect_timeout: Duration,

    /// A PEM file of certificates to trust for https Forge URLs besides the system's roots (a
    /// private CA, or a self-signed Forge).
    #[arg(long, env = "FORGE_CA_FILE")]
    pub forge_ca_file: Option<PathBuf>,

    /// Jobs one backend runs at a time (Forge itself generates one at a time).
    #[arg(long, env = "FORGE_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub forge_slots: u32,

    /// How often a running job's progress is polled.
    #[arg(long, env = "FORGE_PROGRESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub forge_progress_interval: Duration,

    /// The checkpoint of a create that names none (a name or title of `GET /api/v1/models`);
    /// unset, or while no backend offers it: whatever the chosen backend has loaded.
    #[arg(long, env = "DEFAULT_MODEL")]
    pub default_model: Option<String>,

    /// How often each backend is asked which checkpoints and samplers it offers and which
    /// checkpoint it has loaded (also at start; one that cannot answer is asked again every
    /// `min(MODELS_REFRESH, 5s)` and left out of the listing meanwhile).
    #[arg(long, env = "MODELS_REFRESH", default_value = "60s", value_parser = duration)]
    pub models_refresh: Duration,

    /// Also fetch Forge's live preview image while a job runs and send `job.preview`.
    #[arg(long, env = "FORGE_PREVIEWS", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub forge_previews: bool,

    /// A pending job with no activity for this long is marked as stuck.
    #[arg(long, env = "STUCK_AFTER", default_value = "5m", value_parser = duration)]
    pub stuck_after: Duration,

    /// A running job's lease: its process renews it every third of this; a job whose lease runs
    /// out (its process was killed or cut off) goes back to the head of the queue.
    #[arg(long, env = "JOB_LEASE", default_value = "30s", value_parser = duration)]
    pub job_lease: Duration,

    /// A job still pending this long after it was created fails with `timeout` (R9.2); 0 turns it off.
    #[arg(long, env = "JOB_DEADLINE", default_value = "0s", value_parser = duration)]
    pub job_deadline: Duration,

    /// Finished messages (complete, error, cancelled) whose last change is older than this are
    /// deleted with their images; 0 keeps everything forever.
    #[arg(long, env = "RETENTION", default_value = "0s", value_parser = duration)]
    pub retention: Duration,

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
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true, value_parser = secret)]
    pub auth_jwt_secret: Option<SecretString>,

    /// Bearer token for /admin/* [dev mode: generated and printed at start].
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub admin_token: Option<SecretString>,

    /// Dev mode: enables POST /api/v1/dev/token [default: on only when nothing else is configured and BIND is a loopback address].
    #[arg(long = "dev", env = "DEV_MODE", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub dev_mode: Option<bool>,

    /// Issuer (`iss`) user tokens must carry [default: not checked].
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,

    /// Audience (`aud`) user tokens must carry [default: not checked].
    #[arg(long, env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// A request head (request line and headers) must arrive within this, counted from the
    /// connection's start or the request's first byte.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http_header_timeout: Duration,

    /// A request body must arrive in full within this.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http_body_timeout: Duration,

    /// A kept-alive connection with no request for this long is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub http_idle_timeout: Duration,

    /// A write to a client that makes no progress for this long (the client does not read
    /// what it asked for) closes the connection, a WebSocket's included.
    #[arg(long, env = "HTTP_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http_write_timeout: Duration,
    /// Open connections from one peer address at most [default: half of MAX_CONNECTIONS].
    /// Behind a load balancer every connection comes from its address: raise it to
    /// MAX_CONNECTIONS there.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: Option<u32>,
    /// Open connections (HTTP and WebSocket) at most; more are answered 503 and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// WebSocket sessions one user may have open in this process.
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_user: u32,

    /// WebSocket sessions this process serves at most.
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 10000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,

    /// Commands (WebSocket frames) and connects one user may send per second, over all of
    /// their sessions in this process; twice as many may come in a burst.
    #[arg(long, env = "WS_COMMANDS_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_commands_per_second: u32,

    /// Write commands (update_message, cancel) a session may have waiting; the socket is not
    /// read while they do.
    #[arg(long, env = "WS_COMMAND_QUEUE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub ws_command_queue: u32,

    /// After a WebSocket ends (the client closed or left, or its token expired), how long the
    /// write commands it sent before may still take to be applied; past it they are dropped.
    #[arg(long, env = "WS_CLOSE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub ws_close_timeout: Duration,
    /// Server ping period on WebSockets.
    #[arg(long, env = "WS_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub ws_heartbeat: Duration,

    /// A WebSocket silent for this long is dropped.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "45s", value_parser = duration)]
    pub ws_idle_timeout: Duration,

    /// Frames a WebSocket may have waiting before the client is told to resync.
    #[arg(long, env = "WS_OUTBOX", default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65536))]
    pub ws_outbox: u32,

    /// Bytes a WebSocket may have waiting before the client is told to resync (one frame
    /// larger than this still goes through an empty outbox).
    #[arg(long, env = "WS_OUTBOX_BYTES", default_value = "512KiB", value_parser = bytes)]
    pub ws_outbox_bytes: usize,

    /// Most queue positions in one `job.positions` frame: a user with more waiting jobs gets
    /// them in turns, this many per frame (see `docs/api.md`).
    #[arg(long, env = "WS_POSITIONS_PER_FRAME", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_positions_per_frame: u32,

    /// Generation time of the bundled simulator (embedded default only).
    #[arg(long, env = "SIM_LATENCY", default_value = "2s", value_parser = duration)]
    pub sim_latency: Duration,

    /// Time a graceful shutdown waits for in-flight work.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
}

/// A Forge backend's URL; its `Debug` leaves out the credentials it may hold (`Config` is
/// printed in debug output, and must not show secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl(pub Url);

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.clone();
        let _ = shown.set_password(None);
        write!(f, "{:?}", shown.as_str())
    }
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

pub mod checks;

use checks::{bytes, duration, forge_url, one_line, secret};
use secrecy::{ExposeSecret as _, SecretString};

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

    /// Whether the dev token endpoint is on: as set, or on when nothing else is configured
    /// and the gateway listens on a loopback address only.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
            .unwrap_or(self.is_embedded_default() && self.bind.ip().is_loopback())
    }

    /// No database, Redis, Forge or JWT secret configured.
    pub fn is_embedded_default(&self) -> bool {
        self.database_url.is_none()
            && self.redis_url.is_none()
            && self.forge_urls.is_empty()
            && self.auth_jwt_secret.is_none()
    }

    /// `MAX_CONNECTIONS_PER_ADDRESS`, or its default: half of `MAX_CONNECTIONS` (at least 1).
    pub fn max_connections_per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or((self.max_connections / 2).max(1)) as usize
    }

    /// Where images are stored.
    pub fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }

    /// The database URL, defaulting to SQLite in the data folder.
    pub fn database_url(&self) -> String {
        self.database_url
            .as_ref()
            .map(|url| url.expose_secret().to_owned())
            .unwrap_or_else(|| {
                format!(
                    "sqlite://{}?mode=rwc",
                    self.data_dir.join("forge-gateway.db").display()
                )
            })
    }
}

#[cfg(test)]
mod tests;
