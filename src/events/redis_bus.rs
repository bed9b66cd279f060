//! The Redis event bus (production). Being written.
