//! The HTTP edge (warp): REST, images, health, metrics and the WebSocket.
//!
//! [`routes`] holds the REST routes as warp filters; [`server`] serves them behind its own
//! accept loop (connection caps and deadlines from [`conn`]) and completes a WebSocket upgrade
//! of `/ws` itself ([`ws`], which also hosts the socket's session actor). Handlers talk to the
//! gateway through its use cases.

pub mod asyncapi;
pub mod auth;
pub mod conn;
pub mod image;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod ws;

pub use routes::routes;

use crate::domain::catalogue::{ApiError, ErrorBody};
use crate::events::SessionRegistry;
use crate::gateway::Gateway;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use actix::ArbiterHandle;
use auth::Auth;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `HTTP_HEADER_TIMEOUT`.
    pub header_timeout: std::time::Duration,
    /// `HTTP_BODY_TIMEOUT`.
    pub body_timeout: std::time::Duration,
    /// `HTTP_IDLE_TIMEOUT`.
    pub idle_timeout: std::time::Duration,
    /// `HTTP_WRITE_TIMEOUT`.
    pub write_timeout: std::time::Duration,
    /// `MAX_CONNECTIONS_PER_ADDRESS`.
    pub max_connections_per_address: usize,
}

/// What the HTTP edge is built from.
pub struct HttpParts {
    /// The use cases.
    pub gateway: Gateway,
    /// Token checks.
    pub auth: Auth,
    /// Image files.
    pub images: ImageStore,
    /// Who is connected here.
    pub registry: SessionRegistry,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Arbiters the session actors are spread over.
    pub arbiters: Vec<ArbiterHandle>,
    /// The WebSocket settings.
    pub ws: ws::WsSettings,
    /// `WS_COMMANDS_PER_SECOND`.
    pub ws_commands_per_second: u32,
    /// The HTTP limits.
    pub limits: HttpLimits,
    /// Whether the dev token endpoint is on.
    pub dev_mode: bool,
}

/// What the handlers share.
pub struct HttpState {
    /// The use cases.
    pub gateway: Gateway,
    /// Token checks.
    pub auth: Auth,
    /// Image files.
    pub images: ImageStore,
    /// Who is connected here.
    pub registry: SessionRegistry,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Arbiters the session actors are spread over (the socket's actor lives with its socket
    /// here, in the HTTP layer).
    pub arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    /// The WebSocket settings.
    pub ws: ws::WsSettings,
    /// Each user's command rate.
    pub ws_rate: Arc<ws::rate::CommandRate>,
    /// The HTTP limits.
    pub limits: HttpLimits,
    /// Whether the dev token endpoint is on.
    pub dev_mode: bool,
    /// False once shutdown began: new WebSockets are refused.
    pub accepting: AtomicBool,
}

impl HttpState {
    /// Shared state for the routes.
    pub fn new(parts: HttpParts) -> Arc<HttpState> {
        Arc::new(HttpState {
            gateway: parts.gateway,
            auth: parts.auth,
            images: parts.images,
            registry: parts.registry,
            metrics: parts.metrics,
            arbiters: parts.arbiters,
            next_arbiter: AtomicUsize::new(0),
            ws: parts.ws,
            ws_rate: Arc::new(ws::rate::CommandRate::new(parts.ws_commands_per_second)),
            limits: parts.limits,
            dev_mode: parts.dev_mode,
            accepting: AtomicBool::new(true),
        })
    }

    /// The next arbiter, round robin.
    pub fn next_arbiter(&self) -> Option<&ArbiterHandle> {
        if self.arbiters.is_empty() {
            return None;
        }
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        self.arbiters.get(index)
    }
}

/// `{"error": {"code", "message", "field"}}` with the error's status.
pub fn error_response(err: &ApiError) -> Response {
    let body = ErrorBody::from(err);
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if let ApiError::MethodNotAllowed { allow } = err {
        response
            .headers_mut()
            .insert("allow", warp::http::HeaderValue::from_static(allow));
    }
    if matches!(
        err,
        ApiError::PayloadTooLarge { .. } | ApiError::RequestTimeout { .. }
    ) {
        // The body was not read to its end: this connection cannot carry another request.
        response
            .headers_mut()
            .insert("connection", warp::http::HeaderValue::from_static("close"));
    }
    if matches!(
        err,
        ApiError::RateLimited { .. } | ApiError::TooManySessions { .. }
    ) {
        response
            .headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from_static("1"));
    }
    if matches!(err, ApiError::Unauthorized { .. }) {
        response.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// A JSON answer.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A JSON answer of about `size` bytes, serialized into a buffer of that size (a large listing
/// is not grown by doubling, which held up to twice its size at once).
pub fn json_response_sized<T: serde::Serialize>(
    status: StatusCode,
    body: &T,
    size: usize,
) -> Response {
    let mut out = Vec::with_capacity(size);
    if serde_json::to_writer(&mut out, body).is_err() {
        return error_response(&ApiError::Internal);
    }
    let mut response = Response::new(out.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Fails when the committed contract document `file` (under `assets/`) is not `generated`;
/// with `UPDATE_CONTRACTS=1` writes it first (`cargo test --lib contracts`).
#[cfg(test)]
pub(crate) fn check_committed_contract(file: &str, generated: &str) {
    let path = format!("{}/assets/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_CONTRACTS").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "assets/{file} differs from what the code generates: run \
         `UPDATE_CONTRACTS=1 cargo test --lib contracts` and commit it"
    );
}
