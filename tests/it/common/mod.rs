//! The test harness: spawns the gateway on a random port with its own Forge simulator and
//! talks to it like a client (HTTP and WebSocket).
//!
//! The database is SQLite in a temporary folder unless `TEST_DATABASE_URL` points at
//! PostgreSQL, in which case every app gets a fresh schema. `TEST_REDIS_URL` selects the Redis
//! queue and bus with a fresh key prefix per app.
//!
//! One module per concern: [`storage`], [`app`] (in-process gateway), [`process`] (child
//! process), [`client`] (HTTP), [`ws`] (WebSocket), [`proxy`], [`redis`], [`values`].

pub mod app;
pub mod client;
pub mod disk;
pub mod fake_forge;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod storage;
pub mod values;
pub mod ws;

pub use app::*;
pub use client::*;
pub use disk::*;
pub use fake_forge::*;
pub use process::*;
pub use proxy::*;
pub use redis::*;
pub use storage::*;
pub use values::*;
pub use ws::*;

use std::time::Duration;

/// An HTTP client (the process's TLS provider installed first: reqwest has none of its own).
pub fn http_client() -> reqwest::Client {
    forge_gateway::forge_client::install_default_provider();
    // As docs/api.md asks of clients: drop a pooled connection before the server's
    // HTTP_IDLE_TIMEOUT (60 s) closes it, or a request sent on it as it closes fails with
    // IncompleteMessage (seen once in a long PostgreSQL run of fifty writers).
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Longest a test waits for an expected event.
pub const DEADLINE: Duration = Duration::from_secs(20);
