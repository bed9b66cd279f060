//! The error catalogue: every code the gateway shows a user, with its exact Turkish message.
//! No other module writes user-facing text; they name a reason and the catalogue words it.
//!
//! - [`job`]: why a generation failed (stored on the message, sent in `job.error`), quoting the
//!   requirements word for word (R5.1, R9.1–R9.4);
//! - [`api`]: the errors of REST answers and refused WebSocket commands;
//! - [`invalid`]: what is wrong with one field.

pub mod api;
pub mod invalid;
pub mod job;

pub use api::{ApiError, BadJson, ErrorBody, ErrorDetail, StateConflict};
pub use invalid::Invalid;
pub use job::{
    JobError, JobFailure, PLACEHOLDER_NOTICE_CODE, PLACEHOLDER_NOTICE_MESSAGE, seconds_label,
};
