//! `/api/v1/messages…` (create, list, read, patch, cancel, retry) and `/api/v1/dev/token`.

use super::extract::{self, Body, MessageKey};
use super::{answer, get_or_head, other_methods};
use crate::db::ListFilter;
use crate::domain::catalogue::{ApiError, BadJson, Invalid};
use crate::domain::merge;
use crate::domain::params::{CreateRequest, data_error};
use crate::domain::status::JobStatus;
use crate::http::openapi::MessageList;
use crate::http::{HttpState, json_response, json_response_sized};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

/// Newest-first page size of a listing, by default and at most.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 200;
/// Longest dev-mode user name.
const MAX_USER_CHARS: usize = 64;

/// The message routes (and the dev token route in dev mode).
pub fn routes(state: Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let messages = collection(&state)
        .or(one(&state))
        .unify()
        .or(cancel(&state))
        .unify()
        .or(retry(&state))
        .unify();
    if !state.dev_mode {
        return messages.boxed();
    }
    messages.or(dev_token_route(&state)).unify().boxed()
}

/// `GET` (list) and `POST` (create) of `/api/v1/messages`.
fn collection(state: &Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let with = extract::state(state.clone());
    let auth = extract::authorization;
    warp::path!("api" / "v1" / "messages")
        .and(
            get_or_head()
                .and(with.clone())
                .and(auth())
                .and(extract::query())
                .then(list)
                .map(answer)
                .or(warp::post()
                    .and(with)
                    .and(auth())
                    .and(extract::idempotency_key())
                    .and(extract::body(state.limits.body_timeout))
                    .then(create)
                    .map(answer))
                .unify()
                .or(other_methods("GET, HEAD, POST"))
                .unify(),
        )
        .boxed()
}

/// `GET` and `PATCH` of `/api/v1/messages/{id}`.
fn one(state: &Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let with = extract::state(state.clone());
    let auth = extract::authorization;
    let one = || warp::path!("api" / "v1" / "messages" / MessageKey);
    one()
        .and(get_or_head())
        .and(with.clone())
        .and(auth())
        .then(get)
        .map(answer)
        .or(one()
            .and(warp::patch())
            .and(with)
            .and(auth())
            .and(extract::body(state.limits.body_timeout))
            .then(patch)
            .map(answer))
        .unify()
        .or(ignore(one()).and(other_methods("GET, HEAD, PATCH")))
        .unify()
        .boxed()
}

/// `POST /api/v1/messages/{id}/cancel`.
fn cancel(state: &Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let cancel = || warp::path!("api" / "v1" / "messages" / MessageKey / "cancel");
    cancel()
        .and(warp::post())
        .and(extract::state(state.clone()))
        .and(extract::authorization())
        .then(cancel_message)
        .map(answer)
        .or(ignore(cancel()).and(other_methods("POST")))
        .unify()
        .boxed()
}

/// `POST /api/v1/messages/{id}/retry`.
fn retry(state: &Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let retry = || warp::path!("api" / "v1" / "messages" / MessageKey / "retry");
    retry()
        .and(warp::post())
        .and(extract::state(state.clone()))
        .and(extract::authorization())
        .and(extract::idempotency_key())
        .and(extract::body(state.limits.body_timeout))
        .then(retry_message)
        .map(answer)
        .or(ignore(retry()).and(other_methods("POST")))
        .unify()
        .boxed()
}

/// `POST /api/v1/dev/token` (dev mode only).
fn dev_token_route(state: &Arc<HttpState>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "dev" / "token")
        .and(
            warp::post()
                .and(extract::state(state.clone()))
                .and(extract::body(state.limits.body_timeout))
                .then(dev_token)
                .map(answer)
                .or(other_methods("POST"))
                .unify(),
        )
        .boxed()
}

/// A path that extracts a message key, for a branch that does not need it.
fn ignore(
    path: impl Filter<Extract = (MessageKey,), Error = warp::Rejection> + Clone,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    path.map(|_| ()).untuple_one()
}

fn user(state: &HttpState, authorization: Option<String>) -> Result<String, ApiError> {
    state.auth.user_of_header(authorization.as_deref())
}

async fn create(
    state: Arc<HttpState>,
    authorization: Option<String>,
    key: Result<Option<String>, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let request = CreateRequest::from_json(&body.json().await?)?;
    let view = state.gateway.submit(&user, request, key?, None).await?;
    Ok(json_response(StatusCode::ACCEPTED, &view))
}

async fn list(
    state: Arc<HttpState>,
    authorization: Option<String>,
    query: String,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let filter = list_filter(&query)?;
    let page = state.gateway.list(&user, &filter).await?;
    let size = page.bytes + 64;
    Ok(json_response_sized(
        StatusCode::OK,
        &MessageList {
            messages: page.views,
            next: page.next,
        },
        size,
    ))
}

