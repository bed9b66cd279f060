//! Pure domain logic: no runtime, no I/O, no warp, sea-orm or fred types.
//!
//! Everything here is unit-tested on its own; the actors and the transport/storage edges call it.

pub mod breaker;
pub mod catalogue;
pub mod change;
pub mod client_json;
pub mod client_refs;
pub mod eta;
pub mod event;
pub mod frames;
pub mod health;
pub mod merge;
pub mod message;
pub mod models;
pub mod outages;
pub mod params;
pub mod position_feed;
pub mod queue_book;
pub mod routing;
pub mod status;
