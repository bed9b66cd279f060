//! The REST routes as warp filters: each resource is its path, one branch per method it takes,
//! and a last branch answering `405` with the `Allow` header for every other method. Handlers
//! never reject: once path and method match, the handler's own answer (or its [`ApiError`]) is
//! final. What no route matched reaches the one [`recover`], which answers in the same JSON
//! error shape as everything else.
//!
//! - [`messages`]: `/api/v1/messages…` and the dev token;
//! - [`models`]: `/api/v1/models`, what the backends offer;
//! - [`ops`]: the page, the contract documents, images, health, metrics and status;
//! - [`extract`]: what handlers take from a request.

mod extract;
mod messages;
mod models;
mod ops;

pub use ops::ASYNCAPI_JSON;

use super::{HttpState, error_response};
use crate::domain::catalogue::{ApiError, BadJson};
use std::convert::Infallible;
use std::sync::Arc;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Every route of the gateway but the WebSocket upgrade (see [`super::server`]).
pub fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    ops::routes(state.clone())
        .or(messages::routes(state.clone()))
        .unify()
        .or(models::routes(state))
        .unify()
        .recover(recover)
        .unify()
}

/// A route's refusal that must reach [`recover`] (only `405` today).
#[derive(Debug)]
struct Refused(ApiError);

impl warp::reject::Reject for Refused {}

/// Turns what no route answered into an error answer: `405` from a resource's last branch,
/// `404` when no path matched.
async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let err = if let Some(Refused(err)) = rejection.find::<Refused>() {
        err.clone()
    } else if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else {
        tracing::debug!(?rejection, "request rejected");
        ApiError::InvalidJson(BadJson::UnreadableRequest)
    };
    Ok(error_response(&err))
}

/// GET, and HEAD answered the same way (hyper sends no body for HEAD).
fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// The last branch of a resource: any other method is refused with `allow` named.
fn other_methods(allow: &'static str) -> BoxedFilter<(Response,)> {
    warp::any()
        .and_then(move || async move {
            Err::<Response, _>(warp::reject::custom(Refused(ApiError::MethodNotAllowed {
                allow,
            })))
        })
        .boxed()
}

/// A handler's result as the answer.
fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|err| error_response(&err))
}
