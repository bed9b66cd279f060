//! The gateway in this process, with its own Forge simulator: [`TestApp`], and the config and
//! simulator helpers it is built from.

use super::{Client, Storage, http_client};
use forge_gateway::app::{self, RunningApp};
use forge_gateway::config::Config;
use forge_sim::{Latency, SimConfig, SimServer};
use std::time::Duration;

/// A gateway under test with its own simulator.
pub struct TestApp {
    pub app: Option<RunningApp>,
    pub data_dir: std::path::PathBuf,
    /// Its client: `app.submit(…)`, `app.base`, `app.http` and the rest come from here.
    pub client: Client,
    pub sim: SimServer,
}

/// A simulator config that answers at once.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        latency: Latency::Fixed(Duration::from_millis(50)),
        ..SimConfig::default()
    }
}

/// A simulator config whose generations never end (jobs stay processing until interrupted).
pub fn hanging_sim() -> SimConfig {
    SimConfig {
        mode: forge_sim::SimMode::Hang,
        ..fast_sim()
    }
}

/// Starts a simulator on a free port.
pub async fn start_sim(config: SimConfig) -> SimServer {
    SimServer::start("127.0.0.1:0".parse().expect("address"), config)
        .await
        .expect("simulator starts")
}

/// Config for a test app: dev mode, a free port, short timings, `storage`, then `extra` flags.
pub fn config(storage: &Storage, forge_urls: &[String], extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "forge-gateway".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--dev".into(),
        "--forge-progress-interval".into(),
        "100ms".into(),
    ];
    if !extra.contains(&"--shutdown-grace") {
        args.extend(["--shutdown-grace".into(), "2s".into()]);
    }
    if !forge_urls.is_empty() {
        args.extend(["--forge-urls".into(), forge_urls.join(",")]);
    }
    args.extend(storage.flags());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Config::from_flags(args).expect("test config is valid")
}

impl TestApp {
    /// An app with a fast simulator and default settings.
    pub async fn spawn() -> (TestApp, Storage) {
        Self::spawn_with(fast_sim(), &[]).await
    }

    /// An app with its own simulator (`sim`) and extra flags.
    pub async fn spawn_with(sim: SimConfig, extra: &[&str]) -> (TestApp, Storage) {
        let storage = Storage::fresh();
        let app = TestApp::start(&storage, sim, extra).await;
        (app, storage)
    }

    /// An app on existing storage.
    pub async fn start(storage: &Storage, sim: SimConfig, extra: &[&str]) -> TestApp {
        let sim = start_sim(sim).await;
        let config = config(storage, &[sim.url()], extra);
        let app = app::start(config).await.expect("gateway starts");
        let base = app.url();
        TestApp {
            app: Some(app),
            data_dir: storage.dir.path().to_owned(),
            client: Client {
                base,
                http: http_client(),
            },
            sim,
        }
    }

    /// Handles to the app's core (store, queue, database…).
    pub fn core(&self) -> &forge_gateway::app::Core {
        self.app
            .as_ref()
            .and_then(|app| app.core())
            .expect("running app")
    }

    /// `/admin/metrics` as text.
    pub async fn metrics(&self) -> String {
        let token = std::fs::read_to_string(self.data_dir.join("dev-admin-token"))
            .expect("dev admin token");
        self.http
            .get(format!("{}/admin/metrics", self.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.sim.shutdown().await;
    }

    /// Stops the gateway and hands back its simulator, still running, to read its stats.
    pub async fn stop_keeping_sim(mut self) -> SimServer {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.sim
    }
}

/// A test app is used as its client.
impl std::ops::Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
