//! The HTTP server: warp's routes behind our own accept loop.
//!
//! Every request goes to `warp::service(routes)` except a WebSocket upgrade of `/ws`, which
//! [`super::ws`] completes itself, and a GET of `/images/…`, which [`super::image`] streams
//! from its file. The reason is memory: warp's `Ws` filter cannot set
//! tungstenite's buffer sizes, and tungstenite's default read buffer is 128 KiB per socket,
//! zero-filled on the first read: 10,000 idle sessions would hold 1.3 GiB. The loop is the
//! one `warp::serve` runs (hyper-util's auto builder with upgrades), plus what a public server
//! needs: at most `MAX_CONNECTIONS` connections, and `MAX_CONNECTIONS_PER_ADDRESS` from one
//! peer address (more are answered 503 and closed at once), head, idle and write deadlines on
//! every connection ([`super::conn`]), and graceful shutdown.

use super::conn::{AddressCap, ConnLimits, ConnState, GuardedIo, Permits};
use super::{HttpState, image};
use crate::domain::catalogue::{ApiError, ErrorBody};
use crate::metrics::ReasonLabel;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::Filter;
use warp::reply::Response;

/// Requests one HTTP/2 connection may have in flight at once.
const H2_MAX_STREAMS: u32 = 32;

/// Serves `routes` (and `/ws`) on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `grace`.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    routes: F,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = warp::service(routes);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(H2_MAX_STREAMS);
    let connections = Arc::new(Semaphore::new(state.limits.max_connections));
    let limits = ConnLimits {
        header: state.limits.header_timeout,
        idle: state.limits.idle_timeout,
        write: state.limits.write_timeout,
    };
    let per_address = AddressCap::new(state.limits.max_connections_per_address);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Some(permits) = admit(&stream, peer, &connections, &per_address, &state) else {
            continue;
        };
        let conn = ConnState::new(limits);
        let io = GuardedIo::new(stream, conn.clone(), permits);
        let handler = handler(service.clone(), state.clone(), conn.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), handler);
        let connection = graceful.watch(connection.into_owned());
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                match conn.cut() {
                    Some(cut) => {
                        let reason = cut.label();
                        metrics
                            .http_connections_cut
                            .get_or_create(&ReasonLabel::of(reason))
                            .inc();
                        tracing::debug!(reason, "closed a connection at its deadline");
                    }
                    None => tracing::debug!(error = %err, "connection ended with an error"),
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections outlived the grace period");
    }
}

/// The permits a new connection needs (`MAX_CONNECTIONS`, its address's share), or `None`
/// when it was refused (answered 503 and counted).
fn admit(
    stream: &tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    connections: &Arc<Semaphore>,
    per_address: &Arc<AddressCap>,
    state: &HttpState,
) -> Option<Permits> {
    let refused = |reason: &str| {
        state
            .metrics
            .http_connections_cut
            .get_or_create(&ReasonLabel::of(reason))
            .inc();
        refuse(stream);
    };
    let Ok(permit) = connections.clone().try_acquire_owned() else {
        refused("max_connections");
        return None;
    };
    let Some(share) = per_address.admit(peer.ip()) else {
        refused("max_connections_per_address");
        return None;
    };
    Some((permit, Some(share)))
}

/// A connection's requests: a WebSocket upgrade of `/ws` and images are served here, the
/// rest by warp; each marks the connection busy while it is served.
fn handler<S>(
    service: S,
    state: Arc<HttpState>,
    conn: Arc<ConnState>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<image::ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<image::ResponseBody>, Infallible>> + Send,
> + Clone
where
    S: Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    service_fn(move |request: hyper::Request<Incoming>| {
        let mut service = service.clone();
        let (state, conn) = (state.clone(), conn.clone());
        async move {
            let _serving = conn.serving();
            if super::ws::is_upgrade(&request) {
                let response = super::ws::upgrade(request, state).await;
                if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                    conn.upgraded();
                }
                Ok::<_, Infallible>(image::boxed(response))
            } else if image::is_image(&request) {
                Ok(image::serve(request, state).await)
            } else {
                service.call(request).await.map(image::boxed)
            }
        }
    })
}

/// Answers a connection over `MAX_CONNECTIONS` with a 503 it can read, without reading its
/// request, and closes it.
fn refuse(stream: &tokio::net::TcpStream) {
    let err = ApiError::TooManyConnections;
    let body = serde_json::to_string(&ErrorBody::from(&err)).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort: the socket's buffer takes a few hundred bytes at once, or the client
    // misses the reason but is refused anyway.
    let _ = stream.try_write(answer.as_bytes());
}
