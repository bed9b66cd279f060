//! A minimal WebSocket client (RFC 6455) over a tokio `TcpStream`: the opening handshake,
//! reading the server's (unmasked) frames and writing masked client frames.
//!
//! Only what the load generator needs: text, ping, pong and close frames, 7/16/64-bit payload
//! lengths, fragmented messages reassembled. `Sec-WebSocket-Accept` is not verified (the
//! `101` status and the `Upgrade` header are).

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest message accepted from the server (snapshots of many pending jobs can be large).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

/// One complete message (or control frame) from the server.
pub struct WsMessage {
    pub opcode: u8,
    pub payload: Bytes,
}

/// The reading half.
pub struct WsReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// Payload of a fragmented message being reassembled, with its opcode.
    partial: Option<(u8, BytesMut)>,
}

/// The writing half; cloning shares it (writes are serialized by a lock).
#[derive(Clone)]
pub struct WsWriter {
    half: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

/// Connects to `host:port` and upgrades `path_and_query` (e.g. `/ws?token=…`).
pub async fn connect(addr: &str, path_and_query: &str) -> Result<(WsReader, WsWriter), WsError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (mut read, mut write) = stream.into_split();
    write.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(WsError::Handshake("response head too large".into()));
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Err(WsError::Handshake(format!(
                "connection closed during the handshake (got {:?})",
                String::from_utf8_lossy(&buf)
            )));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "101" {
        // Include a bit of the body for the report (e.g. a 401 or 503 error body).
        let extra = String::from_utf8_lossy(&buf[head_end..buf.len().min(head_end + 300)]);
        return Err(WsError::Handshake(format!("{status_line} {extra}")));
    }
    let upgrade_ok = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("upgrade:") && lower.contains("websocket")
    });
    if !upgrade_ok {
        return Err(WsError::Handshake("101 without Upgrade: websocket".into()));
    }
    buf.advance(head_end);
    Ok((
        WsReader {
            half: read,
            buf,
            partial: None,
        },
        WsWriter {
            half: Arc::new(tokio::sync::Mutex::new(write)),
        },
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl WsReader {
    /// The next complete message or control frame; `Err(Closed)` on EOF.
    pub async fn next(&mut self) -> Result<WsMessage, WsError> {
        loop {
            let (fin, opcode, payload) = self.next_frame().await?;
            if opcode >= 0x8 {
                // Control frames may come in the middle of a fragmented message.
                return Ok(WsMessage { opcode, payload });
            }
            match (opcode, self.partial.take(), fin) {
                (OP_CONTINUATION, None, _) => {
                    return Err(WsError::Protocol("continuation without a start".into()));
                }
                (OP_CONTINUATION, Some((first, mut data)), fin) => {
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err(WsError::Protocol("message too large".into()));
                    }
                    if fin {
                        return Ok(WsMessage {
                            opcode: first,
                            payload: data.freeze(),
                        });
                    }
                    self.partial = Some((first, data));
                }
                (_, Some(_), _) => {
                    return Err(WsError::Protocol(
                        "new message inside a fragmented one".into(),
                    ));
                }
                (op, None, true) => {
                    return Ok(WsMessage {
                        opcode: op,
                        payload,
                    });
                }
                (op, None, false) => {
                    let mut data = BytesMut::with_capacity(payload.len() * 2);
                    data.extend_from_slice(&payload);
                    self.partial = Some((op, data));
                }
            }
        }
    }

    async fn fill(&mut self, want: usize) -> Result<(), WsError> {
        while self.buf.len() < want {
            if self.buf.capacity() - self.buf.len() < want - self.buf.len() {
                self.buf.reserve(want - self.buf.len());
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err(WsError::Closed);
            }
        }
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<(bool, u8, Bytes), WsError> {
        self.fill(2).await?;
        let b0 = self.buf[0];
        let b1 = self.buf[1];
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set".into()));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let (len, header) = match b1 & 0x7F {
            126 => {
                self.fill(4).await?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64, 4)
            }
            127 => {
                self.fill(10).await?;
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(raw), 10)
            }
            short => (short as u64, 2),
        };
        if len > MAX_MESSAGE as u64 {
            return Err(WsError::Protocol(format!("frame of {len} bytes")));
        }
        let mask_len = if masked { 4 } else { 0 };
        let total = header + mask_len + len as usize;
        self.fill(total).await?;
        let mut frame = self.buf.split_to(total);
        let mask = masked.then(|| {
            [
                frame[header],
                frame[header + 1],
                frame[header + 2],
                frame[header + 3],
            ]
        });
        frame.advance(header + mask_len);
        if let Some(mask) = mask {
            // A server must not mask, but unmasking costs nothing.
            for (i, byte) in frame.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            // Do not keep a large buffer around after a big snapshot.
            self.buf = BytesMut::with_capacity(4096);
        }
        Ok((fin, opcode, frame.freeze()))
    }
}

impl WsWriter {
    /// Sends one masked frame with FIN set.
    pub async fn send(&self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        let frame = encode_frame(opcode, payload);
        let mut half = self.half.lock().await;
        half.write_all(&frame).await?;
        Ok(())
    }

    /// Writes a frame already encoded with [`encode_frame`] (the flood scenario masks its
    /// frames once, so that the writer is bound by the socket, not by masking).
    pub async fn send_raw(&self, frame: &[u8]) -> Result<(), WsError> {
        let mut half = self.half.lock().await;
        half.write_all(frame).await?;
        Ok(())
    }

    /// Sends a text frame.
    pub async fn text(&self, text: &str) -> Result<(), WsError> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// Sends a close frame (1000, normal closure) and shuts the write side.
    pub async fn close(&self) -> Result<(), WsError> {
        let frame = encode_frame(OP_CLOSE, &1000u16.to_be_bytes());
        let mut half = self.half.lock().await;
        half.write_all(&frame).await?;
        half.shutdown().await?;
        Ok(())
    }
}

/// A client frame: FIN, the opcode, the mask bit and a random masking key (RFC 6455 5.2, 5.3).
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 14);
    frame.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let opcode = frame[0] & 0x0F;
        assert!(frame[1] & 0x80 != 0, "client frames are masked");
        let (len, header) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = &frame[header..header + 4];
        let data = frame[header + 4..header + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        (opcode, data)
    }

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = encode_frame(OP_TEXT, &payload);
            let (op, data) = unmask(&frame);
            assert_eq!(op, OP_TEXT);
            assert_eq!(data, payload);
        }
    }
}
