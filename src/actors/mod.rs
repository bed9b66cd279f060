//! The actors of the design card, one module each, with their messages beside them, and a
//! small typed handle per actor so the HTTP layer never touches actix types.

pub mod forge;
pub mod queue;
pub mod store;
