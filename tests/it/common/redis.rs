//! Plain Redis access for what the stores do not offer (deleting keys, `CLIENT LIST`).

use futures::StreamExt;

/// A plain Redis client for what the stores do not offer (deleting keys, CLIENT LIST).
pub async fn plain_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::*;
    let config = Config::from_url(url).expect("a valid Redis URL");
    let client = Builder::from_config(config)
        .build()
        .expect("a Redis client");
    client.init().await.expect("Redis answers");
    client
}

/// Deletes every key of `prefix` (SCAN MATCH `{prefix}:*` + DEL): what a Redis restart does to
/// the queue, and the cleanup after a test. Never touches another prefix.
pub async fn delete_redis_prefix(url: &str, prefix: &str) {
    use fred::prelude::*;
    let client = plain_client(url).await;
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(format!("{{{prefix}}}:*"), Some(500), None)
        .filter_map(|key| async move { key.ok() })
        .collect()
        .await;
    for chunk in keys.chunks(500) {
        let _: i64 = client.del(chunk.to_vec()).await.expect("DEL");
    }
    let _ = client.quit().await;
}
