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

/// A Redis Cluster of the test's own: three masters (`redis-server --cluster-enabled yes`)
/// joined by `redis-cli --cluster create`, on free ports; stopped when dropped.
pub struct PrivateRedisCluster {
    /// `redis-cluster://` with every node, comma-separated.
    pub url: String,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl PrivateRedisCluster {
    /// Starts the three nodes, creates the cluster and waits until it serves every slot.
    pub async fn start() -> PrivateRedisCluster {
        let dir = tempfile::tempdir().expect("folder for the cluster's node files");
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|listener| listener.local_addr())
                    .expect("a free port")
                    .port()
            })
            .collect();
        let mut children = Vec::new();
        for port in &ports {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--dir", &dir.path().display().to_string()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server starts (Debian's redis-server package)");
            children.push(child);
        }
        let cluster = PrivateRedisCluster {
            url: format!(
                "redis-cluster://{}",
                ports
                    .iter()
                    .map(|port| format!("127.0.0.1:{port}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            children,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + super::DEADLINE;
        for port in &ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a node never listened"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let nodes: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in &ports {
            loop {
                let info = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster never got ready"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        cluster
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
