//! Discovery: each backend is asked what it offers at start and every `MODELS_REFRESH`; one
//! that cannot answer is left out of the catalogue and asked again every
//! [`RETRY_AT_MOST`] (or sooner, with a shorter refresh), so it is back soon after it recovers.

use super::pool::ModelsSeen;
use crate::actors::queue::QueueHandle;
use crate::forge_client::ForgeClient;
use std::time::Duration;

/// The longest wait before asking a backend that could not answer again.
pub const RETRY_AT_MOST: Duration = Duration::from_secs(5);

/// The longest one discovery read may take.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Asks `client` what it offers, forever (the task is aborted with its actor).
pub(super) async fn discover(
    client: ForgeClient,
    models: ModelsSeen,
    queue: QueueHandle,
    refresh: Duration,
) {
    let mut answered = None;
    loop {
        let wait = match client
            .models(READ_DEADLINE.min(refresh.max(Duration::from_secs(1))))
            .await
        {
            Ok(offers) => {
                if answered != Some(true) {
                    tracing::info!(
                        backend = client.name(),
                        checkpoints = offers.checkpoints.len(),
                        samplers = offers.samplers.len(),
                        loaded = offers.loaded.as_deref().unwrap_or("-"),
                        "backend's models discovered"
                    );
                }
                answered = Some(true);
                if let Some(routing) = models.set(client.name(), Some(offers)) {
                    queue.set_routing(routing);
                }
                refresh
            }
            Err(err) => {
                if answered != Some(false) {
                    tracing::warn!(
                        backend = client.name(),
                        error = %err.detail(),
                        "cannot read the backend's models: left out of /api/v1/models until it answers"
                    );
                }
                answered = Some(false);
                // The last list stays in the routing: nothing to tell the queue.
                models.set(client.name(), None);
                refresh.min(RETRY_AT_MOST)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
