//! The Redis queue store (production). Being written.
