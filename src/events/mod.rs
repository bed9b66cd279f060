//! Job events on their way to browsers.
//!
//! The pipeline publishes [`JobEvent`]s on an [`EventBus`]; every gateway process's
//! [`SessionHub`] hands each event to the local sessions of the event's user. In the embedded
//! mode the bus is the hub itself; with Redis every process publishes to one channel and
//! delivers what it receives, its own events included, so each session gets each event once.

pub mod hub;
pub mod outbox;
pub mod redis_bus;

pub use hub::SessionHub;

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
}

/// The embedded mode's bus: straight to this process's sessions.
pub struct LocalBus {
    hub: SessionHub,
}

impl LocalBus {
    /// A bus delivering to `hub`.
    pub fn new(hub: SessionHub) -> Arc<Self> {
        Arc::new(LocalBus { hub })
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: JobEvent) {
        self.hub.dispatch(&event);
    }
}
