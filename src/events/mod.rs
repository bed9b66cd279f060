//! Job events on their way to browsers.
//!
//! The pipeline publishes [`JobEvent`]s on an [`EventBus`]; every gateway process's
//! [`SessionRegistry`] hands each event to the local sessions of the event's user. In the
//! embedded mode the bus delivers straight to the registry; with Redis every process publishes
//! to one channel and delivers what it receives, its own events included, so each session gets
//! each event once.
//!
//! The bus is also how a job that ends in one process stops running in another: a cancel or a
//! watchdog's verdict is written where it is asked for, and that process stops its own run
//! directly (`Gateway::after_terminal`); with Redis, every process's bus hands each
//! `job.error` and `job.cancelled` it receives to the listener set by
//! [`EventBus::on_job_ended`] (the Forge pool's `abandon`), so the process whose backend runs
//! the job stops it too.

pub mod redis_bus;
pub mod registry;

pub use registry::SessionRegistry;

use crate::domain::event::JobEvent;
use std::sync::Arc;

/// Where the pipeline sends job events.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync {
    /// Sends the event to every session of its user, in every gateway process.
    async fn publish(&self, event: JobEvent);

    /// Sends several events, in order. A bus that crosses the network overrides this to send
    /// them in one round trip; the default publishes one after another.
    async fn publish_all(&self, events: Vec<JobEvent>) {
        for event in events {
            self.publish(event).await;
        }
    }

    /// Calls `listener` with the id of every job another process ends (error or cancelled),
    /// so this process stops running it. The in-process bus has no other process: a job
    /// ended here is stopped here by whoever ended it, and this does nothing.
    fn on_job_ended(&self, listener: JobEndedListener) {
        let _ = listener;
    }
}

/// What a process does with a job that ended elsewhere: stop running it.
pub type JobEndedListener = Arc<dyn Fn(uuid::Uuid) + Send + Sync>;

/// The embedded mode's bus: straight to this process's sessions.
pub struct LocalBus {
    registry: SessionRegistry,
}

impl LocalBus {
    /// A bus delivering to `registry`.
    pub fn new(registry: SessionRegistry) -> Arc<Self> {
        Arc::new(LocalBus { registry })
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: JobEvent) {
        self.registry.dispatch(event);
    }
}
