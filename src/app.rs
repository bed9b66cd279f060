//! Wiring: builds the actors on an actix `System`, serves HTTP with warp, and shuts down.
//!
//! Threads: the actix System runs on its own thread (the core actors on its arbiter, the
//! sessions spread over one extra arbiter per core); warp and the sockets run on a
//! multi-thread tokio runtime. They talk through typed handles over actix mailboxes.

use crate::actors::forge::{BackendHealth, Busy, ForgeActor, ForgeDeps, ForgePool, ForgeSettings};
use crate::actors::queue::{QueueActor, QueueHandle, rebuild_from_db};
use crate::actors::session::SessionTiming;
use crate::actors::store::{MessageStoreActor, StoreHandle, StoreLimits};
use crate::actors::watchdog::{WatchdogActor, WatchdogHandle, WatchdogSettings};
use crate::config::Config;
use crate::db::{Database, DbSettings};
use crate::events::redis_bus::RedisBus;
use crate::events::{EventBus, LocalBus, SessionHub};
use crate::forge_client::{Backend, ForgeClient};
use crate::gateway::{Gateway, GatewaySettings};
use crate::http::auth::Auth;
use crate::http::{self, HttpState};
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::queue::QueueStore;
use crate::queue::memory::MemoryQueue;
use crate::queue::redis::RedisQueue;
use actix::prelude::*;
use forge_sim::{Latency, SimConfig, SimServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// A running gateway.
pub struct RunningApp {
    addr: SocketAddr,
    forge_urls: Vec<String>,
    parts: Option<Parts>,
}

struct Parts {
    io_runtime: tokio::runtime::Runtime,
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
    /// Local sessions.
    pub hub: SessionHub,
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
            tracing::warn!(
                still_running,
                "jobs still running at the end of the grace period stay processing; the watchdog resolves them"
            );
        }
        let _ = tokio::time::timeout(parts.grace, parts.core.store.flush()).await;
        parts.core.hub.close_all();
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
        }
        if let Some(sim) = parts.sim {
            sim.shutdown().await;
        }
        parts.io_runtime.shutdown_background();
        tracing::info!("stopped");
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.system.stop();
            parts.io_runtime.shutdown_background();
        }
    }
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StartError {
    move |err| StartError(format!("{what}: {err}"))
}

/// Starts the gateway. Returns once it listens.
pub async fn start(config: Config) -> Result<RunningApp, StartError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let io_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("io")
        .enable_all()
        .build()
        .map_err(fail("cannot start the I/O runtime"))?;

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
            .map_err(|err| StartError(format!("simulator task: {err}")))?
            .map_err(fail("cannot start the bundled Forge simulator"))?;
        let url = sim.url();
        tracing::info!(url = %url, "no FORGE_URLS given: started the bundled Forge simulator");
        let parsed =
            url::Url::parse(&url).map_err(|err| StartError(format!("simulator URL: {err}")))?;
        (Some(sim), vec![parsed])
    } else {
        (None, config.forge_urls.clone())
    };

    let images =
        ImageStore::open(&config.images_dir()).map_err(fail("cannot create the images folder"))?;
    let (secret, admin_token) = secrets(&config)?;
    let auth = Auth::new(&secret, admin_token.clone()).map_err(StartError)?;

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
            let built =
                system.block_on(build_core(core_config, core_urls, core_images, threads, io));
            let ok = built.is_ok();
            let _ = core_tx.send(built.map(|core| (core, actix::System::current())));
            if ok {
                let _ = system.run();
            }
        })
        .map_err(fail("cannot start the actor thread"))?;
    let (core, system) = core_rx
        .await
        .map_err(|_| StartError("the actor system stopped while starting".into()))??;

    let state = HttpState::new(
        core.gateway.clone(),
        auth,
        images,
        core.hub.clone(),
        core.metrics.clone(),
        core.arbiters.clone(),
        SessionTiming {
            heartbeat: config.ws_heartbeat,
            idle_timeout: config.ws_idle_timeout,
        },
        config.ws_outbox as usize,
        config.dev_mode(),
    );
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

    if config.dev_mode() {
        tracing::warn!(
            "DEV MODE is on: POST /api/v1/dev/token issues a token for any user name; never expose this server"
        );
        if let Some(token) = &admin_token {
            tracing::warn!(admin_token = %token, "dev mode admin token for /admin/*");
        }
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

/// Runs `connect` on the I/O runtime and waits for it. Connections are made there because a
/// socket belongs to the runtime that opened it, and the actor thread should run only the
/// actors' own logic. `what` starts the error message.
async fn on_io<T, E>(
    io: &tokio::runtime::Handle,
    what: &str,
    connect: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, StartError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match io.spawn(connect).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(err)) => Err(StartError(format!("{what}: {err}"))),
        Err(err) => Err(StartError(format!("{what}: the task failed: {err}"))),
    }
}

