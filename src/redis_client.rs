//! How the gateway's Redis clients connect: shared by the queue store and the event bus so both
//! behave the same when Redis goes away. Below both of them: it knows fred, not the queue.

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, Pool, PubsubInterface, ReconnectPolicy, Server,
    Value,
};
use fred::types::Message;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long one command may take before the caller gets an error: long enough to ride out a
/// reconnect blip, short enough that a request never hangs on a dead Redis.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection with a command unanswered this long is dropped and reconnected: catches
/// half-open TCP connections (a vanished load balancer or host) that would otherwise never
/// fail.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(10);

/// How often a subscriber pings its connection. A subscriber only ever reads, so without this
/// a dead connection would go unnoticed (and messages silently stop) until the next write.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// Capacity of fred's internal pub/sub broadcast channel. A lagging reader turns into a `Gap`
/// (queue feed) or lost events (bus), so it is generous.
const PUBSUB_CAPACITY: usize = 1 << 14;

/// Capacity of a command client's broadcast channels (reconnects and errors only).
const COMMANDS_CHANNEL_CAPACITY: usize = 32;

/// Pause between attempts to subscribe again after a reconnect.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(250);

/// Why a Redis client could not be set up or a command failed, its cause kept.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RedisError {
    /// The settings cannot work (a bad URL or key prefix).
    #[error("{0}")]
    Settings(String),
    /// Redis failed or did not answer in time (`doing` says during what).
    #[error("Redis failed while {doing}: {source}")]
    Failed {
        /// What the client was doing.
        doing: String,
        /// fred's error.
        #[source]
        source: fred::error::Error,
    },
}

impl RedisError {
    /// A failed call, with what it was for.
    pub fn failed(doing: impl Into<String>, source: fred::error::Error) -> RedisError {
        RedisError::Failed {
            doing: doing.into(),
            source,
        }
    }
}

/// What a client is for; decides its retry rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Runs commands, Lua scripts included. Never resent after a connection loss: a script may
    /// have run before the connection died, and running `pop` or `enqueue` twice is not
    /// harmless.
    Commands,
    /// Only subscribes: SUBSCRIBE is idempotent, so retrying it is fine.
    Subscriber,
}

/// Validates a key prefix: it becomes a Redis Cluster hash tag `{prefix}`, so braces inside it
/// would break the one-slot guarantee.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), RedisError> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(RedisError::Settings(format!(
            "invalid Redis prefix {prefix:?}: it must be non-empty and free of braces"
        )));
    }
    Ok(())
}

/// A builder for `url` that reconnects forever with an exponential backoff (100 ms doubling up
/// to 5 s) and bounds every command by [`COMMAND_TIMEOUT`].
pub(crate) fn builder(url: &str, role: Role) -> Result<Builder, RedisError> {
    let config = Config::from_url(&cluster_nodes_as_query(url))
        .map_err(|err| RedisError::Settings(format!("invalid Redis URL: {err}")))?;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|connection| {
            connection.connection_timeout = COMMAND_TIMEOUT;
            connection.internal_command_timeout = COMMAND_TIMEOUT;
            connection.unresponsive.max_timeout = Some(UNRESPONSIVE_AFTER);
            // Names show up in CLIENT LIST, which is how operators (and the tests) tell the
            // gateway's connections apart.
            connection.auto_client_setname = true;
            if role == Role::Commands {
                connection.max_command_attempts = 1;
            }
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = COMMAND_TIMEOUT;
            // Each of a client's broadcast channels (messages, reconnects, errors…) is
            // allocated whole at its capacity: only a subscriber needs room for messages.
            performance.broadcast_channel_capacity = match role {
                Role::Subscriber => PUBSUB_CAPACITY,
                Role::Commands => COMMANDS_CHANNEL_CAPACITY,
            };
        });
    Ok(builder)
}

/// `redis-cluster://[user:pass@]a:1,b:2[/…][?…]` (several seed nodes, comma-separated) as fred
/// reads it: `redis-cluster://[user:pass@]a:1[/…]?node=b:2[&…]`. Any other URL is kept as it is.
fn cluster_nodes_as_query(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    if !scheme.ends_with("-cluster") {
        return url.to_owned();
    }
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (format!("{credentials}@"), rest),
        None => (String::new(), rest),
    };
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(hosts_end);
    let mut hosts = hosts.split(',').filter(|host| !host.is_empty());
    let Some(first) = hosts.next() else {
        return url.to_owned();
    };
    let others: Vec<String> = hosts.map(|host| format!("node={host}")).collect();
    if others.is_empty() {
        return url.to_owned();
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let query = query
        .into_iter()
        .map(str::to_owned)
        .chain(others)
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{credentials}{first}{path}?{query}")
}

