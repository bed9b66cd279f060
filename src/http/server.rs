//! The HTTP server: warp's routes behind our own accept loop.
//!
//! Every request goes to `warp::service(routes)` except a WebSocket upgrade of `/ws`, which
//! [`super::ws`] completes itself. The reason is memory: warp's `Ws` filter cannot set
//! tungstenite's buffer sizes, and tungstenite's default read buffer is 128 KiB per socket,
//! zero-filled on the first read: 10,000 idle sessions would hold 1.3 GiB. The loop is the
//! one `warp::serve` runs (hyper-util's auto builder with upgrades), plus graceful shutdown.

use super::HttpState;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tower_service::Service;
use warp::Filter;
use warp::reply::Response;

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
    let builder = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
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
        let service = service.clone();
        let state = state.clone();
        let handler = service_fn(move |request: hyper::Request<Incoming>| {
            let mut service = service.clone();
            let state = state.clone();
            async move {
                if super::ws::is_upgrade(&request) {
                    Ok::<_, Infallible>(super::ws::upgrade(request, state))
                } else {
                    service.call(request).await
                }
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), handler);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
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
