//! A socket that a request can order to end with a TCP reset.
//!
//! The `reset` fault must look to the client like a server that crashed: its read fails with
//! "connection reset" instead of reaching an orderly end of stream. hyper only ever closes a
//! socket in order (FIN) and a request handler never sees the socket, so the handler trips a
//! [`ResetSwitch`] that it shares with the [`ResettableStream`] under hyper (and under TLS).
//! Once tripped, the stream refuses every further read and write, so nothing orderly goes
//! out, and when hyper drops the connection it sets SO_LINGER to 0 first: the kernel then
//! answers the close with RST instead of FIN.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared by one connection's socket and the requests it carries.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResetSwitch(Arc<AtomicBool>);

impl ResetSwitch {
    /// Orders the connection to end with a reset; the handler then makes hyper drop it.
    pub fn trip(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A TCP stream that ends with a reset once its [`ResetSwitch`] is tripped.
#[derive(Debug)]
pub(crate) struct ResettableStream {
    stream: TcpStream,
    switch: ResetSwitch,
}

impl ResettableStream {
    pub fn new(stream: TcpStream, switch: ResetSwitch) -> ResettableStream {
        ResettableStream { stream, switch }
    }

    /// The error every operation returns once the switch is tripped.
    fn refuse(&self) -> Option<io::Error> {
        self.switch.is_tripped().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the reset fault ended this connection",
            )
        })
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        // Runs before `stream` is closed: with a zero linger the close becomes an RST.
        if self.switch.is_tripped()
            && let Err(err) = self.stream.set_zero_linger()
        {
            tracing::debug!(%err, "forge-sim could not set SO_LINGER");
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(err) = self.refuse() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.refuse() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.refuse() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    // hyper writes a head and its body in one call only when the stream says it can.
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.refuse() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A shutdown would send the FIN that the reset must replace.
        if let Some(err) = self.refuse() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    #[tokio::test]
    async fn an_untripped_stream_closes_in_order() -> io::Result<()> {
        let (mut client, server) = pair().await?;
        let mut server = ResettableStream::new(server, ResetSwitch::default());
        server.write_all(b"hi").await?;
        drop(server);
        let mut read = Vec::new();
        client.read_to_end(&mut read).await?;
        assert_eq!(read, b"hi");
        Ok(())
    }

    #[tokio::test]
    async fn a_tripped_stream_refuses_io_and_resets_on_drop() -> io::Result<()> {
        let (mut client, server) = pair().await?;
        let switch = ResetSwitch::default();
        let mut server = ResettableStream::new(server, switch.clone());
        switch.trip();
        assert!(server.write_all(b"hi").await.is_err());
        assert!(server.shutdown().await.is_err());
        drop(server);
        let mut buf = [0u8; 8];
        let err = client
            .read(&mut buf)
            .await
            .expect_err("a reset, not an end");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        Ok(())
    }
}