/// A pool of `size` command clients of `url`, connected; `what` names its use in errors.
pub(crate) async fn connect_pool(url: &str, size: usize, what: &str) -> Result<Pool, RedisError> {
    let pool = builder(url, Role::Commands)?
        .build_pool(size)
        .map_err(|err| RedisError::failed(format!("creating the Redis clients for {what}"), err))?;
    pool.init()
        .await
        .map_err(|err| RedisError::failed(format!("connecting to Redis for {what}"), err))?;
    Ok(pool)
}

/// What a subscriber task sees next.
pub(crate) enum Received {
    /// A message on the subscribed channel.
    Message(Value),
    /// The connection was re-established and the channel subscribed again: whatever was
    /// published meanwhile is lost.
    Resubscribed,
    /// fred's message buffer overflowed: this many messages are lost.
    Lagged(u64),
    /// The client was closed.
    Closed,
}

/// One subscriber connection to one channel, with its message and reconnect streams.
pub(crate) struct Subscription {
    client: SubscriberClient,
    channel: String,
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<Server>,
    heartbeat: tokio::time::Interval,
}

impl Subscription {
    /// Connects to `url` and subscribes to `channel`; returns once Redis has registered the
    /// subscription, so anything published afterwards arrives.
    pub(crate) async fn connect(url: &str, channel: &str) -> Result<Subscription, RedisError> {
        let client = builder(url, Role::Subscriber)?
            .build_subscriber_client()
            .map_err(|err| RedisError::failed("creating a subscriber", err))?;
        client
            .init()
            .await
            .map_err(|err| RedisError::failed("connecting a subscriber", err))?;
        // Taken before subscribing: fred drops messages that arrive while nobody listens.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        if let Err(err) = subscribe_confirmed(&client, channel).await {
            let _ = client.quit().await;
            return Err(RedisError::failed(format!("subscribing to {channel}"), err));
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Subscription {
            client,
            channel: channel.to_owned(),
            messages,
            reconnects,
            heartbeat,
        })
    }

    /// A handle to the client (to close it, or to read its name).
    pub(crate) fn client(&self) -> SubscriberClient {
        self.client.clone()
    }

    /// Waits for the next message on the channel, reconnect, loss or close. After a reconnect
    /// it subscribes again (retrying until it works) before reporting
    /// [`Received::Resubscribed`], so a reader that reloads state then misses nothing newer.
    pub(crate) async fn next(&mut self) -> Received {
        loop {
            tokio::select! {
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.resubscribe().await;
                        return Received::Resubscribed;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Received::Closed,
                },
                message = self.messages.recv() => match message {
                    Ok(message) if message.channel == self.channel.as_str() => {
                        return Received::Message(message.value);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Received::Lagged(missed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Received::Closed,
                },
                _ = self.heartbeat.tick() => {
                    // The answer does not matter: a ping that is never answered makes fred
                    // drop the connection as unresponsive and reconnect.
                    if let Err(err) = self.client.ping::<Value>(None).await {
                        tracing::debug!(channel = %self.channel, error = %err, "subscriber heartbeat failed");
                    }
                }
            }
        }
    }

    async fn resubscribe(&self) {
        loop {
            match subscribe_confirmed(&self.client, &self.channel).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(channel = %self.channel, error = %err, "could not subscribe again; retrying");
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                }
            }
        }
    }
}

/// Subscribes to `channel` and waits until Redis has processed the subscription.
///
/// fred completes SUBSCRIBE as soon as it is written (its confirmation arrives out of band), so
/// a message published right afterwards could still miss the new subscription. Redis answers
/// one connection's commands in order, so once a PING sent behind the SUBSCRIBE on the same
/// connection is answered, every later publication reaches this subscriber.
async fn subscribe_confirmed(
    subscriber: &SubscriberClient,
    channel: &str,
) -> Result<(), fred::error::Error> {
    subscriber.subscribe(channel).await?;
    subscriber.ping::<Value>(None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cluster_nodes_as_query;

    #[test]
    fn comma_separated_cluster_nodes_become_node_parameters() {
        assert_eq!(
            cluster_nodes_as_query("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            cluster_nodes_as_query("rediss-cluster://u:p@a:1,b:2/0?x=1"),
            "rediss-cluster://u:p@a:1/0?x=1&node=b:2"
        );
        for kept in [
            "redis://a:1/0",
            "redis-cluster://a:1",
            "redis-cluster://a:1?node=b:2",
        ] {
            assert_eq!(cluster_nodes_as_query(kept), kept);
        }
    }
}
