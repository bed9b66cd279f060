//! How the gateway's Redis clients connect: shared by the queue store and the event bus so both
//! behave the same when Redis goes away.

use fred::prelude::{Builder, Config, ReconnectPolicy};
use std::time::Duration;

/// How long one command may take before the caller gets an error: long enough to ride out a
/// reconnect blip, short enough that a request never hangs on a dead Redis.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Capacity of fred's internal pub/sub broadcast channel. A lagging reader turns into a `Gap`
/// (queue feed) or lost events (bus), so it is generous.
const PUBSUB_CAPACITY: usize = 1 << 14;

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
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(format!(
            "invalid Redis prefix {prefix:?}: it must be non-empty and free of braces"
        ));
    }
    Ok(())
}

/// A builder for `url` that reconnects forever with an exponential backoff (100 ms doubling up
/// to 5 s) and bounds every command by [`COMMAND_TIMEOUT`].
pub(crate) fn builder(url: &str, role: Role) -> Result<Builder, String> {
    let config = Config::from_url(url).map_err(|err| format!("invalid Redis URL: {err}"))?;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|connection| {
            connection.connection_timeout = COMMAND_TIMEOUT;
            connection.internal_command_timeout = COMMAND_TIMEOUT;
            // Names show up in CLIENT LIST, which is how operators (and the tests) tell the
            // gateway's connections apart.
            connection.auto_client_setname = true;
            if role == Role::Commands {
                connection.max_command_attempts = 1;
            }
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = COMMAND_TIMEOUT;
            performance.broadcast_channel_capacity = PUBSUB_CAPACITY;
        });
    Ok(builder)
}
