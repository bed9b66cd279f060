//! The simulator's front: binding, accepting, handing each connection to hyper, and the
//! [`SimServer`] handle that the gateway, the tests and the binary hold.

use crate::SimMode;
use crate::config::SimConfig;
use crate::exchange::Exchange;
use crate::http::{IDLE_TIMEOUT, MAX_HEAD, MAX_HEADERS};
use crate::reset::{ResetSwitch, ResettableStream};
use crate::state::{Shared, SimStats};
use crate::tasks::Tasks;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A running simulator. Dropping it stops it too, but [`shutdown`](Self::shutdown) also waits
/// until every connection is closed.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Tasks,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves on the current tokio runtime.
    pub async fn start(bind: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let tasks = Tasks::default();
        tasks.spawn(accept_loop(listener, shared.clone(), tasks.clone()));
        Ok(SimServer {
            addr,
            shared,
            tasks,
        })
    }

    /// The bound address, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a Forge client. A wildcard bind (0.0.0.0, ::) is reached through
    /// loopback, since the wildcard itself is not an address to connect to.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(host, self.addr.port()))
    }

    /// The current settings.
    pub fn config(&self) -> SimConfig {
        self.shared.config()
    }

    /// Replaces the settings for requests that arrive from now on; requests already running
    /// or queued keep what they started with. A changed seed restarts the random generator.
    pub fn set_config(&self, config: SimConfig) {
        self.shared.set_config(config);
    }

    /// Switches the fault mode of txt2img for requests that arrive from now on.
    pub fn set_mode(&self, mode: SimMode) {
        self.shared.update_config(|config| config.mode = mode);
    }

    /// Counters since start or the last `POST /sim/reset-stats`.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stops accepting, closes every connection (also hung and queued ones) and waits for
    /// their tasks to end. Stopping drops them where they wait, so this does not hang.
    pub async fn shutdown(self) {
        self.tasks.stop_and_wait().await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.tasks.stop();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tasks: Tasks) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tasks.spawn(serve_connection(
                    stream,
                    peer,
                    shared.clone(),
                    tasks.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "forge-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, tasks: Tasks) {
    let reset = ResetSwitch::default();
    let stream = ResettableStream::new(stream, reset.clone());
    let exchange = Exchange {
        shared,
        tasks,
        reset,
    };
    serve_http(stream, peer, exchange).await;
}

/// Runs hyper's HTTP/1 server on one connection until either side ends it.
async fn serve_http<I>(io: I, peer: SocketAddr, exchange: Exchange)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| exchange.clone().serve(request));
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        // Also the idle limit between requests: hyper starts it when it waits for a head.
        .header_read_timeout(IDLE_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(err) = served {
        // Faults, refused requests and clients that leave all end here; none is news.
        tracing::debug!(%peer, %err, "forge-sim connection ended with an error");
    }
}
