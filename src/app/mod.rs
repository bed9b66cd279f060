//! Wiring: builds the actors on an actix `System` ([`core`]), serves HTTP with warp, and
//! shuts down.
//!
//! Threads: the actix System runs on its own thread (the core actors on its arbiter, the
//! session registry on one of its own, the sessions spread over one extra arbiter per core);
//! warp and the sockets run on a multi-thread tokio runtime. They talk through typed handles
//! over actix mailboxes.

mod core;
mod secrets;

use crate::actors::forge::ForgePool;
use crate::actors::queue::QueueHandle;
use crate::actors::store::StoreHandle;
use crate::config::Config;
use crate::config::checks::redact;
use crate::db::Database;
use crate::events::SessionRegistry;
use crate::events::redis_bus::RedisBus;
use crate::gateway::Gateway;
use crate::gateway::watchdog::WatchdogHandle;
use crate::http::auth::Auth;
use crate::http::ws::WsSettings;
use crate::http::ws::session::SessionTiming;
use crate::http::{self, HttpLimits, HttpParts, HttpState};
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::queue::redis::RedisQueue;
use actix::prelude::*;
use forge_sim::{Latency, SimConfig, SimServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why the gateway could not start: what it was doing, and the cause, kept as the error's
/// source. Credentials in URLs are never shown.
#[derive(Debug)]
pub struct StartError {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StartError {
    /// A failure described by `context` alone.
    pub fn new(context: impl Into<String>) -> StartError {
        StartError {
            context: context.into(),
            source: None,
        }
    }

    /// A failure of `context` caused by `source`.
    pub fn caused(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StartError {
        StartError {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.context))?;
        if let Some(source) = &self.source {
            write!(f, ": {}", redact(&source.to_string()))?;
        }
        Ok(())
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// How long a shutdown waits for the jobs still running past the grace to go back to the
/// queue (a write each).
const HAND_BACK_WITHIN: Duration = Duration::from_secs(5);

/// A running gateway.
pub struct RunningApp {
    addr: SocketAddr,
    forge_urls: Vec<String>,
    parts: Option<Parts>,
}

/// The I/O runtime, shut down in the background when dropped. The gateway is started from
/// async code (main, tests), where dropping a runtime the blocking way panics; a start that
/// fails half-way drops it there, and must return its error instead.
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for IoRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only by drop")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Parts {
    io_runtime: IoRuntime,
    server_stop: oneshot::Sender<()>,
    server_done: oneshot::Receiver<()>,
    core: Core,
    system: actix::System,
    system_thread: std::thread::JoinHandle<()>,
    state: Arc<HttpState>,
    sim: Option<SimServer>,
    grace: Duration,
}

/// Handles to what runs on the actix system.
#[derive(Clone)]
pub struct Core {
    /// The use cases.
    pub gateway: Gateway,
    /// The store.
    pub store: StoreHandle,
    /// The queue.
    pub queue: QueueHandle,
    /// The backends.
    pub forge: ForgePool,
    /// The watchdog.
    pub watchdog: WatchdogHandle,
    /// Who is connected to this process.
    pub registry: SessionRegistry,
    /// The database.
    pub db: Database,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Arbiters for sessions.
    pub arbiters: Vec<ArbiterHandle>,
    /// The Redis clients, in Redis mode (closed at shutdown).
    pub redis: Option<RedisClients>,
}

/// The Redis queue and bus of a process in Redis mode.
#[derive(Clone)]
pub struct RedisClients {
    /// The queue store.
    pub queue: Arc<RedisQueue>,
    /// The event bus.
    pub bus: Arc<RedisBus>,
    /// The backend slots.
    pub slots: Arc<crate::slots::redis::RedisSlots>,
    /// The backends' breakers.
    pub breakers: Arc<crate::breakers::redis::RedisBreakers>,
    /// Keeps the shared images folder's marker named in Redis.
    pub folder_keeper: Arc<tokio::task::JoinHandle<()>>,
}

impl RunningApp {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Forge backends it uses (the bundled simulator's URL in the embedded default).
    pub fn forge_urls(&self) -> &[String] {
        &self.forge_urls
    }

    /// Handles to the core (for tests and tools in this process).
    pub fn core(&self) -> Option<&Core> {
        self.parts.as_ref().map(|parts| &parts.core)
    }

    /// Graceful shutdown: stop accepting, tell sessions, let running jobs finish for up to the
    /// grace period, write everything accepted, leave queued jobs queued.
    pub async fn shutdown(mut self) {
        let Some(parts) = self.parts.take() else {
            return;
        };
        tracing::info!("shutting down");
        parts
            .state
            .accepting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = parts.server_stop.send(());
        // No new jobs; running ones may finish within the grace period; queued ones stay queued.
        parts.core.queue.pause().await;
        let still_running = parts.core.forge.drain(parts.grace).await;
        if still_running > 0 {
            // Their generations are lost with this process: interrupted on Forge, they go back
            // to the queue (keeping their place) for another process, or the next start.
            let not_back = parts.core.forge.hand_back(HAND_BACK_WITHIN).await;
            tracing::warn!(
                still_running,
                not_back,
                "jobs still running at the end of the grace period went back to the queue"
            );
        }
        let _ = tokio::time::timeout(parts.grace, parts.core.store.flush()).await;
        parts.core.registry.close_all();
        let _ = tokio::time::timeout(Duration::from_secs(2), parts.server_done).await;
        let system = parts.system.clone();
        let db = parts.core.db.clone();
        system.stop();
        let joined = tokio::task::spawn_blocking(move || parts.system_thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::warn!("the actor system did not stop cleanly");
        }
        db.close().await;
        if let Some(redis) = &parts.core.redis {
            redis.bus.close().await;
            redis.queue.close().await;
            redis.slots.close().await;
            redis.breakers.close().await;
            redis.folder_keeper.abort();
        }
        if let Some(sim) = parts.sim {
            sim.shutdown().await;
        }
        drop(parts.io_runtime);
        tracing::info!("stopped");
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.system.stop();
            drop(parts.io_runtime);
        }
    }
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StartError {
    move |err| StartError::caused(what.to_string(), err)
}

/// Starts the gateway. Returns once it listens.
pub async fn start(config: Config) -> Result<RunningApp, StartError> {
    crate::forge_client::install_default_provider();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let io_runtime = IoRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("io")
            .enable_all()
            .build()
            .map_err(fail("cannot start the I/O runtime"))?,
    ));

    // The bundled simulator, when no Forge server is configured.
    let (sim, forge_urls) = if config.forge_urls.is_empty() {
        let sim_config = SimConfig {
            latency: Latency::Fixed(config.sim_latency),
            ..SimConfig::default()
        };
        let sim = io_runtime
            .spawn(SimServer::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                sim_config,
            ))
            .await
            .map_err(|err| StartError::caused("simulator task", err))?
            .map_err(fail("cannot start the bundled Forge simulator"))?;
        let url = sim.url();
        tracing::info!(url = %url, "no FORGE_URLS given: started the bundled Forge simulator");
        let parsed =
            url::Url::parse(&url).map_err(|err| StartError::caused("simulator URL", err))?;
        (Some(sim), vec![parsed])
    } else {
        (
            None,
            config.forge_urls.iter().map(|url| url.0.clone()).collect(),
        )
    };

    let images =
        ImageStore::open(&config.images_dir()).map_err(fail("cannot create the images folder"))?;
    let secrets = secrets::secrets(&config)?;
    let auth = Auth::new(&secrets.rules, secrets.admin_token).map_err(StartError::new)?;

    let listener = std::net::TcpListener::bind(config.bind)
        .map_err(fail(format!("cannot listen on {}", config.bind)))?;
    listener.set_nonblocking(true).map_err(fail("listener"))?;
    let addr = listener.local_addr().map_err(fail("listener"))?;

    let (core_tx, core_rx) = oneshot::channel::<Result<(Core, actix::System), StartError>>();
    let core_config = config.clone();
    let core_urls = forge_urls.clone();
    let core_images = images.clone();
    let io = io_runtime.handle().clone();
    let system_thread = std::thread::Builder::new()
        .name("actors".into())
        .spawn(move || {
            let system = actix::System::new();
            let built = system.block_on(core::build_core(
                core_config,
                core_urls,
                core_images,
                threads,
                io,
            ));
            let ok = built.is_ok();
            let _ = core_tx.send(built.map(|core| (core, actix::System::current())));
            if ok {
                let _ = system.run();
            }
        })
        .map_err(fail("cannot start the actor thread"))?;
    let (core, system) = core_rx
        .await
        .map_err(|_| StartError::new("the actor system stopped while starting"))??;

    let state = HttpState::new(HttpParts {
        gateway: core.gateway.clone(),
        auth,
        images,
        registry: core.registry.clone(),
        metrics: core.metrics.clone(),
        arbiters: core.arbiters.clone(),
        ws: WsSettings {
            timing: SessionTiming {
                heartbeat: config.ws_heartbeat,
                idle_timeout: config.ws_idle_timeout,
            },
            outbox_frames: config.ws_outbox as usize,
            outbox_bytes: config.ws_outbox_bytes,
            command_queue: config.ws_command_queue as usize,
            close_timeout: config.ws_close_timeout,
        },
        ws_commands_per_second: config.ws_commands_per_second,
        limits: HttpLimits {
            max_connections: config.max_connections as usize,
            header_timeout: config.http_header_timeout,
            body_timeout: config.http_body_timeout,
            idle_timeout: config.http_idle_timeout,
            write_timeout: config.http_write_timeout,
            max_connections_per_address: config.max_connections_per_address(),
        },
        dev_mode: config.dev_mode(),
    });
    {
        // Forget the command-rate buckets of quiet users now and then.
        let state = state.clone();
        io_runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                state.ws_rate.forget_quiet();
            }
        });
    }
    let routes = http::routes(state.clone());
    let (server_stop, stop_signal) = oneshot::channel::<()>();
    let (done_tx, server_done) = oneshot::channel::<()>();
    let listener = {
        let _guard = io_runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(fail("listener"))?
    };
    let server = http::server::serve(
        listener,
        routes,
        state.clone(),
        async move {
            let _ = stop_signal.await;
        },
        config.shutdown_grace,
    );
    io_runtime.spawn(async move {
        server.await;
        let _ = done_tx.send(());
    });

    if config.stuck_after <= config.job_lease {
        tracing::warn!(
            stuck_after = %humantime::format_duration(config.stuck_after),
            job_lease = %humantime::format_duration(config.job_lease),
            "STUCK_AFTER is not above JOB_LEASE: a killed process's jobs are marked stuck before they are handed back, and jobs waiting for its backend slots may be too"
        );
    }
    if config.dev_mode() {
        tracing::warn!(
            "DEV MODE is on: POST /api/v1/dev/token issues a token for any user name; never expose this server"
        );
    }
    tracing::info!(
        database = core.db.backend_name(),
        queue = core.queue.kind(),
        backends = core.forge.len(),
        "listening on http://{addr}"
    );
    Ok(RunningApp {
        addr,
        forge_urls: forge_urls
            .iter()
            .map(|url| url.as_str().trim_end_matches('/').to_owned())
            .collect(),
        parts: Some(Parts {
            io_runtime,
            server_stop,
            server_done,
            core,
            system,
            system_thread,
            state,
            sim,
            grace: config.shutdown_grace,
        }),
    })
}
