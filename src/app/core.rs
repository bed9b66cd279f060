//! Builds what runs on the actix system: the database, the queue store and bus, the session
//! registry, the store, queue, Forge and watchdog actors, and the use cases over them.

use super::{Core, RedisClients, StartError};
use crate::actors::forge::{
    BackendHealth, Busy, ForgeActor, ForgeDeps, ForgePool, ForgeSettings, ModelsSeen, Slots,
};
use crate::actors::queue::{QueueActor, QueueHandle, rebuild::rebuild_from_db};
use crate::actors::store::{MessageStoreActor, StoreHandle, StoreLimits};
use crate::breakers::redis::RedisBreakers;
use crate::breakers::{BreakerSettings, BreakerStore, MemoryBreakers};
use crate::config::Config;
use crate::db::{Database, DbSettings};
use crate::domain::eta::EtaModel;
use crate::domain::outages::Outages;
use crate::events::redis_bus::RedisBus;
use crate::events::registry::SessionCaps;
use crate::events::{EventBus, LocalBus, SessionRegistry};
use crate::forge_client::{Backend, ForgeClient, TlsRoots};
use crate::gateway::leases::{LeaseActor, LeaseDeps};
use crate::gateway::retention::RetentionActor;
use crate::gateway::watchdog::{WatchdogActor, WatchdogDeps, WatchdogHandle, WatchdogSettings};
use crate::gateway::{Gateway, GatewaySettings};
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::queue::QueueStore;
use crate::queue::memory::MemoryQueue;
use crate::queue::redis::RedisQueue;
use crate::slots::redis::RedisSlots;
use crate::slots::{MemorySlots, SlotStore};
use actix::prelude::*;
use secrecy::ExposeSecret as _;
use std::sync::Arc;

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
    E: std::error::Error + Send + Sync + 'static,
{
    match io.spawn(connect).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(err)) => Err(StartError::caused(what, err)),
        Err(err) => Err(StartError::caused(what, err)),
    }
}

pub(super) async fn build_core(
    config: Config,
    forge_urls: Vec<url::Url>,
    images: ImageStore,
    threads: usize,
    io: tokio::runtime::Handle,
) -> Result<Core, StartError> {
    let db = open_database(&config, &io).await?;
    let metrics = Metrics::shared();
    let registry = start_registry(&config);
    let shared = connect_shared(&config, &registry, &io).await?;
    rebuild_queue(&*shared.queue, &db).await?;

    let outages = Arc::new(Outages::new(chrono::Utc::now()));
    let bus = shared.bus.clone();
    let store = start_store(&config, &db, shared.bus, &metrics, &outages, &io);
    let queue = start_queue(
        &config,
        shared.queue,
        &db,
        &registry,
        &metrics,
        &outages,
        forge_urls.len(),
    );

    let forge = start_backends(
        &config,
        &forge_urls,
        ForgeDeps {
            queue: queue.clone(),
            store: store.clone(),
            images: images.clone(),
            metrics: metrics.clone(),
            health: BackendHealth::default(),
            busy: Busy::default(),
            slots: Slots::new(shared.slots, config.job_lease),
            breakers: shared.breakers,
            models: ModelsSeen::default(),
            io: io.clone(),
        },
    )?;
    // A job another process ended (cancelled, stuck) stops running on this one's backends.
    let abandon = forge.clone();
    bus.on_job_ended(Arc::new(move |id| abandon.abandon(id)));

    let gateway = Gateway::new(
        db.clone(),
        store.clone(),
        queue.clone(),
        outages.clone(),
        forge.clone(),
        gateway_settings(&config),
    );
    let upkeep = Upkeep {
        gateway: gateway.clone(),
        forge: forge.clone(),
        outages,
        metrics: metrics.clone(),
    };
    let watchdog = start_upkeep(&config, upkeep, &db, images);
    // The sessions' arbiters: one per core.
    let arbiters = (0..threads.max(1)).map(|_| Arbiter::new().handle());
    Ok(Core {
        gateway,
        store,
        queue,
        forge,
        watchdog,
        registry,
        db,
        metrics,
        arbiters: arbiters.collect(),
        redis: shared.redis,
    })
}

/// The session registry, on an arbiter of its own: every event and position passes through it.
fn start_registry(config: &Config) -> SessionRegistry {
    let caps = SessionCaps {
        per_user: config.max_sessions_per_user,
        total: config.max_sessions,
    };
    SessionRegistry::start(&Arbiter::new().handle(), caps)
}

