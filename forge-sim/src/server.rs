//! The simulator's front: binding, accepting, the TLS handshake when asked for, handing each
//! connection to hyper, and the [`SimServer`] handle that the gateway, the tests and the
//! binary hold.

use crate::config::{SimConfig, SimMode};
use crate::exchange::Exchange;
use crate::http::{IDLE_TIMEOUT, MAX_HEAD, MAX_HEADERS};
use crate::reset::{ResetSwitch, ResettableStream};
use crate::state::{Shared, SimStats};
use crate::tasks::Tasks;
use crate::tls::TlsIdentity;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A running simulator. Dropping it stops it too, but [`shutdown`](Self::shutdown) also waits
/// until every connection is closed.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Tasks,
    /// The identity served with, if any; fixed for the server's life.
    tls: Option<TlsIdentity>,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves on the current tokio runtime, over
    /// HTTPS when `config.tls` is set.
    pub async fn start(bind: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        let tls = config.tls.clone();
        let acceptor = match &tls {
            None => None,
            Some(identity) => {
                let settings = identity
                    .server_config()
                    .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
                Some(TlsAcceptor::from(settings))
            }
        };
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let tasks = Tasks::default();
        tasks.spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            tasks.clone(),
        ));
        Ok(SimServer {
            addr,
            shared,
            tasks,
            tls,
        })
    }

    /// The bound address, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a Forge client: `https://` when serving with TLS. A wildcard bind
    /// (0.0.0.0, ::) is reached through loopback, since the wildcard itself is not an address
    /// to connect to.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(host, self.addr.port()))
    }

    /// The current settings.
    pub fn config(&self) -> SimConfig {
        self.shared.config()
    }

    /// Replaces the settings for requests that arrive from now on; requests already running
    /// or queued keep what they started with. A changed seed restarts the random generator.
    /// The TLS identity is the one the server started with, whatever `config.tls` says.
    pub fn set_config(&self, mut config: SimConfig) {
        config.tls.clone_from(&self.tls);
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

/// Accepts until the simulator stops (which drops this future, and the listener with it).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tasks: Tasks,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let connection =
                    serve_connection(stream, peer, tls.clone(), shared.clone(), tasks.clone());
                tasks.spawn(connection);
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "forge-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one accepted connection; on its own task, so that a slow TLS handshake does not
/// hold up accepting.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tasks: Tasks,
) {
    // Under TLS too, so that the reset fault resets the TCP connection itself.
    let reset = ResetSwitch::default();
    let stream = ResettableStream::new(stream, reset.clone());
    let exchange = Exchange {
        shared,
        tasks,
        reset,
    };
    let Some(tls) = tls else {
        return serve_http(stream, peer, exchange).await;
    };
    match tokio::time::timeout(IDLE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(stream, peer, exchange).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "forge-sim TLS handshake failed"),
        Err(_elapsed) => tracing::debug!(%peer, "forge-sim TLS handshake timed out"),
    }
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
