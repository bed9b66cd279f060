//! The actors that own state: the message store, the queue and one Forge actor per backend.
//! One module each, their messages beside them, and a small typed handle per actor so the use
//! cases above call plain async methods. They use the edges below (database, queue store,
//! event bus, Forge client), never the use cases or the HTTP layer above.

pub mod forge;
pub mod queue;
pub mod store;
