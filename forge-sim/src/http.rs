//! A deliberately small HTTP/1.1 server layer: reading requests off a socket and writing
//! answers. Hand-written (rather than hyper) because the fault modes need to do things a
//! well-behaved server library refuses to: stop in the middle of a body, reset a socket, or
//! hold a request open while watching the socket for the client to leave.

use bytes::{Buf, BytesMut};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head (request line plus headers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Largest request body.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;
/// Headers one request may carry.
const MAX_HEADERS: usize = 100;
/// A connection that sends nothing for this long, between or inside requests, is closed, so a
/// client that vanished without closing does not keep a task forever.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An answer, always JSON-typed and always with a Content-Length.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn json(status: u16, value: &Value) -> Response {
        // Serializing a `Value` cannot fail (its map keys are strings).
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Response {
            status,
            body,
            close: false,
        }
    }

    pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
            close: false,
        }
    }

    /// An error answer that also ends the connection: used when the request framing is broken,
    /// since the next request cannot be found reliably.
    pub fn fatal(status: u16, message: &str) -> Response {
        Response {
            close: true,
            ..Response::json(status, &json!({ "detail": message }))
        }
    }

    /// Status line and headers, announcing `content_length` body bytes.
    pub fn head(&self, content_length: usize, keep_alive: bool) -> Vec<u8> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\nserver: forge-sim\r\n\r\n",
            self.status,
            reason(self.status),
            content_length,
            connection
        )
        .into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why no request came out of the socket.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed (or broke) the connection; nothing to answer.
    Gone,
    /// The bytes were not an acceptable request: send this answer, then close.
    Reject(Response),
}

/// Reads requests from one connection, keeping bytes that arrived early (pipelining).
pub(crate) struct RequestReader {
    buf: BytesMut,
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader {
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// The next request, or `Gone` on a clean close between requests.
    pub async fn next<S>(&mut self, stream: &mut S) -> Result<Request, ReadError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let head = loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf)? {
                    Some(head) => break head,
                    None if self.buf.len() >= MAX_HEAD => {
                        return Err(ReadError::Reject(Response::fatal(
                            431,
                            "Request header fields too large",
                        )));
                    }
                    None => {}
                }
            }
            self.fill(stream).await?;
        };
        self.buf.advance(head.length);

        if head.expect_continue && head.content_length > 0 && self.buf.len() < head.content_length {
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
            if stream.write_all(interim).await.is_err() {
                return Err(ReadError::Gone);
            }
        }
        while self.buf.len() < head.content_length {
            self.fill(stream).await?;
        }
        let body = self.buf.split_to(head.content_length).to_vec();
        if self.buf.is_empty() {
            // Give back the memory of a large body instead of keeping it per idle connection.
            self.buf = BytesMut::with_capacity(8 * 1024);
        }
        Ok(Request {
            method: head.method,
            path: head.path,
            query: head.query,
            body,
            keep_alive: head.keep_alive,
        })
    }

    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<(), ReadError> {
        self.buf.reserve(8 * 1024);
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Gone),
            Ok(Ok(_)) => Ok(()),
            Err(_elapsed) if self.buf.is_empty() => Err(ReadError::Gone),
            Err(_elapsed) => Err(ReadError::Reject(Response::fatal(408, "Request timeout"))),
        }
    }
}

/// What the head of a request says, copied out of the read buffer.
#[derive(Debug)]
struct Head {
    /// Bytes of the head, including the blank line.
    length: usize,
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses a request head; `Ok(None)` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    let reject = |status, message| Err(ReadError::Reject(Response::fatal(status, message)));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return reject(431, "Too many request header fields");
        }
        Err(err) => return reject(400, &format!("Invalid HTTP request: {err}")),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return reject(400, "Invalid HTTP request line");
    };

    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let Ok(parsed) = value.parse::<usize>() else {
                return reject(400, "Invalid Content-Length");
            };
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return reject(400, "Conflicting Content-Length headers");
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not needed by any Forge client; refuse them cleanly rather
            // than misread the framing.
            return reject(
                411,
                "Length Required: chunked request bodies are not supported",
            );
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return reject(413, "Request body too large");
    }
    // HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0 only when asked.
    let keep_alive = if version >= 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    let (path, query) = split_target(target);
    Ok(Some(Head {
        length,
        method: method.to_owned(),
        path,
        query,
        content_length,
        keep_alive,
        expect_continue,
    }))
}

/// Splits a request target into its path and decoded query parameters. An absolute-form
/// target (`http://host/path`) is reduced to its path, as proxies may send it.
fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let target = match target.find("://") {
        Some(scheme_end) if target.starts_with("http") => {
            let rest = &target[scheme_end + 3..];
            rest.find(['/', '?']).map_or("/", |start| &rest[start..])
        }
        _ => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let path = if path.is_empty() { "/" } else { path };
    (path.to_owned(), query)
}

