//! The whole-message request and answer the routes work with, and their conversion from and
//! to hyper's streaming types.
//!
//! The routes stay plain functions of a complete request, so this module is where the limits
//! hyper leaves to the application are kept: how large a body may be, how long its arrival may
//! take, and which framings are refused.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{StatusCode, Uri};
use serde_json::{Value, json};
use std::time::Duration;

/// Largest request head (request line plus headers); hyper answers 431 beyond it.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Headers one request may carry; hyper answers 431 beyond it.
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest request body.
pub(crate) const MAX_BODY: u64 = 16 * 1024 * 1024;
/// A connection that sends nothing for this long, between or inside requests, is closed, so a
/// client that vanished without closing does not keep a task forever.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The body type of every answer: whole ones and the one the `close` fault cuts short.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// One request, its body read to the end.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub body: Bytes,
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

/// An answer, always JSON-typed; its length is announced by hyper.
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

    /// An error answer that also ends the connection: used when the request's framing is
    /// refused or broken, since the next request cannot be found reliably after it.
    pub fn fatal(status: u16, message: &str) -> Response {
        Response {
            close: true,
            ..Response::json(status, &json!({ "detail": message }))
        }
    }

    /// The hyper answer with the whole body.
    pub fn into_hyper(mut self) -> hyper::Response<Body> {
        let bytes = Bytes::from(std::mem::take(&mut self.body));
        let body = Full::new(bytes).map_err(|never| match never {});
        self.with_body(body.boxed())
    }

    /// This answer's status and headers around another body (the `close` fault's).
    pub fn with_body(&self, body: Body) -> hyper::Response<Body> {
        let mut response = hyper::Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::SERVER, HeaderValue::from_static("forge-sim"));
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Reads a request's body to its end. `Err` is the answer to give instead (it closes the
/// connection). hyper has already refused, with 400 or 431, what it cannot parse: bad request
/// lines, versions, header syntax, unreadable or conflicting Content-Lengths, oversized heads.
pub(crate) async fn read_request<B>(request: hyper::Request<B>) -> Result<Request, Response>
where
    B: hyper::body::Body,
{
    let (parts, body) = request.into_parts();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // No Forge client sends chunked bodies; refusing them keeps the same answer to every
        // framing the simulator has ever refused.
        return Err(Response::fatal(
            411,
            "Length Required: chunked request bodies are not supported",
        ));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return Err(Response::fatal(413, "Request body too large"));
    }
    let body = match tokio::time::timeout(IDLE_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        // The client broke off inside the body: nobody will read this answer.
        Ok(Err(_)) => return Err(Response::fatal(400, "Incomplete request body")),
        Err(_elapsed) => return Err(Response::fatal(408, "Request timeout")),
    };
    let (path, query) = split_target(&parts.uri);
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path,
        query,
        body,
    })
}

/// The path and decoded query parameters of a request target. hyper has already reduced an
/// absolute-form target (`http://host/path`, as proxies send it) to its parts.
fn split_target(uri: &Uri) -> (String, Vec<(String, String)>) {
    let query = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    (path.to_owned(), query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        builder: hyper::http::request::Builder,
        body: &'static str,
    ) -> hyper::Request<Full<Bytes>> {
        builder
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid request")
    }

    async fn refused_with(request: hyper::Request<Full<Bytes>>) -> Option<u16> {
        read_request(request)
            .await
            .err()
            .map(|response| response.status)
    }

    #[tokio::test]
    async fn a_plain_request_is_read_whole() {
        let read = read_request(request(
            hyper::Request::post("/sdapi/v1/txt2img?x=1&skip_current_image=true&y=a%20b")
                .header("content-length", "12"),
            "{\"a\": \"b c\"}",
        ))
        .await
        .expect("accepted");
        assert_eq!(read.method, "POST");
        assert_eq!(read.path, "/sdapi/v1/txt2img");
        assert_eq!(read.query_param("skip_current_image"), Some("true"));
        assert_eq!(read.query_param("y"), Some("a b"));
        assert_eq!(read.query_param("z"), None);
        assert_eq!(&read.body[..], b"{\"a\": \"b c\"}");
    }

    #[tokio::test]
    async fn refused_framings_close_the_connection() {
        let chunked = request(
            hyper::Request::post("/").header("transfer-encoding", "chunked"),
            "hello",
        );
        assert_eq!(refused_with(chunked).await, Some(411));
        let huge = request(
            hyper::Request::post("/").header("content-length", (MAX_BODY + 1).to_string()),
            "",
        );
        let response = read_request(huge).await.expect_err("too large");
        assert_eq!(response.status, 413);
        assert!(response.close);
        assert_eq!(
            response.into_hyper().headers()["connection"],
            "close",
            "the next request cannot be found after a refused body"
        );
    }

    #[test]
    fn targets_split_into_path_and_query() {
        let split = |target: &str| split_target(&target.parse().expect("a valid target"));
        assert_eq!(
            split("/a?b=c%20d"),
            ("/a".into(), vec![("b".into(), "c d".into())])
        );
        assert_eq!(split("http://host:1/x/y?z=1").0, "/x/y");
        assert_eq!(split("http://host").0, "/");
    }

    #[test]
    fn an_answer_carries_its_status_and_type() {
        let response = Response::json(404, &json!({"detail": "Not Found"})).into_hyper();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["server"], "forge-sim");
        assert!(!response.headers().contains_key("connection"));
    }
}
