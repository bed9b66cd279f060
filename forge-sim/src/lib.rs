//! forge_sim: a simulator of a Stable Diffusion WebUI Forge server, speaking the part of the
//! AUTOMATIC1111 API the gateway uses (see `FORGE-API.md`).
//!
//! It exists so that the gateway can run with no GPU (the embedded default starts one), and so
//! that tests can make a backend misbehave on purpose: hang, fail with 500, reset the
//! connection, answer garbage or cut an answer short. Like Forge it generates one picture at a
//! time and queues the rest on their open connections; its progress endpoint reports whatever
//! generation holds the lock.
//!
//! HTTP is served by hyper (HTTP/1.1 only, as Forge's uvicorn does), optionally over TLS; the fault
//! modes that a well-behaved server cannot produce are built around it (see `exchange`).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use forge_sim::{SimConfig, SimMode, SimServer};
//! let server = SimServer::start("127.0.0.1:0".parse().expect("address"), SimConfig::default()).await?;
//! println!("Forge at {}", server.url());
//! server.set_mode(SimMode::Hang);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod action;
mod api;
mod config;
mod exchange;
mod http;
mod models;
mod params;
mod render;
mod reset;
mod server;
mod state;
mod stats;
mod tasks;
mod tls;
mod txt2img;

pub use config::{Latency, ParseLatencyError, ParseModeError, SimConfig, SimConfigError, SimMode};
pub use models::DEFAULT_MODEL;
pub use render::{MAX_SIDE, render_png};
pub use server::SimServer;
pub use state::SimStats;
pub use tls::{TlsError, TlsIdentity};