fn gateway_settings(config: &Config) -> GatewaySettings {
    GatewaySettings {
        max_pending_per_user: config.max_pending_per_user,
        list_max_bytes: config.list_max_bytes,
        list_concurrency: config.list_concurrency as usize,
        default_model: config.default_model.clone(),
    }
}

/// The message store actor: every write of a message goes through it.
fn start_store(
    config: &Config,
    db: &Database,
    bus: Arc<dyn EventBus>,
    metrics: &Arc<Metrics>,
    outages: &Arc<Outages>,
    io: &tokio::runtime::Handle,
) -> StoreHandle {
    let limits = StoreLimits::for_backend(db.backend_name(), config.database_max_connections);
    StoreHandle::new(
        MessageStoreActor::new(
            db.clone(),
            bus,
            metrics.clone(),
            outages.clone(),
            limits,
            io.clone(),
        )
        .start(),
    )
}

/// The queue actor over the queue store, feeding positions to the registry's users.
fn start_queue(
    config: &Config,
    queue_store: Arc<dyn QueueStore>,
    db: &Database,
    registry: &SessionRegistry,
    metrics: &Arc<Metrics>,
    outages: &Arc<Outages>,
    backends: usize,
) -> QueueHandle {
    let eta = Arc::new(parking_lot::Mutex::new(EtaModel::new(backends as u32)));
    let queue_addr = QueueActor::new(
        queue_store.clone(),
        db.clone(),
        registry.positions(),
        metrics.clone(),
        outages.clone(),
        eta.clone(),
        config.ws_positions_per_frame as usize,
    )
    .start();
    let queue = QueueHandle::new(queue_addr, queue_store, db.clone(), eta);
    registry.watch_users_with(queue.watch_recipient());
    queue
}

/// Connects to the database (migrating it).
async fn open_database(
    config: &Config,
    io: &tokio::runtime::Handle,
) -> Result<Database, StartError> {
    let settings = DbSettings {
        url: config.database_url(),
        schema: config.database_schema.clone(),
        max_connections: config.database_max_connections,
        timeout: config.database_timeout,
        pooler: config.database_pooler == crate::config::DatabasePooler::Transaction,
        migration_url: config
            .database_migration_url
            .as_ref()
            .map(|url| url.expose_secret().to_owned()),
    };
    on_io(io, "cannot open the database", async move {
        Database::connect(&settings).await
    })
    .await
}

/// Puts the jobs the database holds as queued, and the queue lacks, back in the queue.
async fn rebuild_queue(queue: &dyn QueueStore, db: &Database) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    let rebuilt = rebuild_from_db(queue, db)
        .await
        .map_err(|err| StartError::caused("cannot rebuild the queue from the database", err))?;
    if rebuilt.added > 0 {
        tracing::info!(
            jobs = rebuilt.added,
            took = ?started.elapsed(),
            "queued jobs from the database are back in the queue"
        );
    }
    Ok(())
}

/// What the upkeep actors (leases, watchdog) work with.
struct Upkeep {
    gateway: Gateway,
    forge: ForgePool,
    outages: Arc<Outages>,
    metrics: Arc<Metrics>,
}

/// The lease keeper, the watchdog and, with `RETENTION`, the retention sweep.
fn start_upkeep(
    config: &Config,
    upkeep: Upkeep,
    db: &Database,
    images: ImageStore,
) -> WatchdogHandle {
    LeaseActor::new(
        LeaseDeps {
            gateway: upkeep.gateway.clone(),
            forge: upkeep.forge.clone(),
            outages: upkeep.outages.clone(),
            metrics: upkeep.metrics.clone(),
        },
        config.job_lease,
    )
    .start();
    if !config.retention.is_zero() {
        RetentionActor::new(db.clone(), images, upkeep.metrics.clone(), config.retention).start();
    }
    WatchdogHandle::new(
        WatchdogActor::new(
            WatchdogDeps {
                gateway: upkeep.gateway,
                forge: upkeep.forge,
                outages: upkeep.outages,
                metrics: upkeep.metrics,
            },
            WatchdogSettings {
                stuck_after: config.stuck_after,
                interval: config.watchdog_interval,
                job_deadline: (!config.job_deadline.is_zero()).then_some(config.job_deadline),
            },
        )
        .start(),
    )
}