async fn build_core(
    config: Config,
    forge_urls: Vec<url::Url>,
    images: ImageStore,
    threads: usize,
    io: tokio::runtime::Handle,
) -> Result<Core, StartError> {
    let db_settings = DbSettings {
        url: config.database_url(),
        schema: config.database_schema.clone(),
        max_connections: config.database_max_connections,
    };
    let db = on_io(&io, "cannot open the database", async move {
        Database::connect(&db_settings).await
    })
    .await?;
    let metrics = Metrics::shared();
    let hub = SessionHub::new();
    let (queue_store, bus, redis): (Arc<dyn QueueStore>, Arc<dyn EventBus>, Option<RedisClients>) =
        match &config.redis_url {
            None => (
                Arc::new(MemoryQueue::new()),
                LocalBus::new(hub.clone()),
                None,
            ),
            Some(url) => {
                let (queue_url, prefix) = (url.clone(), config.redis_prefix.clone());
                let queue = Arc::new(
                    on_io(&io, "REDIS_URL: cannot use the Redis queue", async move {
                        RedisQueue::connect(&queue_url, &prefix).await
                    })
                    .await?,
                );
                let (bus_url, prefix, bus_hub) =
                    (url.clone(), config.redis_prefix.clone(), hub.clone());
                let bus = on_io(
                    &io,
                    "REDIS_URL: cannot use the Redis event bus",
                    async move { RedisBus::connect(&bus_url, &prefix, bus_hub).await },
                )
                .await?;
                let clients = RedisClients {
                    queue: queue.clone(),
                    bus: bus.clone(),
                };
                (queue, bus, Some(clients))
            }
        };

    let rebuilt = rebuild_from_db(&*queue_store, &db)
        .await
        .map_err(|err| StartError(format!("cannot rebuild the queue from the database: {err}")))?;
    if rebuilt.added > 0 {
        tracing::info!(
            jobs = rebuilt.added,
            "queued jobs from the database are back in the queue"
        );
    }

    let limits = StoreLimits::for_backend(db.backend_name(), config.database_max_connections);
    let store = StoreHandle::new(
        MessageStoreActor::new(db.clone(), bus.clone(), metrics.clone(), limits, io.clone())
            .start(),
    );
    let queue_addr = QueueActor::new(
        queue_store.clone(),
        db.clone(),
        hub.clone(),
        metrics.clone(),
        forge_urls.len() as u32,
    )
    .start();
    let queue = QueueHandle::new(queue_addr, queue_store);

    let health = BackendHealth::default();
    let busy = Busy::default();
    let deps = ForgeDeps {
        queue: queue.clone(),
        store: store.clone(),
        images,
        bus,
        metrics: metrics.clone(),
        health: health.clone(),
        busy: busy.clone(),
        io: io.clone(),
    };
    let settings = ForgeSettings {
        timeout: config.forge_timeout,
        progress_interval: config.forge_progress_interval,
        previews: config.forge_previews,
        slots: config.forge_slots,
        breaker_failures: config.breaker_failures,
        breaker_open_for: config.breaker_open_for,
    };
    let mut backends = Vec::new();
    for url in &forge_urls {
        let client =
            ForgeClient::new(Backend::from_url(url), config.forge_timeout).map_err(StartError)?;
        backends.push(ForgeActor::new(client, deps.clone(), settings.clone()).start());
    }
    let forge = ForgePool::new(backends, health, busy);
    {
        let forge = forge.clone();
        hub.on_job_ended(move |id| forge.abandon(id));
    }

    let gateway = Gateway::new(
        db.clone(),
        store.clone(),
        queue.clone(),
        GatewaySettings {
            max_pending_per_user: config.max_pending_per_user,
        },
    );
    let watchdog = WatchdogHandle::new(
        WatchdogActor::new(
            db.clone(),
            gateway.clone(),
            metrics.clone(),
            WatchdogSettings {
                stuck_after: config.stuck_after,
                interval: config.watchdog_interval,
                job_deadline: (!config.job_deadline.is_zero()).then_some(config.job_deadline),
            },
        )
        .start(),
    );
    let arbiters = (0..threads.max(1))
        .map(|_| Arbiter::new().handle())
        .collect();
    Ok(Core {
        gateway,
        store,
        queue,
        forge,
        watchdog,
        hub,
        db,
        metrics,
        arbiters,
        redis,
    })
}

/// The JWT secret and admin token: configured, or in dev mode kept in the data folder so
/// tokens survive restarts.
fn secrets(config: &Config) -> Result<(Vec<u8>, Option<String>), StartError> {
    let dev = config.dev_mode();
    let secret = match (&config.auth_jwt_secret, dev) {
        (Some(secret), _) => secret.as_bytes().to_vec(),
        (None, true) => dev_file(config, "dev-jwt-secret")?.into_bytes(),
        (None, false) => {
            return Err(StartError(
                "AUTH_JWT_SECRET is required unless dev mode is on".into(),
            ));
        }
    };
    let admin = match (&config.admin_token, dev) {
        (Some(token), _) => Some(token.clone()),
        (None, true) => Some(dev_file(config, "dev-admin-token")?),
        (None, false) => {
            tracing::info!("no ADMIN_TOKEN set: /admin/* is closed");
            None
        }
    };
    Ok((secret, admin))
}

fn dev_file(config: &Config, name: &str) -> Result<String, StartError> {
    let path = config.data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_owned());
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|err| {
        StartError(format!(
            "cannot create {}: {err}",
            config.data_dir.display()
        ))
    })?;
    let value: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    std::fs::write(&path, &value)
        .map_err(|err| StartError(format!("cannot write {}: {err}", path.display())))?;
    Ok(value)
}
