//! What a route decides: the [`Action`] its connection carries out, and the answers several
//! routes share.

use crate::http::Response;
use crate::state::JobSpec;
use serde_json::{Value, json};

/// What the connection must do with a request.
pub(crate) enum Action {
    /// Write this answer.
    Respond(Response),
    /// Hold the generation lock and never answer, until the client leaves.
    Hang(JobSpec),
    /// Reset the connection.
    Reset,
    /// Announce this answer in full, write only its first `sent` body bytes, then close.
    Truncate { response: Response, sent: usize },
}

/// FastAPI's validation error answer.
pub(crate) fn unprocessable(errors: Vec<Value>) -> Response {
    Response::json(422, &json!({ "detail": errors }))
}
