//! A TCP proxy a test can cut and restore, to make a dependency go away and come back.

/// A TCP proxy that can be cut (the server behind it "goes away": every connection closes and
/// new ones are refused) and restored on the same port.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    state: std::sync::Arc<parking_lot::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    open: bool,
    /// The accept loop and every proxied connection.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: String) -> TcpProxy {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = probe.local_addr().expect("address").port();
        drop(probe);
        let proxy = TcpProxy {
            port,
            target,
            state: std::sync::Arc::default(),
        };
        proxy.resume();
        proxy
    }

    pub fn resume(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(([127, 0, 0, 1], self.port).into())
            .expect("bind the proxy port");
        let listener = socket.listen(64).expect("listen");
        let (target, state) = (self.target.clone(), self.state.clone());
        let mut guard = self.state.lock();
        guard.open = true;
        guard.tasks.push(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Registered under the lock, so a cut either sees this connection or it is
                // never proxied.
                let mut state = state.lock();
                if !state.open {
                    return;
                }
                let target = target.clone();
                state.tasks.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        }));
    }

    /// Closes the listener and every proxied connection, and returns once they are closed.
    pub async fn cut(&self) {
        let tasks = {
            let mut state = self.state.lock();
            state.open = false;
            std::mem::take(&mut state.tasks)
        };
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// `host:port` of a `scheme://user@host:port/db` URL.
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

/// `url` with its `host:port` replaced (to go through a [`TcpProxy`]).
pub fn with_authority(url: &str, authority_now: &str) -> String {
    url.replacen(&authority(url), authority_now, 1)
}
