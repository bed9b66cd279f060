//! Where an app under test keeps its data: SQLite in a temporary folder, or a fresh
//! PostgreSQL schema and Redis key prefix when `TEST_DATABASE_URL` / `TEST_REDIS_URL` are set.

use super::{TcpProxy, authority, with_authority};
use uuid::Uuid;

/// Where tests put their data.
pub struct Storage {
    /// Temporary folder (SQLite file and images).
    pub dir: tempfile::TempDir,
    /// PostgreSQL URL and schema, when testing on PostgreSQL.
    pub postgres: Option<(String, String)>,
    /// Redis URL and key prefix, when testing with Redis.
    pub redis: Option<(String, String)>,
}

impl Storage {
    /// Fresh storage for one app (or several that share it).
    pub fn fresh() -> Storage {
        let dir = tempfile::tempdir().expect("temporary folder");
        let postgres = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| (url, format!("t_{}", Uuid::now_v7().simple())));
        let redis = std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| (url, format!("t{}", Uuid::now_v7().simple())));
        Storage {
            dir,
            postgres,
            redis,
        }
    }

    /// SQLite in a temporary folder and the in-process queue, whatever the environment says.
    pub fn sqlite() -> Storage {
        Storage {
            dir: tempfile::tempdir().expect("temporary folder"),
            postgres: None,
            redis: None,
        }
    }

    /// Environment variables selecting this storage (for a gateway process).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DATA_DIR", self.dir.path().display().to_string())];
        if let Some((url, schema)) = &self.postgres {
            env.extend([
                ("DATABASE_URL", url.clone()),
                ("DATABASE_SCHEMA", schema.clone()),
            ]);
        }
        if let Some((url, prefix)) = &self.redis {
            env.extend([("REDIS_URL", url.clone()), ("REDIS_PREFIX", prefix.clone())]);
        }
        env
    }

    /// The environment of a gateway process on this storage: its own port, dev mode and the
    /// simulator at `forge_url`. Tests add what they are about.
    pub fn process_env(&self, forge_url: String) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.extend([
            ("BIND", "127.0.0.1:0".to_owned()),
            ("DEV_MODE", "true".to_owned()),
            ("FORGE_URLS", forge_url),
        ]);
        env
    }

    /// Sends this storage's Redis traffic through a new [`TcpProxy`], which the test can cut.
    pub async fn redis_through_proxy(&mut self) -> TcpProxy {
        let (url, prefix) = self.redis.clone().expect("redis");
        let proxy = TcpProxy::start(authority(&url)).await;
        self.redis = Some((
            with_authority(&url, &format!("127.0.0.1:{}", proxy.port)),
            prefix,
        ));
        proxy
    }

    /// Sends this storage's PostgreSQL traffic through a new [`TcpProxy`], which the test can
    /// cut.
    pub async fn postgres_through_proxy(&mut self) -> TcpProxy {
        let (url, schema) = self.postgres.clone().expect("postgres");
        let proxy = TcpProxy::start(authority(&url)).await;
        self.postgres = Some((
            with_authority(&url, &format!("127.0.0.1:{}", proxy.port)),
            schema,
        ));
        proxy
    }

    /// Flags selecting this storage.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--data-dir".to_owned(),
            self.dir.path().display().to_string(),
        ];
        if let Some((url, schema)) = &self.postgres {
            flags.extend([
                "--database-url".into(),
                url.clone(),
                "--database-schema".into(),
                schema.clone(),
            ]);
        }
        if let Some((url, prefix)) = &self.redis {
            flags.extend([
                "--redis-url".into(),
                url.clone(),
                "--redis-prefix".into(),
                prefix.clone(),
            ]);
        }
        flags
    }
}

/// Storage on PostgreSQL and Redis (the multi-process tests need both); panics with a clear
/// message when they are not configured.
pub fn shared_storage() -> Storage {
    let storage = Storage::fresh();
    assert!(
        storage.postgres.is_some() && storage.redis.is_some(),
        "set TEST_DATABASE_URL=postgres://… and TEST_REDIS_URL=redis://… to run this test"
    );
    storage
}
