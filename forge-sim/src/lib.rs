//! forge-sim: a simulator of a Stable Diffusion WebUI Forge server, speaking the part of the
//! AUTOMATIC1111 API the gateway uses (see `FORGE-API.md`).
//!
//! It exists so that the gateway can run with no GPU (the embedded default starts one), and so
//! that tests can make a backend misbehave on purpose: hang, fail with 500, reset the
//! connection, answer garbage or cut an answer short. Like Forge it generates one picture at a
//! time and queues the rest on their open connections; its progress endpoint reports whatever
//! generation holds the lock.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use forge_sim::{SimConfig, SimMode, SimServer};
//! let server = SimServer::start("127.0.0.1:0".parse().expect("address"), SimConfig::default()).await?;
//! println!("Forge at {}", server.url());
//! server.set_mode(SimMode::Hang);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod config;
mod http;
mod render;
mod state;

pub use config::{Latency, ParseLatencyError, ParseModeError, SimConfig, SimConfigError, SimMode};
pub use render::{MAX_SIDE, render_png};
pub use state::SimStats;

use api::Action;
use http::{ReadError, RequestReader};
use state::Shared;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running simulator. Dropping it stops it too, but [`shutdown`](Self::shutdown) also waits
/// until every connection is closed.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_loop: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves on the current tokio runtime.
    pub async fn start(bind: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (stop, stopped) = watch::channel(false);
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(SimServer {
            addr,
            shared,
            stop,
            accept_loop: Some(accept_loop),
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
    /// their tasks to end. Aborting is immediate, so this does not hang.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept_loop) = self.accept_loop.take()
            && let Err(err) = accept_loop.await
            && err.is_panic()
        {
            tracing::error!(%err, "the simulator's accept loop panicked");
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = stopped.changed() => {
                // A dropped sender also means stop.
                if changed.is_err() || *stopped.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, shared.clone(), peer));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "forge-sim accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>, peer: SocketAddr) {
    let mut reader = RequestReader::new();
    loop {
        let request = match reader.next(&mut stream).await {
            Ok(request) => request,
            Err(ReadError::Gone) => return,
            Err(ReadError::Reject(response)) => {
                tracing::debug!(%peer, status = response.status, "forge-sim rejected a request");
                let _ = http::write_response(&mut stream, &response, false).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        match api::handle(&shared, &request).await {
            Action::Respond(response) => {
                let keep_alive = request.keep_alive && !response.close;
                if http::write_response(&mut stream, &response, keep_alive)
                    .await
                    .is_err()
                    || !keep_alive
                {
                    let _ = stream.shutdown().await;
                    return;
                }
            }
            Action::Hang(spec) => {
                // A client that gives up while still queued must not wedge the server later.
                let job = tokio::select! {
                    job = shared.begin(spec) => job,
                    () = wait_for_close(&mut stream) => return,
                };
                wait_for_close(&mut stream).await;
                drop(job);
                return;
            }
            Action::Reset => {
                // SO_LINGER 0: closing sends RST instead of FIN, so the client sees a reset.
                if let Err(err) = stream.set_zero_linger() {
                    tracing::debug!(%err, "forge-sim could not set SO_LINGER");
                }
                drop(stream);
                return;
            }
            Action::Truncate { response, sent } => {
                let head = response.head(response.body.len(), true);
                let body = response.body.get(..sent).unwrap_or_default();
                if stream.write_all(&head).await.is_ok() && stream.flush().await.is_ok() {
                    let _ = stream.write_all(body).await;
                    let _ = stream.flush().await;
                }
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Reads (and discards) until the client closes or breaks the connection: how a hung request
/// learns that nobody waits for it any more.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
