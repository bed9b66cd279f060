//! The REST routes of API.md, with validation of every input and one error shape.

use super::{HttpState, MAX_BODY_BYTES, error_response, json_response};
use crate::db::ListFilter;
use crate::domain::catalogue::ApiError;
use crate::domain::merge;
use crate::domain::params::{CreateRequest, data_error};
use crate::domain::status::JobStatus;
use bytes::Buf;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};

/// Newest-first page size of a listing, by default and at most.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 200;

/// The page served at `/`.
const INDEX_HTML: &str = include_str!("../../assets/index.html");
/// The browser client module (`docs/api.md`, "The browser client").
const CLIENT_JS: &str = include_str!("../../assets/client.js");
/// The AsyncAPI 3 document of the WebSocket.
pub const ASYNCAPI_JSON: &str = include_str!("../../assets/asyncapi.json");

/// Answers one request.
pub async fn route<S, B>(
    method: Method,
    path: FullPath,
    query: String,
    headers: HeaderMap,
    body: S,
    state: Arc<HttpState>,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    match dispatch(&method, path.as_str(), &query, &headers, body, &state).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

async fn dispatch<S, B>(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: S,
    state: &HttpState,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = *method == Method::GET || *method == Method::HEAD;
    let post = *method == Method::POST;
    match segments.as_slice() {
        [""] if get => Ok(warp::reply::html(INDEX_HTML).into_response()),
        ["healthz"] if get => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ["readyz"] if get => Ok(readiness(state).await),
        ["client.js"] if get => Ok(static_file(CLIENT_JS, "text/javascript; charset=utf-8")),
        ["asyncapi.json"] if get => Ok(static_file(ASYNCAPI_JSON, "application/json")),
        ["openapi.json"] if get => {
            let mut response = super::openapi::document(state.dev_mode).into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            Ok(response)
        }
        ["ws"] if get => Err(ApiError::validation(
            "Upgrade",
            "Bu adres bir WebSocket bağlantısı bekliyor (Upgrade: websocket).",
        )),
        ["images", file] if get => match state.images.read(file).await {
            Some(png) => Ok(png_response(png)),
            None => Err(ApiError::NotFound),
        },
        ["admin", "metrics"] if get => metrics(headers, state).await,
        ["admin", "status"] if get => status(headers, state).await,
        ["api", "v1", "dev", "token"] if state.dev_mode && post => {
            dev_token(body, headers, state).await
        }
        ["api", "v1", "messages"] if post => {
            let user = user(headers, state)?;
            let body = read_json(body, headers, state.limits.body_timeout).await?;
            let request = CreateRequest::from_json(&body)?;
            let key = idempotency_key(headers)?;
            let view = state.gateway.submit(&user, request, key, None).await?;
            Ok(json_response(StatusCode::ACCEPTED, &view))
        }
        ["api", "v1", "messages"] if get => {
            let user = user(headers, state)?;
            let filter = list_filter(query)?;
            let messages = state.gateway.list(&user, &filter).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"messages": messages}),
            ))
        }
        ["api", "v1", "messages", id] if get => {
            let user = user(headers, state)?;
            let view = state.gateway.get(&user, message_id(id)?).await?;
            Ok(json_response(StatusCode::OK, &view))
        }
        ["api", "v1", "messages", id] if *method == Method::PATCH => {
            let user = user(headers, state)?;
            let id = message_id(id)?;
            let body = read_json(body, headers, state.limits.body_timeout).await?;
            let Some(object) = body.as_object() else {
                return Err(ApiError::InvalidJson {
                    message: "İstek gövdesi bir JSON nesnesi olmalıdır.".into(),
                });
            };
            let patch = merge::client_patch_from_body(object, &[])
                .map_err(|err| data_error("data", &err))?;
            let view = state.gateway.patch(&user, id, patch).await?;
            Ok(json_response(StatusCode::OK, &view))
        }
        ["api", "v1", "messages", id, "cancel"] if post => {
            let user = user(headers, state)?;
            let view = state.gateway.cancel(&user, message_id(id)?).await?;
            Ok(json_response(StatusCode::OK, &view))
        }
        ["api", "v1", "messages", id, "retry"] if post => {
            let user = user(headers, state)?;
            let key = idempotency_key(headers)?;
            let reuse_seed = retry_options(body, headers, state.limits.body_timeout).await;
            let view = state
                .gateway
                .retry(&user, message_id(id)?, key, reuse_seed)
                .await?;
            Ok(json_response(StatusCode::ACCEPTED, &view))
        }
        _ => match allowed_methods(&segments, state.dev_mode) {
            Some(allow) => Err(ApiError::MethodNotAllowed { allow }),
            None => Err(ApiError::RouteNotFound),
        },
    }
}

