//! Everything but the messages: the bundled page and client module, the contract documents,
//! images, health and readiness, and the admin routes (metrics, status).

use super::extract;
use super::{answer, get_or_head, other_methods};
use crate::domain::catalogue::{ApiError, ErrorDetail, Invalid};
use crate::domain::status::JobStatus;
use crate::http::{HttpState, json_response};
use serde_json::json;
use std::sync::Arc;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

/// The page served at `/`.
const INDEX_HTML: &str = include_str!("../../../assets/index.html");
/// The browser client module (`docs/api.md`, "The browser client").
const CLIENT_JS: &str = include_str!("../../../assets/client.js");
/// The AsyncAPI 3 document of the WebSocket.
pub const ASYNCAPI_JSON: &str = include_str!("../../../assets/asyncapi.json");

/// The routes of this module; every one takes GET and HEAD only.
pub fn routes(state: Arc<HttpState>) -> BoxedFilter<(Response,)> {
    let with = extract::state(state);
    let page = resource(warp::path::end().boxed(), || {
        warp::any()
            .map(|| static_file(INDEX_HTML, "text/html; charset=utf-8"))
            .boxed()
    });
    let healthz = resource(warp::path!("healthz").boxed(), || {
        warp::any()
            .map(|| json_response(StatusCode::OK, &json!({"status": "ok"})))
            .boxed()
    });
    let readyz = resource(warp::path!("readyz").boxed(), || {
        with.clone().then(readiness).boxed()
    });
    let client = resource(warp::path!("client.js").boxed(), || {
        warp::any()
            .map(|| static_file(CLIENT_JS, "text/javascript; charset=utf-8"))
            .boxed()
    });
    let asyncapi = resource(warp::path!("asyncapi.json").boxed(), || {
        warp::any()
            .map(|| static_file(ASYNCAPI_JSON, "application/json"))
            .boxed()
    });
    let openapi = resource(warp::path!("openapi.json").boxed(), || {
        with.clone()
            .map(|state: Arc<HttpState>| {
                let mut response = crate::http::openapi::document(state.dev_mode).into_response();
                response
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                response
            })
            .boxed()
    });
    // A WebSocket upgrade never gets here (the server completes it below warp).
    let ws = resource(warp::path!("ws").boxed(), || {
        warp::any()
            .map(|| answer(Err(ApiError::invalid("Upgrade", Invalid::NotWebSocket))))
            .boxed()
    });
    let metrics = resource(warp::path!("admin" / "metrics").boxed(), || {
        with.clone()
            .and(extract::authorization())
            .then(metrics)
            .map(answer)
            .boxed()
    });
    let status = resource(warp::path!("admin" / "status").boxed(), || {
        with.clone()
            .and(extract::authorization())
            .then(status)
            .map(answer)
            .boxed()
    });
    // A GET or HEAD of an image never gets here (the server streams it from its file below
    // warp, `http/image.rs`): only the other methods are answered here.
    let images = warp::path!("images" / String)
        .map(|_| ())
        .untuple_one()
        .and(other_methods("GET, HEAD"))
        .boxed();
    [
        page, healthz, readyz, client, asyncapi, openapi, ws, metrics, status, images,
    ]
    .into_iter()
    .reduce(|all, one| all.or(one).unify().boxed())
    .expect("at least one route")
}

/// A GET/HEAD resource at `path`: the path first, then the method, so that another method on
/// a known path answers 405 and an unknown path 404.
fn resource(
    path: BoxedFilter<()>,
    handler: impl FnOnce() -> BoxedFilter<(Response,)>,
) -> BoxedFilter<(Response,)> {
    path.clone()
        .and(get_or_head())
        .and(handler())
        .or(path.and(other_methods("GET, HEAD")))
        .unify()
        .boxed()
}

/// Public readiness: ok or not per dependency, never why (the log and `/admin/status` say).
async fn readiness(state: Arc<HttpState>) -> Response {
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
        &json!({"status": "unavailable", "checks": checks, "error": ErrorDetail::from(&err)}),
    )
}

/// `GET /admin/status`: readiness with the reasons, breakers and sessions of this process.
async fn status(
    state: Arc<HttpState>,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    admin(&state, authorization)?;
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
fn admin(state: &HttpState, authorization: Option<String>) -> Result<(), ApiError> {
    if state.auth.is_admin(authorization.as_deref()) {
        Ok(())
    } else if authorization.is_some() {
        Err(ApiError::Forbidden)
    } else {
        Err(ApiError::Unauthorized { expired: false })
    }
}

/// `GET /admin/metrics`: the counters, with the gauges read from the stores at the scrape.
async fn metrics(
    state: Arc<HttpState>,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    admin(&state, authorization)?;
    state
        .metrics
        .store_unreadable_data_reads
        .set(state.gateway.db().unreadable_data_reads() as i64);
    if let Ok(counts) = state.gateway.db().count_pending_by_status().await {
        for status in JobStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
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

/// A file bundled into the binary. Never reused without asking: the page and the client module
/// must come from the same build, or a cached old client would run inside a new page.
fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}
