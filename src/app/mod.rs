//! Wiring: builds the actors on an actix `System` ([`core`]), serves HTTP with warp, and
//! shuts down.
//!
//! Threads: the actix System runs on its own thread (the core actors on its arbiter, the
//! session registry on one of its own, the sessions spread over one extra arbiter per core);
//! warp and the sockets run on a multi-thread tokio runtime. They talk through typed handles
//! over actix mailboxes.

mod core;
mod secrets;
mod start;

pub use start::start;

use crate::actors::forge::ForgePool;
use crate::actors::queue::QueueHandle;
use crate::actors::store::StoreHandle;
use crate::config::checks::redact;
use crate::db::Database;
use crate::events::SessionRegistry;
use crate::events::redis_bus::RedisBus;
use crate::gateway::Gateway;
use crate::gateway::watchdog::WatchdogHandle;
use crate::http::HttpState;
use crate::metrics::Metrics;
use crate::queue::redis::RedisQueue;
use actix::prelude::*;
use forge_sim::SimServer;
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
