//! sea-orm entities of forge-gateway.
//!
//! The gateway has one table, `messages`: one row per image request, the record of its job.
//! Domain code never sees these types; `forge_gateway::db` converts at the edge.

pub mod messages;