async fn get(
    key: MessageKey,
    state: Arc<HttpState>,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let view = state.gateway.get(&user, key.id()?).await?;
    Ok(json_response(StatusCode::OK, &view))
}

async fn patch(
    key: MessageKey,
    state: Arc<HttpState>,
    authorization: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let id = key.id()?;
    let body = body.json().await?;
    let Some(object) = body.as_object() else {
        return Err(ApiError::InvalidJson(BadJson::NotAnObject));
    };
    let patch =
        merge::client_patch_from_body(object, &[]).map_err(|err| data_error("data", &err))?;
    let view = state.gateway.patch(&user, id, patch).await?;
    Ok(json_response(StatusCode::OK, &view))
}

async fn cancel_message(
    key: MessageKey,
    state: Arc<HttpState>,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let view = state.gateway.cancel(&user, key.id()?).await?;
    Ok(json_response(StatusCode::OK, &view))
}

async fn retry_message(
    key: MessageKey,
    state: Arc<HttpState>,
    authorization: Option<String>,
    idempotency_key: Result<Option<String>, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let user = user(&state, authorization)?;
    let id = key.id()?;
    let idempotency_key = idempotency_key?;
    let reuse_seed = match retry_options(body).await {
        Ok(reuse_seed) => reuse_seed,
        Err(err) => {
            // Someone else's message is not found, whatever its options say.
            state.gateway.get(&user, id).await?;
            return Err(err);
        }
    };
    let view = state
        .gateway
        .retry(&user, id, idempotency_key, reuse_seed)
        .await?;
    Ok(json_response(StatusCode::ACCEPTED, &view))
}

/// The optional body of a retry: `{"reuse_seed": true}` asks for the seed Forge used.
async fn retry_options(body: Body) -> Result<bool, ApiError> {
    if body.is_empty() {
        return Ok(false);
    }
    let body = body.json().await?;
    let Some(options) = body.as_object() else {
        return Err(ApiError::InvalidJson(BadJson::NotAnObject));
    };
    if let Some(unknown) = options.keys().find(|key| *key != "reuse_seed") {
        return Err(ApiError::invalid(unknown.as_str(), Invalid::UnknownField));
    }
    match options.get("reuse_seed") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(reuse)) => Ok(*reuse),
        Some(_) => Err(ApiError::invalid("reuse_seed", Invalid::NotBoolean)),
    }
}

fn list_filter(query: &str) -> Result<ListFilter, ApiError> {
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "status" => {
                for name in value.split(',') {
                    match name {
                        "pending" => filter
                            .statuses
                            .extend([JobStatus::Queued, JobStatus::Processing]),
                        other => filter.statuses.push(other.parse().map_err(|_| {
                            ApiError::invalid(
                                "status",
                                Invalid::OneOf {
                                    choices: "pending, queued, processing, complete, error, cancelled",
                                },
                            )
                        })?),
                    }
                }
            }
            "conversation_id" => {
                if value.is_empty() || value.chars().count() > 255 || value.contains('\0') {
                    return Err(ApiError::invalid(
                        "conversation_id",
                        Invalid::Chars { min: 1, max: 255 },
                    ));
                }
                filter.conversation_id = Some(value.into_owned());
            }
            "limit" => {
                filter.limit = value
                    .parse::<u64>()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            Invalid::Integer {
                                min: 1,
                                max: MAX_LIMIT as i64,
                            },
                        )
                    })?;
            }
            "before" => {
                filter.before = Some(
                    Uuid::try_parse(&value)
                        .map_err(|_| ApiError::invalid("before", Invalid::NotMessageId))?,
                );
            }
            _ => {}
        }
    }
    Ok(filter)
}

async fn dev_token(state: Arc<HttpState>, body: Body) -> Result<Response, ApiError> {
    let body = body.json().await?;
    if let Some(unknown) = body
        .as_object()
        .and_then(|object| object.keys().find(|key| *key != "user"))
    {
        return Err(ApiError::invalid(unknown.as_str(), Invalid::UnknownField));
    }
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|user| {
            user.chars().count() <= MAX_USER_CHARS && crate::http::auth::valid_user(user)
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "user",
                Invalid::UserName {
                    max: MAX_USER_CHARS,
                },
            )
        })?;
    let (token, expires_at) = state
        .auth
        .issue(user, crate::http::auth::DEV_TOKEN_LIFETIME)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"token": token, "user": user, "expires_at": expires_at}),
    ))
}