/// What this process shares with the others: in this process alone by default, in Redis with
/// `REDIS_URL`.
struct Shared {
    queue: Arc<dyn QueueStore>,
    bus: Arc<dyn EventBus>,
    slots: Arc<dyn SlotStore>,
    breakers: Arc<dyn BreakerStore>,
    redis: Option<RedisClients>,
}

async fn connect_shared(
    config: &Config,
    registry: &SessionRegistry,
    io: &tokio::runtime::Handle,
) -> Result<Shared, StartError> {
    let breaker_settings = BreakerSettings {
        failures: config.breaker_failures,
        open_for: config.breaker_open_for,
        // A trial runs one call; past this its process is taken for dead and another may try.
        trial_lease: config.forge_timeout + std::time::Duration::from_secs(30),
    };
    let Some(url) = config
        .redis_url
        .as_ref()
        .map(|url| url.expose_secret().to_owned())
    else {
        return Ok(Shared {
            queue: Arc::new(MemoryQueue::new()),
            bus: LocalBus::new(registry.clone()),
            slots: Arc::new(MemorySlots::default()),
            breakers: Arc::new(MemoryBreakers::new(breaker_settings)),
            redis: None,
        });
    };
    connect_redis(config, url, breaker_settings, registry, io).await
}

/// The shared stores in Redis, and the check that the images folder is the others'.
async fn connect_redis(
    config: &Config,
    url: String,
    breaker_settings: BreakerSettings,
    registry: &SessionRegistry,
    io: &tokio::runtime::Handle,
) -> Result<Shared, StartError> {
    let prefix = config.redis_prefix.clone();
    let queue = {
        let (url, prefix) = (url.clone(), prefix.clone());
        Arc::new(
            on_io(io, "REDIS_URL: cannot use the Redis queue", async move {
                RedisQueue::connect(&url, &prefix).await
            })
            .await?,
        )
    };
    let bus = {
        let (url, prefix, registry) = (url.clone(), prefix.clone(), registry.clone());
        on_io(
            io,
            "REDIS_URL: cannot use the Redis event bus",
            async move { RedisBus::connect(&url, &prefix, registry).await },
        )
        .await?
    };
    let slots = {
        let (url, prefix) = (url.clone(), prefix.clone());
        Arc::new(
            on_io(
                io,
                "REDIS_URL: cannot use Redis for backend slots",
                async move { RedisSlots::connect(&url, &prefix).await },
            )
            .await?,
        )
    };
    let breakers = {
        let (url, prefix) = (url.clone(), prefix.clone());
        Arc::new(
            on_io(io, "REDIS_URL: cannot use Redis for breakers", async move {
                RedisBreakers::connect(&url, &prefix, breaker_settings).await
            })
            .await?,
        )
    };
    let images_dir = config.images_dir();
    let folder_keeper = on_io(io, "IMAGES_DIR: cannot be shared", async move {
        crate::shared_folder::check_and_keep(&url, &prefix, &images_dir).await
    })
    .await?;
    let redis = RedisClients {
        queue: queue.clone(),
        bus: bus.clone(),
        slots: slots.clone(),
        breakers: breakers.clone(),
        folder_keeper: Arc::new(folder_keeper),
    };
    Ok(Shared {
        queue,
        bus,
        slots,
        breakers,
        redis: Some(redis),
    })
}

/// One Forge actor per backend URL.
fn start_backends(
    config: &Config,
    forge_urls: &[url::Url],
    deps: ForgeDeps,
) -> Result<ForgePool, StartError> {
    let settings = ForgeSettings {
        timeout: config.forge_timeout,
        progress_interval: config.forge_progress_interval,
        previews: config.forge_previews,
        slots: config.forge_slots,
        models_refresh: config.models_refresh,
    };
    let roots = TlsRoots::load(config.forge_ca_file.as_deref()).map_err(StartError::new)?;
    let mut backends = Vec::new();
    for url in forge_urls {
        let client = ForgeClient::new(
            Backend::from_url(url),
            config.forge_timeout,
            config.forge_connect_timeout,
            config.forge_max_answer,
            &roots,
        )
        .map_err(StartError::new)?;
        backends.push(ForgeActor::new(client, deps.clone(), settings.clone()).start());
    }
    Ok(ForgePool::new(
        backends,
        deps.health,
        deps.busy,
        deps.models,
    ))
}
