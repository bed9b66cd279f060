//! The Redis event bus (production): job events cross gateway processes through Redis pub/sub.
//!
//! Every process publishes its [`JobEvent`]s as JSON (one event, or an array of the events that
//! committed together) on the channel `{<prefix>}:events` and
//! subscribes to it; whatever arrives (its own events included) goes to this process's
//! [`SessionRegistry`]. A session is registered in exactly one process, so each session gets each
//! event exactly once. Pub/sub is fire-and-forget: an event published while Redis is away is
//! lost, which is acceptable because the database stays the record and clients catch up with
//! a snapshot.

use super::{EventBus, JobEndedListener, SessionRegistry};
use crate::domain::event::{JobEvent, JobEventKind};
use crate::redis_client::{Received, RedisError, Role, Subscription, builder, check_prefix};
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, Options, PubsubInterface};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};
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
    /// Told of every job that ended (set once, after the Forge pool starts).
    ended: Arc<OnceLock<JobEndedListener>>,
}

impl RedisBus {
    /// Connects to `url`, subscribes to `{prefix}:events` and starts delivering what arrives
    /// there to `registry`. Fails if Redis cannot be reached now; afterwards both connections
    /// reconnect by themselves.
    pub async fn connect(
        url: &str,
        prefix: &str,
        registry: SessionRegistry,
    ) -> Result<Arc<RedisBus>, RedisError> {
        check_prefix(prefix)?;
        let channel = format!("{{{prefix}}}:events");
        let publisher = builder(url, Role::Commands)?
            .build()
            .map_err(|err| RedisError::failed("creating the event publisher", err))?;
        publisher
            .init()
            .await
            .map_err(|err| RedisError::failed("connecting the event publisher", err))?;
        let subscription = match Subscription::connect(url, &channel).await {
            Ok(subscription) => subscription,
            Err(err) => {
                let _ = publisher.quit().await;
                return Err(err);
            }
        };
        let subscriber = subscription.client();
        let ended = Arc::new(OnceLock::new());
        let task = tokio::spawn(run_delivery(subscription, registry, ended.clone()));
        Ok(Arc::new(RedisBus {
            publisher,
            subscriber,
            channel,
            task: Mutex::new(Some(task)),
            ended,
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

impl RedisBus {
    /// Publishes one message body (a JSON event or a JSON array of events).
    async fn publish_body(&self, body: String, first: &JobEvent, count: usize) {
        // Fail at once while the connection is down instead of queueing behind a reconnect:
        // the events are in the database, and waiting would delay every later event too.
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
                message_id = %first.message_id,
                kind = first.kind.type_name(),
                events = count,
                error = %err,
                "could not publish job events on Redis; sessions catch up on their next snapshot"
            );
        }
    }
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: JobEvent) {
        match serde_json::to_string(&event) {
            Ok(body) => self.publish_body(body, &event, 1).await,
            Err(err) => {
                tracing::error!(message_id = %event.message_id, error = %err, "cannot serialize a job event")
            }
        }
    }

    async fn publish_all(&self, events: Vec<JobEvent>) {
        let Some(first) = events.first() else {
            return;
        };
        match serde_json::to_string(&events) {
            Ok(body) => self.publish_body(body, first, events.len()).await,
            Err(err) => {
                tracing::error!(message_id = %first.message_id, error = %err, "cannot serialize job events")
            }
        }
    }

    fn on_job_ended(&self, listener: JobEndedListener) {
        let _ = self.ended.set(listener);
    }
}

/// What one pub/sub message holds: one event, or several in publishing order.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Published {
    // An array first: serde would also try to read a struct from an array.
    Many(Vec<JobEvent>),
    One(Box<JobEvent>),
}

/// Decodes one pub/sub message.
fn decode(text: &str) -> Result<Vec<JobEvent>, String> {
    match serde_json::from_str::<Published>(text) {
        Ok(Published::One(event)) => Ok(vec![*event]),
        Ok(Published::Many(events)) => Ok(events),
        Err(err) => Err(err.to_string()),
    }
}

/// Hands every event arriving on the channel to `registry`, and each ended job to `ended`
/// once it is set, until the subscriber closes.
async fn run_delivery(
    mut subscription: Subscription,
    registry: SessionRegistry,
    ended: Arc<OnceLock<JobEndedListener>>,
) {
    loop {
        match subscription.next().await {
            Received::Message(value) => {
                let events = value
                    .as_str()
                    .ok_or_else(|| "not text".to_owned())
                    .and_then(|text| decode(&text));
                match events {
                    Ok(events) => {
                        for event in events {
                            if let Some(ended) = ended.get()
                                && matches!(
                                    event.kind,
                                    JobEventKind::Error { .. } | JobEventKind::Cancelled { .. }
                                )
                            {
                                ended(event.message_id);
                            }
                            registry.dispatch(event);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "skipping a malformed job event from Redis")
                    }
                }
            }
            Received::Resubscribed => {
                tracing::warn!(
                    "event subscriber reconnected; events published meanwhile may be lost: telling every session to resync"
                );
                registry.resync_all();
            }
            Received::Lagged(missed) => {
                tracing::warn!(
                    missed,
                    "event subscriber lagged; events were lost: telling every session to resync"
                );
                registry.resync_all();
            }
            Received::Closed => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::JobEventKind;
    use uuid::Uuid;

    fn event(user: &str, version: i64) -> JobEvent {
        JobEvent {
            user_id: user.to_owned(),
            message_id: Uuid::now_v7(),
            version: Some(version),
            kind: JobEventKind::Cancelled {
                error: None,
                client_ref: None,
            },
        }
    }

    #[test]
    fn decodes_one_event_and_a_batch_in_order() {
        let one = event("ayse", 1);
        let decoded = decode(&serde_json::to_string(&one).expect("json")).expect("one");
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].message_id, one.message_id);

        let batch = vec![event("ayse", 2), event("mehmet", 3), event("ayse", 4)];
        let decoded = decode(&serde_json::to_string(&batch).expect("json")).expect("batch");
        let versions: Vec<_> = decoded.iter().map(|event| event.version).collect();
        assert_eq!(versions, vec![Some(2), Some(3), Some(4)]);
        assert_eq!(decoded[1].user_id, "mehmet");
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        assert!(decode("[1, 2]").is_err());
        assert!(decode("{\"user_id\": 5}").is_err());
        assert!(decode("not json").is_err());
    }
}
