//! forge-gateway: queues image requests, runs them on Stable Diffusion WebUI Forge servers,
//! records every state change of every job in a database and pushes each change to the
//! user's browsers over a WebSocket.
//!
//! See `docs/architecture.md` for the actors and who owns what.

pub mod actors;
pub mod app;
pub mod breakers;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod forge_client;
pub mod gateway;
pub mod http;
pub mod images;
pub mod metrics;
pub mod queue;
pub mod redis_client;
pub mod shared_folder;
pub mod slots;
