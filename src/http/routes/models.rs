//! `/api/v1/models`: the checkpoints and samplers the backends offer.

use super::{answer, extract, get_or_head, other_methods};
use crate::domain::catalogue::ApiError;
use crate::http::{HttpState, json_response};
use std::sync::Arc;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

/// `GET /api/v1/models`.
pub fn routes(state: Arc<HttpState>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "models")
        .and(
            get_or_head()
                .and(extract::state(state))
                .and(extract::authorization())
                .then(list)
                .map(answer)
                .or(other_methods("GET, HEAD"))
                .unify(),
        )
        .boxed()
}

/// The listing, to any signed-in user.
async fn list(state: Arc<HttpState>, authorization: Option<String>) -> Result<Response, ApiError> {
    state.auth.user_of_header(authorization.as_deref())?;
    Ok(json_response(StatusCode::OK, &state.gateway.models()))
}
