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

/// A redis-server of the test's own on a free port, with `DEBUG` allowed (to make it slow);
/// stopped when dropped.
pub struct PrivateRedis {
    pub url: String,
    child: std::process::Child,
}

impl PrivateRedis {
    /// Starts one and waits until it answers.
    pub async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian's redis-server package)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + super::DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        PrivateRedis { url, child }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
