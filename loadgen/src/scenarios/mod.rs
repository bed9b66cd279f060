//! The scenarios, one module each, and what they share.
//!
//! - `throughput`, `latency`, `fanout`, `hot`, `idle`, `soak`: the benchmarks of issue 9
//!   (`docs/benchmarks.md`);
//! - `flood` (issue 14): one WebSocket writing large `update_message` frames as fast as the
//!   socket takes them, while another user submits jobs; the gateway's memory and the other
//!   user's latency;
//! - `deep` (issue 16): throughput and position traffic at growing queue depths, how fast a deep
//!   queue drains with and without its owners' sessions, and stale positions once it stops;
//! - `open` (issue 16): open-loop intake over many HTTP connections, like `wrk` on the POST;
//! - `big` (issue 16): a queue of 100,000: enqueue, memory, snapshot, rebuild after a Redis
//!   loss and after a restart;
//! - `listings` (issue 22): four concurrent maximum listings of large messages; the gateway's
//!   memory against the bytes in flight, and another user's `/healthz` and submit latency.
//!
//! - `models` (issue 25): a mix of models on backends that switch checkpoints slowly: the time
//!   to finish a batch and the switches each backend made (routing, and the layout of models).
//!
//! `common` holds the helpers (tokens, sessions, accounting, REST read-back), `drive` the load
//! shapes (closed and open loop), `perf` the optional `perf record` of the gateway.

mod big;
mod common;
mod deep;
mod drain;
mod drive;
mod fanout;
mod flood;
mod hot;
mod idle;
mod latency;
mod listings;
mod models;
mod open;
mod perf;
mod soak;
mod throughput;

pub use big::big;
pub use deep::deep;
pub use fanout::fanout;
pub use flood::flood;
pub use hot::hot;
pub use idle::idle;
pub use latency::latency;
pub use listings::listings;
pub use models::models;
pub use open::open;
pub use soak::soak;
pub use throughput::throughput;

use crate::Args;
use crate::client::Api;

/// What every scenario gets.
pub struct Ctx {
    /// The gateway.
    pub api: Api,
    /// The simulators behind it that the load generator controls (`POST /sim/config`): all it
    /// started, or `--sim-url`.
    pub sim_urls: Vec<String>,
    /// The gateway's pid, to sample its memory and CPU.
    pub pid: Option<u32>,
    /// The stores' label for the report.
    pub stores: String,
    /// The command line.
    pub args: Args,
    /// Running against a gateway we did not start (clean up what we leave behind).
    pub external: bool,
    /// Other processes whose CPU time is reported (the simulators we started).
    pub others: Vec<(String, u32)>,
    /// Tag that makes user names unique per run.
    pub tag: String,
}

impl Ctx {
    /// The first simulator, which the single-backend scenarios control.
    pub fn sim_url(&self) -> Option<String> {
        self.sim_urls.first().cloned()
    }
}

/// A scenario step's outcome; the error ends the scenario and is reported.
pub type Res<T> = Result<T, String>;
