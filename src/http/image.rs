//! `GET /images/{file}`, served below warp, like the WebSocket upgrade: warp 0.4 has no public
//! way to make a body from a stream, and an image (up to tens of MB) read whole for every
//! request would let a few slow readers hold gigabytes. The file is read as it is sent, 64 KiB
//! at a time, so a reader that takes its time costs a buffer (and is cut by
//! `HTTP_WRITE_TIMEOUT` once it stops reading).

use super::{HttpState, error_response};
use crate::domain::catalogue::ApiError;
use crate::images::StoredImage;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use warp::http::{HeaderValue, Method, Response, header};

/// What the server answers with: warp's bodies and a file's, boxed alike.
pub type ResponseBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Bytes of an image read at a time.
const CHUNK: usize = 64 * 1024;

/// Whether the request is a GET or HEAD of `/images/…`.
pub fn is_image(request: &hyper::Request<Incoming>) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path().starts_with("/images/")
}

/// Answers a GET or HEAD of `/images/{file}`: the PNG, streamed from its file, or the JSON 404.
pub async fn serve(
    request: hyper::Request<Incoming>,
    state: Arc<HttpState>,
) -> Response<ResponseBody> {
    let file = request
        .uri()
        .path()
        .strip_prefix("/images/")
        .unwrap_or_default();
    let Some(image) = state.images.open_image(file).await else {
        return boxed(error_response(&ApiError::NotFound));
    };
    let (body, length) = match image {
        StoredImage::Bundled(bytes) => {
            let length = bytes.len() as u64;
            (
                Full::new(bytes).map_err(|never| match never {}).boxed(),
                length,
            )
        }
        StoredImage::File(file, length) => {
            let frames = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
                .map_ok(Frame::data)
                .map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
            (StreamBody::new(frames).boxed(), length)
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A warp response with its body boxed as [`ResponseBody`].
pub fn boxed(response: warp::reply::Response) -> Response<ResponseBody> {
    response.map(|body| {
        body.map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)
            .boxed()
    })
}