/// Writes a whole answer. `Err` means the client is gone.
pub(crate) async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut bytes = response.head(response.body.len(), keep_alive);
    bytes.extend_from_slice(&response.body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn head(text: &str) -> Result<Option<Head>, ReadError> {
        parse_head(text.as_bytes())
    }

    fn rejected_with(result: Result<Option<Head>, ReadError>) -> Option<u16> {
        match result {
            Err(ReadError::Reject(response)) => Some(response.status),
            _ => None,
        }
    }

    #[test]
    fn a_plain_request_parses() {
        let parsed = head(
            "POST /sdapi/v1/txt2img?x=1&skip_current_image=true HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
        );
        let Ok(Some(parsed)) = parsed else {
            panic!("not parsed: {parsed:?}");
        };
        assert_eq!(parsed.method, "POST");
        assert_eq!(parsed.path, "/sdapi/v1/txt2img");
        assert_eq!(
            parsed.query,
            vec![
                ("x".to_owned(), "1".to_owned()),
                ("skip_current_image".to_owned(), "true".to_owned())
            ]
        );
        assert_eq!(parsed.content_length, 12);
        assert!(parsed.keep_alive);
    }

    #[test]
    fn connection_handling_follows_the_version() {
        let close = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(matches!(
            close,
            Ok(Some(Head {
                keep_alive: false,
                ..
            }))
        ));
        let old = head("GET / HTTP/1.0\r\n\r\n");
        assert!(matches!(
            old,
            Ok(Some(Head {
                keep_alive: false,
                ..
            }))
        ));
        let old_kept = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(matches!(
            old_kept,
            Ok(Some(Head {
                keep_alive: true,
                ..
            }))
        ));
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(matches!(
            head("GET /sdapi/v1/progress HTTP/1.1\r\nHo"),
            Ok(None)
        ));
    }

    #[test]
    fn bad_input_is_rejected_with_a_status() {
        assert_eq!(
            rejected_with(head("\x00\x01\x02garbage\r\n\r\n")),
            Some(400)
        );
        assert_eq!(rejected_with(head("GET / HTTP/9.9\r\n\r\n")), Some(400));
        assert_eq!(
            rejected_with(head("POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n")),
            Some(400)
        );
        assert_eq!(
            rejected_with(head(
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            )),
            Some(400)
        );
        assert_eq!(
            rejected_with(head(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            Some(411)
        );
        assert_eq!(
            rejected_with(head(&format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY + 1
            ))),
            Some(413)
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(
            rejected_with(head(&format!("GET / HTTP/1.1\r\n{many}\r\n"))),
            Some(431)
        );
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(
            split_target("/a?b=c%20d"),
            ("/a".into(), vec![("b".into(), "c d".into())])
        );
        assert_eq!(split_target("http://host:1/x/y?z=1").0, "/x/y");
        assert_eq!(split_target("http://host").0, "/");
        assert_eq!(split_target("?q").0, "/");
    }

    #[tokio::test]
    async fn pipelined_requests_come_out_one_by_one() {
        let (mut client, mut server) = duplex(64 * 1024);
        client
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        drop(client);
        let mut reader = RequestReader::new();
        let first = reader.next(&mut server).await;
        assert!(
            matches!(&first, Ok(r) if r.path == "/a" && r.body == b"abc"),
            "{first:?}"
        );
        let second = reader.next(&mut server).await;
        assert!(
            matches!(&second, Ok(r) if r.path == "/b" && r.body.is_empty()),
            "{second:?}"
        );
        assert!(matches!(
            reader.next(&mut server).await,
            Err(ReadError::Gone)
        ));
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let (mut client, mut server) = duplex(256 * 1024);
        let mut junk = b"GET / HTTP/1.1\r\nX: ".to_vec();
        junk.resize(MAX_HEAD + 10, b'a');
        client.write_all(&junk).await.expect("write");
        let mut reader = RequestReader::new();
        let result = reader.next(&mut server).await;
        assert!(
            matches!(&result, Err(ReadError::Reject(r)) if r.status == 431),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_gone() {
        let (mut client, mut server) = duplex(64 * 1024);
        client
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 30\r\n\r\nabc")
            .await
            .expect("write");
        drop(client);
        let mut reader = RequestReader::new();
        assert!(matches!(
            reader.next(&mut server).await,
            Err(ReadError::Gone)
        ));
    }

    #[test]
    fn a_response_head_carries_length_and_type() {
        let response = Response::json(404, &json!({"detail": "Not Found"}));
        let head = String::from_utf8(response.head(response.body.len(), true)).expect("ascii");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("content-type: application/json\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", response.body.len())));
        assert!(head.ends_with("\r\n\r\n"));
    }
}
