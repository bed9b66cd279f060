//! One accepted connection's limits, enforced below HTTP: the socket is wrapped so that its
//! reads fail once a deadline passes, which makes hyper drop the connection.
//!
//! - `HTTP_HEADER_TIMEOUT`: from the connection's start, or from the first byte of a request,
//!   until the request's head is complete (the service is called). A client that sends half a
//!   head, even a byte at a time, is cut off (slowloris).
//! - `HTTP_IDLE_TIMEOUT`: a connection with no request and no traffic for this long is closed
//!   (a kept-alive one between requests, or a fresh one that sends nothing).
//! - Neither runs while a request is being served, nor after the connection became a
//!   WebSocket (the session has its own heartbeat and silence limit).
//! - `HTTP_WRITE_TIMEOUT`: a write that makes no progress for this long (a peer that does not
//!   read what it asked for, e.g. pipelined requests whose answers it never takes) fails, and
//!   the connection closes. It runs always, a WebSocket's writes included: hyper has no such
//!   deadline, and a blocked write would otherwise hold the connection and its answers forever.
//!
//! The connection also holds its `MAX_CONNECTIONS` permit (and its peer address's share, see
//! [`AddressCap`]), so the counts drop when the socket does, whether it served HTTP or became
//! a WebSocket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio::time::Sleep;

/// The deadlines of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// `HTTP_HEADER_TIMEOUT`.
    pub header: Duration,
    /// `HTTP_IDLE_TIMEOUT`.
    pub idle: Duration,
    /// `HTTP_WRITE_TIMEOUT`.
    pub write: Duration,
}

/// Why a connection was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A request head did not arrive in time.
    HeaderTimeout,
    /// Nothing happened for too long between requests.
    IdleTimeout,
    /// The peer did not take what was written to it for too long.
    WriteTimeout,
}

impl Cut {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cut::HeaderTimeout => "header_timeout",
            Cut::IdleTimeout => "idle_timeout",
            Cut::WriteTimeout => "write_timeout",
        }
    }
}

/// Connections per peer address (`MAX_CONNECTIONS_PER_ADDRESS`): one address cannot take
/// every connection the process has.
#[derive(Debug)]
pub struct AddressCap {
    limit: usize,
    open: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl AddressCap {
    /// At most `limit` connections per address.
    pub fn new(limit: usize) -> Arc<AddressCap> {
        Arc::new(AddressCap {
            limit,
            open: Default::default(),
        })
    }

    /// A share for one more connection from `address`, if it has fewer than the limit.
    pub fn admit(self: &Arc<Self>, address: std::net::IpAddr) -> Option<AddressShare> {
        let mut open = self.open.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressShare {
            cap: self.clone(),
            address,
        })
    }
}

/// One connection's share of its address's cap; dropping it gives the share back.
#[derive(Debug)]
pub struct AddressShare {
    cap: Arc<AddressCap>,
    address: std::net::IpAddr,
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// What the connection's service and its socket share.
#[derive(Debug)]
pub struct ConnState {
    origin: Instant,
    limits: ConnLimits,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// When the head being read started (ms since `origin`, plus one; 0: none).
    head_started: AtomicU64,
    /// Last traffic or end of a request (ms since `origin`).
    last_activity: AtomicU64,
    /// The connection is a WebSocket now.
    upgraded: AtomicBool,
    /// Why it was cut, if it was.
    cut: parking_lot::Mutex<Option<Cut>>,
}

impl ConnState {
    /// A fresh connection: the header timeout runs from now.
    pub fn new(limits: ConnLimits) -> Arc<ConnState> {
        Arc::new(ConnState {
            origin: Instant::now(),
            limits,
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(1),
            last_activity: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            cut: parking_lot::Mutex::new(None),
        })
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A request's head is complete and is being served; the guard marks its end.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        Serving(self.clone())
    }

    /// The connection became a WebSocket: its HTTP deadlines end.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Why the connection was cut, if it was.
    pub fn cut(&self) -> Option<Cut> {
        *self.cut.lock()
    }

    /// The deadline that applies now (ms since `origin`), and what passing it means.
    fn deadline(&self) -> Option<(u64, Cut)> {
        if self.upgraded.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = (
            self.last_activity.load(Ordering::Acquire) + self.limits.idle.as_millis() as u64,
            Cut::IdleTimeout,
        );
        // A head being read must also be complete in time, however slowly its bytes trickle
        // in (each byte moves the idle deadline, never the head's).
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(idle),
            started => {
                let head = (
                    started - 1 + self.limits.header.as_millis() as u64,
                    Cut::HeaderTimeout,
                );
                Some(if idle.0 < head.0 { idle } else { head })
            }
        }
    }

    fn read_some(&self) {
        let now = self.now();
        self.last_activity.fetch_max(now, Ordering::AcqRel);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // The first byte of the next request: its head must arrive in time.
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// A request being served; dropping it ends it.
pub struct Serving(Arc<ConnState>);

impl Drop for Serving {
    fn drop(&mut self) {
        let now = self.0.now();
        self.0.last_activity.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection holds for as long as it lives: its `MAX_CONNECTIONS` permit and its
/// address's share.
pub type Permits = (OwnedSemaphorePermit, Option<AddressShare>);

/// The accepted socket with its deadlines and its permits.
pub struct GuardedIo<T> {
    io: T,
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    armed: Option<u64>,
    /// The write deadline's timer, made at the first write that blocks.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// When the current blocked write started blocking.
    write_blocked_since: Option<Instant>,
    _permits: Permits,
}

impl<T> GuardedIo<T> {
    /// Wraps `io`, holding `permits` for as long as it lives.
    pub fn new(io: T, state: Arc<ConnState>, permits: Permits) -> Self {
        GuardedIo {
            io,
            state,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            write_timer: None,
            write_blocked_since: None,
            _permits: permits,
        }
    }

    /// A write (or flush) returned `Pending`: fails it once it has been blocked for the write
    /// timeout; `Pending` until then (the timer wakes the task).
    fn write_blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
        let until = since + self.state.limits.write;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if timer.deadline() != until {
            timer.as_mut().reset(until);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *self.state.cut.lock() = Some(Cut::WriteTimeout);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer did not read for HTTP_WRITE_TIMEOUT",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write made progress (or completed): the write deadline starts again at the next block.
    fn wrote(&mut self, some: bool) {
        self.write_blocked_since = None;
        if some {
            let now = self.state.now();
            self.state.last_activity.fetch_max(now, Ordering::AcqRel);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some((deadline, cut)) = this.state.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.armed = Some(deadline);
                    let at = this.state.origin + Duration::from_millis(deadline);
                    this.timer.as_mut().reset(at);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.state.cut.lock() = Some(cut);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            match cut {
                                Cut::HeaderTimeout => "request head timed out",
                                Cut::IdleTimeout | Cut::WriteTimeout => "idle connection timed out",
                            },
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Pending => this.write_blocked(cx),
            Poll::Ready(written) => {
                this.wrote(matches!(written, Ok(n) if n > 0));
                Poll::Ready(written)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.write_blocked(cx),
            Poll::Ready(flushed) => {
                this.wrote(false);
                Poll::Ready(flushed)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_blocked(cx),
            Poll::Ready(written) => {
                this.wrote(matches!(written, Ok(n) if n > 0));
                Poll::Ready(written)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