/// The methods a known route takes (for `405` and its `Allow` header); `None` for unknown routes.
fn allowed_methods(segments: &[&str], dev_mode: bool) -> Option<&'static str> {
    match segments {
        [""]
        | ["healthz"]
        | ["readyz"]
        | ["openapi.json"]
        | ["asyncapi.json"]
        | ["client.js"]
        | ["ws"]
        | ["images", _]
        | ["admin", "metrics"]
        | ["admin", "status"] => Some("GET, HEAD"),
        ["api", "v1", "dev", "token"] if dev_mode => Some("POST"),
        ["api", "v1", "messages"] => Some("GET, HEAD, POST"),
        ["api", "v1", "messages", _] => Some("GET, HEAD, PATCH"),
        ["api", "v1", "messages", _, "cancel" | "retry"] => Some("POST"),
        _ => None,
    }
}

fn user(headers: &HeaderMap, state: &HttpState) -> Result<String, ApiError> {
    let header = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    state.auth.user_of_header(header)
}

fn message_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text).map_err(|_| ApiError::NotFound)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    // Visible ASCII only, as documented: a key is an opaque token, not text.
    if key.is_empty()
        || key.len() > crate::gateway::MAX_IDEMPOTENCY_KEY
        || !key.iter().all(|byte| (0x21..=0x7e).contains(byte))
    {
        return Err(ApiError::validation(
            "Idempotency-Key",
            "Idempotency-Key 1 ile 255 arasında görünür ASCII karakterden oluşmalıdır.",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// Reads the body up to the size limit, within `timeout`, and parses it as JSON.
async fn read_json<S, B>(
    body: S,
    headers: &HeaderMap,
    timeout: std::time::Duration,
) -> Result<Value, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    match tokio::time::timeout(timeout, read_body(body, headers)).await {
        Ok(read) => Ok(crate::domain::client_json::parse(&read?)?),
        Err(_) => Err(ApiError::RequestTimeout {
            seconds: timeout.as_secs_f64().ceil() as u64,
        }),
    }
}

/// Reads the body up to the size limit.
async fn read_body<S, B>(mut body: S, headers: &HeaderMap) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let declared = headers
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| ApiError::InvalidJson {
            message: "İstek gövdesi okunamadı.".into(),
        })?;
        if bytes.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            bytes.extend_from_slice(piece);
            let taken = piece.len();
            chunk.advance(taken);
        }
    }
    Ok(bytes)
}

/// The optional body of a retry: `{"reuse_seed": true}` asks for the seed Forge used.
async fn retry_options<S, B>(
    body: S,
    headers: &HeaderMap,
    timeout: std::time::Duration,
) -> Result<bool, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let empty = headers
        .get("content-length")
        .is_none_or(|length| length.as_bytes() == b"0");
    if empty && headers.get("transfer-encoding").is_none() {
        return Ok(false);
    }
    let body = read_json(body, headers, timeout).await?;
    let Some(options) = body.as_object() else {
        return Err(ApiError::InvalidJson {
            message: "İstek gövdesi bir JSON nesnesi olmalıdır.".into(),
        });
    };
    if let Some(unknown) = options.keys().find(|key| *key != "reuse_seed") {
        return Err(ApiError::validation(
            unknown.as_str(),
            format!("Bilinmeyen alan: '{unknown}'."),
        ));
    }
    match options.get("reuse_seed") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(reuse)) => Ok(*reuse),
        Some(_) => Err(ApiError::validation(
            "reuse_seed",
            "reuse_seed true ya da false olmalıdır.",
        )),
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
                        "pending" => filter.statuses.extend([JobStatus::Queued, JobStatus::Processing]),
                        other => filter.statuses.push(other.parse().map_err(|_| {
                            ApiError::validation("status", "status şunlardan biri olmalıdır: pending, queued, processing, complete, error, cancelled.")
                        })?),
                    }
                }
            }
            "conversation_id" => {
                if value.is_empty() || value.chars().count() > 255 || value.contains('\0') {
                    return Err(ApiError::validation(
                        "conversation_id",
                        "conversation_id 1 ile 255 karakter arasında olmalıdır.",
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
                        ApiError::validation(
                            "limit",
                            format!("limit 1 ile {MAX_LIMIT} arasında bir tam sayı olmalıdır."),
                        )
                    })?;
            }
            "before" => {
                filter.before = Some(Uuid::try_parse(&value).map_err(|_| {
                    ApiError::validation("before", "before bir mesaj kimliği (UUID) olmalıdır.")
                })?);
            }
            _ => {}
        }
    }
    Ok(filter)
}

