//! A Forge that lies, written here rather than in the simulator: a bare HTTP/1.1 server whose
//! txt2img answer each test chooses byte for byte (a body of hundreds of MB, a PNG bomb, an
//! image of another size), answering progress and interrupt like an idle Forge.

use base64::Engine as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the fake answers to `POST /sdapi/v1/txt2img`.
#[derive(Clone, Debug)]
pub enum Txt2ImgAnswer {
    /// A `{"images":["AAAA…` body of this many bytes, announced by its `Content-Length`.
    HugeWithLength(u64),
    /// The same without a length: streamed until the connection closes.
    HugeStreamed(u64),
    /// A well-formed answer holding this PNG.
    Png(Vec<u8>),
}

/// The fake server; stops when dropped.
pub struct FakeForge {
    pub url: String,
    /// Bytes of txt2img answers written so far.
    pub written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeForge {
    /// Serves `answer` to every txt2img call.
    pub async fn start(answer: Txt2ImgAnswer) -> FakeForge {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (answer, counter) = (answer.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, answer, counter).await;
                });
            }
        });
        FakeForge { url, written, task }
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    answer: Txt2ImgAnswer,
    written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut socket = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        if socket.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            socket.read_line(&mut header).await?;
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        socket.read_exact(&mut body).await?;
        let socket = socket.get_mut();
        if !request_line.contains("/sdapi/v1/txt2img") {
            let body = if request_line.contains("/progress") {
                r#"{"progress":0.0,"eta_relative":0.0,"state":{"sampling_step":0,"sampling_steps":0},"current_image":null}"#
            } else {
                "{}"
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(body.as_bytes()).await?;
            continue;
        }
        match &answer {
            Txt2ImgAnswer::Png(png) => {
                let image = base64::engine::general_purpose::STANDARD.encode(png);
                let body = format!(r#"{{"images":["{image}"],"info":"{{\"seed\": 7}}"}}"#);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(body.as_bytes()).await?;
                written.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            Txt2ImgAnswer::HugeWithLength(size) | Txt2ImgAnswer::HugeStreamed(size) => {
                let head = match &answer {
                    Txt2ImgAnswer::HugeWithLength(_) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
                    ),
                    _ => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                        .to_owned(),
                };
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(br#"{"images":[""#).await?;
                let block = vec![b'A'; 1 << 20];
                let mut sent = 12u64;
                while sent < *size {
                    let n = block.len().min((*size - sent) as usize);
                    // The gateway closes the connection once it has read enough: stop then.
                    socket.write_all(&block[..n]).await?;
                    sent += n as u64;
                    written.fetch_add(n as u64, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
    }
}

/// A real PNG of `width`×`height`.
pub fn png_of(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("header");
    writer
        .write_image_data(&vec![90u8; (width * height * 4) as usize])
        .expect("data");
    writer.finish().expect("finish");
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|n| {
            (0..8).fold(n as u32, |crc, _| {
                if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                }
            })
        })
    });
    !bytes.iter().fold(0xffff_ffffu32, |crc, byte| {
        table[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// A real decompression bomb: a PNG of `side`×`side` RGBA whose every pixel is zero. Its
/// data is one deflate block of back-references written by hand (a few MB for a gigabyte of
/// pixels, and instant to build), so decoding it in full takes `side`² × 4 bytes.
pub fn png_zero_bomb(side: u32) -> Vec<u8> {
    let raw = u64::from(side) * (1 + u64::from(side) * 4);
    let mut bits = BitWriter::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    let literal_zero = || (reverse(0x30, 8), 8);
    let (code, len) = literal_zero();
    bits.put(code, len);
    let mut left = raw - 1;
    while left >= 258 {
        bits.put(reverse(0xC5, 8), 8); // length 258 (code 285)
        bits.put(0, 5); // distance 1 (code 0)
        left -= 258;
    }
    for _ in 0..left {
        let (code, len) = literal_zero();
        bits.put(code, len);
    }
    bits.put(0, 7); // end of block (code 256)
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.finish());
    let adler = ((raw % 65_521) << 16 | 1) as u32;
    zlib.extend(adler.to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend(side.to_be_bytes());
    header.extend(side.to_be_bytes());
    header.extend([8, 6, 0, 0, 0]); // 8 bits, RGBA, deflate, no filter method, no interlace
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend((data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend(kind);
    png.extend(data);
    let crc = crc32(&png[start..]);
    png.extend(crc.to_be_bytes());
}

/// `code`'s `len` bits in reverse order (deflate sends Huffman codes most significant bit
/// first, packed from each byte's least significant bit).
fn reverse(code: u32, len: u32) -> u32 {
    (0..len).fold(0, |reversed, bit| {
        reversed | ((code >> bit) & 1) << (len - 1 - bit)
    })
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    buffer: u64,
    count: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, len: u32) {
        self.buffer |= u64::from(value) << self.count;
        self.count += len;
        while self.count >= 8 {
            self.bytes.push(self.buffer as u8);
            self.buffer >>= 8;
            self.count -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.bytes.push(self.buffer as u8);
        }
        self.bytes
    }
}
