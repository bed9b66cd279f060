//! The integration tests: one binary, so the gateway is linked once for all of them.
//!
//! Each module drives the gateway from outside (a random port, HTTP and WebSocket), except
//! `queue_contract`, which runs the queue store contract against both stores. `common` is the
//! harness they share. Tests that need PostgreSQL and Redis are ignored without
//! `TEST_DATABASE_URL` / `TEST_REDIS_URL`; run them with `-- --include-ignored`.

mod common;

mod api;
mod contract;
mod deadlines;
mod disk;
mod faults;
mod forge;
mod hostile;
mod listings;
mod lost_slots;
mod model_routing;
mod models;
mod multiprocess;
mod outages;
mod peers;
mod poison;
mod pooler;
mod queue;
mod queue_contract;
mod shared_backends;
mod slow_clients;
mod store;
mod upkeep;
mod walking_skeleton;
mod watchdog;
mod websocket;