/// Public readiness: ok or not per dependency, never why (the log and `/admin/status` say).
async fn readiness(state: &HttpState) -> Response {
    let readiness = state.gateway.readiness().await;
    let check = |result: &Result<(), String>| if result.is_ok() { "ok" } else { "unavailable" };
    let checks = json!({"database": check(&readiness.database), "queue": check(&readiness.queue)});
    if readiness.is_ready() {
        return json_response(
            StatusCode::OK,
            &json!({"status": "ready", "checks": checks}),
        );
    }
    for (dependency, result) in [
        ("database", &readiness.database),
        ("queue", &readiness.queue),
    ] {
        if let Err(detail) = result {
            tracing::warn!(dependency, %detail, "not ready");
        }
    }
    let err = ApiError::Unavailable;
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unavailable", "checks": checks,
                "error": {"code": err.code(), "message": err.message(), "field": null}}),
    )
}

/// `GET /admin/status`: readiness with the reasons, breakers and sessions of this process.
async fn status(headers: &HeaderMap, state: &HttpState) -> Result<Response, ApiError> {
    admin(headers, state)?;
    let readiness = state.gateway.readiness().await;
    let detail = |result: &Result<(), String>| match result {
        Ok(()) => json!({"ok": true}),
        Err(detail) => json!({"ok": false, "detail": detail}),
    };
    let (sessions, users) = state.registry.count().await;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "ready": readiness.is_ready(),
            "database": detail(&readiness.database),
            "queue": detail(&readiness.queue),
            "sessions": {"open": sessions, "users": users},
        }),
    ))
}

/// Refuses anyone without the admin token.
fn admin(headers: &HeaderMap, state: &HttpState) -> Result<(), ApiError> {
    let header = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    if state.auth.is_admin(header) {
        Ok(())
    } else if header.is_some() {
        Err(ApiError::Forbidden)
    } else {
        Err(ApiError::Unauthorized { expired: false })
    }
}

async fn metrics(headers: &HeaderMap, state: &HttpState) -> Result<Response, ApiError> {
    admin(headers, state)?;
    state
        .metrics
        .store_unreadable_data_reads
        .set(state.gateway.db().unreadable_data_reads() as i64);
    if let Ok(counts) = state.gateway.db().count_by_status().await {
        for status in JobStatus::ALL {
            let count = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, c)| *c);
            state
                .metrics
                .jobs_by_status
                .get_or_create(&crate::metrics::StatusLabel {
                    status: status.as_str().into(),
                })
                .set(count);
        }
    }
    if let Ok(depth) = state.gateway.queue().depth().await {
        state.metrics.queue_depth.set(depth as i64);
    }
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

async fn dev_token<S, B>(
    body: S,
    headers: &HeaderMap,
    state: &HttpState,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let body = read_json(body, headers, state.limits.body_timeout).await?;
    if let Some(unknown) = body
        .as_object()
        .and_then(|object| object.keys().find(|key| *key != "user"))
    {
        return Err(ApiError::validation(
            unknown.as_str(),
            format!("Bilinmeyen alan: '{unknown}'."),
        ));
    }
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|user| user.chars().count() <= 64 && super::auth::valid_user(user))
        .ok_or_else(|| {
            ApiError::validation("user", "user 1 ile 64 karakter arasında bir ad olmalıdır.")
        })?;
    let (token, expires_at) = state.auth.issue(user, super::auth::DEV_TOKEN_LIFETIME)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"token": token, "user": user, "expires_at": expires_at}),
    ))
}

/// A file bundled into the binary, revalidated by its clients after an hour.
fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

fn png_response(png: Vec<u8>) -> Response {
    let mut response = png.into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("image/png"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("private, max-age=3600"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}
