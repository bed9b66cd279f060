//! The Redis event bus (production): job events cross gateway processes through Redis pub/sub.
//!
//! Every process publishes each [`JobEvent`] as JSON on the channel `{<prefix>}:events` and
//! subscribes to it; whatever arrives (its own events included) goes to this process's
//! [`SessionHub`]. A session is registered in exactly one process, so each session gets each
//! event exactly once. Pub/sub is fire-and-forget: an event published while Redis is away is
//! lost, which is acceptable because the database stays the record and clients catch up with
//! a snapshot.

use super::{EventBus, SessionHub};
use crate::domain::event::JobEvent;
use crate::queue::redis::{Received, Role, Subscription, builder, check_prefix};
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, Options, PubsubInterface};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The longest a publish may hold up its caller (the store's publishing task): events are
/// delivered in commit order, so one slow publish delays all the following ones.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The event bus over Redis pub/sub.
pub struct RedisBus {
    publisher: fred::prelude::Client,
    subscriber: SubscriberClient,
    channel: String,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RedisBus {
    /// Connects to `url`, subscribes to `{prefix}:events` and starts delivering what arrives
    /// there to `hub`. Fails if Redis cannot be reached now; afterwards both connections
    /// reconnect by themselves.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hub: SessionHub,
    ) -> Result<Arc<RedisBus>, String> {
        check_prefix(prefix)?;
        let channel = format!("{{{prefix}}}:events");
        let publisher = builder(url, Role::Commands)?
            .build()
            .map_err(|err| format!("creating the Redis event publisher: {err}"))?;
        publisher
            .init()
            .await
            .map_err(|err| format!("connecting the Redis event publisher: {err}"))?;
        let subscription = match Subscription::connect(url, &channel).await {
            Ok(subscription) => subscription,
            Err(err) => {
                let _ = publisher.quit().await;
                return Err(err);
            }
        };
        let subscriber = subscription.client();
        let task = tokio::spawn(run_delivery(subscription, hub));
        Ok(Arc::new(RedisBus {
            publisher,
            subscriber,
            channel,
            task: Mutex::new(Some(task)),
        }))
    }

    /// The client name of the subscriber's connection (as `CLIENT LIST` shows it).
    pub fn subscriber_client_name(&self) -> &str {
        self.subscriber.id()
    }

    /// Stops delivering and closes the connections. Publishing afterwards only logs errors.
    pub async fn close(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        if let Err(err) = self.subscriber.quit().await {
            tracing::debug!(error = %err, "closing the event subscriber");
        }
        if let Err(err) = self.publisher.quit().await {
            tracing::debug!(error = %err, "closing the event publisher");
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        // The delivery task holds its own handle to the subscriber, and fred's connection tasks
        // live until `quit`: stop them with the bus. Quitting twice (after `close`) is harmless.
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (publisher, subscriber) = (self.publisher.clone(), self.subscriber.clone());
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = publisher.quit().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: JobEvent) {
        let body = match serde_json::to_string(&event) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(message = %event.message_id, error = %err, "cannot serialize a job event");
                return;
            }
        };
        // Fail at once while the connection is down instead of queueing behind a reconnect:
        // the event is in the database, and waiting would delay every later event too.
        let options = Options {
            timeout: Some(PUBLISH_TIMEOUT),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        let published = self
            .publisher
            .with_options(&options)
            .publish::<i64, _, _>(self.channel.as_str(), body)
            .await;
        if let Err(err) = published {
            tracing::warn!(
                message = %event.message_id,
                kind = event.kind.type_name(),
                error = %err,
                "could not publish a job event on Redis; sessions catch up on their next snapshot"
            );
        }
    }
}

/// Hands every event arriving on the channel to `hub` until the subscriber closes.
async fn run_delivery(mut subscription: Subscription, hub: SessionHub) {
    loop {
        match subscription.next().await {
            Received::Message(value) => {
                let event = value
                    .as_str()
                    .ok_or_else(|| "not text".to_owned())
                    .and_then(|text| {
                        serde_json::from_str::<JobEvent>(&text).map_err(|err| err.to_string())
                    });
                match event {
                    Ok(event) => hub.dispatch(&event),
                    Err(err) => {
                        tracing::warn!(error = %err, "skipping a malformed job event from Redis")
                    }
                }
            }
            Received::Resubscribed => {
                tracing::warn!(
                    "event subscriber reconnected; events published meanwhile may be lost: telling every session to resync"
                );
                hub.resync_all();
            }
            Received::Lagged(missed) => {
                tracing::warn!(
                    missed,
                    "event subscriber lagged; events were lost: telling every session to resync"
                );
                hub.resync_all();
            }
            Received::Closed => break,
        }
    }
}
