//! Behind PgBouncer in transaction mode (issue 26): Debian's pgbouncer with a small server
//! pool in front of the test PostgreSQL, two gateway processes through it, jobs of several
//! users to completion with exact positions and REST read-back; and a start through it without
//! `DATABASE_POOLER=transaction` that fails with one line saying what to set.

use crate::common::*;
use forge_sim::{Latency, SimConfig, SimMode};
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A pgbouncer of the test's own in transaction mode, in front of `database` on the test
/// server; stopped when dropped.
struct PgBouncer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// PgBouncer in transaction mode before `database`, with `extra` lines in its
    /// `[pgbouncer]` section.
    fn start(server: &url::Url, database: &str, extra: &str) -> PgBouncer {
        let dir = tempfile::tempdir().expect("folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let ini = format!(
            "[databases]\nfgpool = host={host} port={server_port} dbname={database} user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = any\npool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 500\n\
             logfile = {log}\npidfile = {pid}\n{extra}",
            host = server.host_str().expect("host"),
            server_port = server.port().unwrap_or(5432),
            log = dir.path().join("pgbouncer.log").display(),
            pid = dir.path().join("pgbouncer.pid").display(),
        );
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(&config, ini).expect("write pgbouncer.ini");
        // pgbouncer refuses to run as root: it runs as postgres, which must read its files.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(dir.path())
            .status();
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("this test needs Debian's pgbouncer package (.ci/run installs it)");
        let mut child = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", binary])
            .arg(&config)
            .spawn()
            .expect("runuser starts pgbouncer");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pgbouncer exited ({status}) before it listened");
            }
            assert!(Instant::now() < deadline, "pgbouncer never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        PgBouncer {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/fgpool", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the gateway binary with `env` and expects it to exit at once, its last line saying
/// to set `DATABASE_POOLER=transaction`.
async fn start_is_refused_saying_to_set_the_pooler(env: &[(&str, String)]) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-gateway"))
        .env_clear()
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.contains("DATABASE_POOLER=transaction"), "{stderr}");
}

/// Runs `sql` on the test server's `postgres` database.
fn psql(server: &url::Url, sql: &str) {
    let mut admin = server.clone();
    admin.set_path("/postgres");
    let status = std::process::Command::new("psql")
        .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .status()
        .expect("run psql");
    assert!(status.success(), "psql: {sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis (TEST_DATABASE_URL, TEST_REDIS_URL) and Debian's pgbouncer"]
async fn two_processes_through_pgbouncer_in_transaction_mode_run_every_job() {
    let storage = shared_storage();
    let (url, _) = storage.postgres.clone().expect("postgres");
    let server = url::Url::parse(&url).expect("TEST_DATABASE_URL");
    let database = format!("fg_pool_{}", Uuid::now_v7().simple());
    psql(&server, &format!("CREATE DATABASE {database}"));
    let bouncer = PgBouncer::start(&server, &database, "");
    let sim = start_sim(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(200)),
        ..fast_sim()
    })
    .await;
    let (redis_url, prefix) = storage.redis.clone().expect("redis");
    let env = |migration_url: Option<String>| {
        let mut env = vec![
            ("BIND", "127.0.0.1:0".to_owned()),
            ("DEV_MODE", "true".to_owned()),
            ("DATA_DIR", storage.dir.path().display().to_string()),
            ("FORGE_URLS", sim.url()),
            ("DATABASE_URL", bouncer.url()),
            ("DATABASE_POOLER", "transaction".to_owned()),
            // More client connections than the two server connections: they take turns.
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_PREFIX", prefix.clone()),
        ];
        if let Some(direct) = migration_url {
            env.push(("DATABASE_MIGRATION_URL", direct));
        }
        env
    };
    // The first migrates through the pooler, the second straight to PostgreSQL.
    let first = GatewayProcess::start(&env(None)).await;
    let mut direct = server.clone();
    direct.set_path(&format!("/{database}"));
    let second = GatewayProcess::start(&env(Some(direct.to_string()))).await;
    let clients = [first.client(), second.client()];

    // A wedged backend first, so the jobs wait where positions can be read.
    sim.set_mode(SimMode::Hang);
    let blocker_token = clients[0].token("blocker").await;
    let blocker = clients[0].submit_id(&blocker_token, "blocker").await;
    clients[0]
        .wait_message(&blocker_token, &blocker, |m| m["status"] == "processing")
        .await;
    let mut jobs = Vec::new();
    for n in 0..12 {
        let client = &clients[n % 2];
        let token = client.token(&format!("user{}", n % 3)).await;
        let id = client.submit_id(&token, &format!("pooled {n}")).await;
        jobs.push((token, id));
    }
    // The one backend's one slot is shared by both processes: the blocker runs, the twelve
    // wait at 1..12.
    let mut positions = Vec::new();
    for (n, (token, id)) in jobs.iter().enumerate() {
        let message = clients[(n + 1) % 2]
            .wait_message(token, id, |m| m["queue_position"].is_i64())
            .await;
        positions.push(message["queue_position"].as_i64().expect("position"));
    }
    positions.sort();
    assert_eq!(positions, (1..=12).collect::<Vec<_>>(), "exact positions");

    sim.set_config(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..fast_sim()
    });
    // The generation hung on the wedged backend is cancelled; every other job completes.
    assert_eq!(clients[1].cancel(&blocker_token, &blocker).await.0, 200);
    for (n, (token, id)) in jobs.iter().enumerate() {
        let done: Value = clients[n % 2]
            .wait_message(token, id, |m| m["status"] == "complete")
            .await;
        assert_eq!(done["prompt"], format!("pooled {n}"));
        let listed = clients[(n + 1) % 2].get(token, "/api/v1/messages").await.1;
        assert!(
            listed["messages"]
                .as_array()
                .expect("list")
                .iter()
                .any(|m| m["id"] == id.as_str()),
            "{id} read back over REST from the other process"
        );
    }

    // Through the pooler without saying so: one line saying what to set.
    let mut plain = env(None);
    plain.retain(|(key, _)| *key != "DATABASE_POOLER");
    start_is_refused_saying_to_set_the_pooler(&plain).await;

    // The same through a pooler that lets the driver's startup options through and hands
    // transactions to its server connections in turn (as a busy one does): the start is
    // refused before anything is written, with the same line.
    let turns = PgBouncer::start(
        &server,
        &database,
        "ignore_startup_parameters = extra_float_digits,options\nserver_round_robin = 1\nmin_pool_size = 2\n",
    );
    for (key, value) in &mut plain {
        if *key == "DATABASE_URL" {
            *value = turns.url();
        }
    }
    start_is_refused_saying_to_set_the_pooler(&plain).await;
    drop(turns);

    first.kill().await;
    second.kill().await;
    drop(bouncer);
    psql(&server, &format!("DROP DATABASE {database} WITH (FORCE)"));
    delete_redis_prefix(&redis_url, &prefix).await;
}
