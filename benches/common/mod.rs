//! What the database benchmarks share: SQLite in a temporary folder, then PostgreSQL (with
//! `BENCH_DATABASE_URL`) in a fresh schema that is dropped afterwards.

use forge_gateway::db::{Database, DbSettings};
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// The benchmarks fill tables of a million rows: their statements may take longer than a
/// request's.
const BENCH_DATABASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `bench` on SQLite, then on PostgreSQL when `BENCH_DATABASE_URL` is set, each with a
/// pool of `connections`; the second argument says whether it is PostgreSQL.
pub async fn on_each_database<F, Fut>(connections: u32, bench: F)
where
    F: Fn(&'static str, DbSettings, bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary folder");
    let sqlite = DbSettings {
        url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
        schema: None,
        max_connections: connections,
        timeout: BENCH_DATABASE_TIMEOUT,
        pooler: false,
        migration_url: None,
    };
    bench("SQLite", sqlite, false).await;
    let Ok(url) = std::env::var("BENCH_DATABASE_URL") else {
        return;
    };
    let schema = format!("bench_{}", Uuid::now_v7().simple());
    let postgres = DbSettings {
        url: url.clone(),
        schema: Some(schema.clone()),
        max_connections: connections,
        timeout: BENCH_DATABASE_TIMEOUT,
        pooler: false,
        migration_url: None,
    };
    bench("PostgreSQL", postgres, true).await;
    if let Ok(db) = Database::connect(&DbSettings {
        url,
        schema: None,
        max_connections: 1,
        timeout: BENCH_DATABASE_TIMEOUT,
        pooler: false,
        migration_url: None,
    })
    .await
    {
        let _ = db
            .execute_raw(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}
