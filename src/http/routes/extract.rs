//! What handlers take from a request: the bearer header, the idempotency key, a message id
//! from the path and the body. None of these filters rejects: a bad value reaches the handler
//! as an [`ApiError`], so that the route, once matched by path and method, always answers
//! itself (in the order its handler checks: token first, then the rest).

use super::super::{HttpState, MAX_BODY_BYTES};
use crate::domain::catalogue::{ApiError, BadJson, Invalid};
use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use warp::Filter;
use warp::http::HeaderMap;

/// The shared state, for every handler.
pub fn state(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Arc<HttpState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The `Authorization` header, if it is text.
pub fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, as documented (a key is an
/// opaque token, not text).
pub fn idempotency_key()
-> impl Filter<Extract = (Result<Option<String>, ApiError>,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value.as_bytes();
        if key.is_empty()
            || key.len() > crate::gateway::MAX_IDEMPOTENCY_KEY
            || !key.iter().all(|byte| (0x21..=0x7e).contains(byte))
        {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                Invalid::VisibleAscii {
                    min: 1,
                    max: crate::gateway::MAX_IDEMPOTENCY_KEY,
                },
            ));
        }
        Ok(Some(String::from_utf8_lossy(key).into_owned()))
    })
}

/// The raw query string, empty when there is none.
pub fn query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// A message id in the path. Any segment matches, so a route's methods are checked before its
/// id; one that is not a UUID names no message of anyone's ([`ApiError::NotFound`]).
#[derive(Clone, Copy, Debug)]
pub struct MessageKey(Option<Uuid>);

impl FromStr for MessageKey {
    type Err = Infallible;

    fn from_str(segment: &str) -> Result<Self, Self::Err> {
        Ok(MessageKey(Uuid::try_parse(segment).ok()))
    }
}

impl MessageKey {
    /// The id, or not found.
    pub fn id(self) -> Result<Uuid, ApiError> {
        self.0.ok_or(ApiError::NotFound)
    }
}

/// A request body, not read yet: a handler reads it only once the token is checked.
pub struct Body {
    chunks: BoxStream<'static, Result<Bytes, warp::Error>>,
    declared: Option<u64>,
    chunked: bool,
    timeout: Duration,
}

/// The body, to be read within `timeout` (`HTTP_BODY_TIMEOUT`).
pub fn body(timeout: Duration) -> impl Filter<Extract = (Body,), Error = Infallible> + Clone {
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .map(move |headers: HeaderMap, stream| Body::new(&headers, stream, timeout))
        // `warp::body::stream` only rejects a body already taken, which no route does.
        .or(warp::any().map(move || Body {
            chunks: futures::stream::empty().boxed(),
            declared: Some(0),
            chunked: false,
            timeout,
        }))
        .unify()
}

impl Body {
    fn new<S, B>(headers: &HeaderMap, stream: S, timeout: Duration) -> Body
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: Buf,
    {
        let chunks = stream
            .map_ok(|mut chunk| {
                let length = chunk.remaining();
                chunk.copy_to_bytes(length)
            })
            .boxed();
        Body {
            chunks,
            declared: headers
                .get("content-length")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok()),
            chunked: headers.contains_key("transfer-encoding"),
            timeout,
        }
    }

    /// Whether the request says it has no body.
    pub fn is_empty(&self) -> bool {
        self.declared.is_none_or(|length| length == 0) && !self.chunked
    }

    /// Reads the body up to `MAX_BODY_BYTES` within the timeout and parses it as JSON.
    pub async fn json(self) -> Result<Value, ApiError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.bytes()).await {
            Ok(read) => Ok(crate::domain::client_json::parse(&read?)?),
            Err(_) => Err(ApiError::RequestTimeout {
                seconds: timeout.as_secs_f64().ceil() as u64,
            }),
        }
    }

    /// Reads the body, refusing it as soon as it is known to pass the limit.
    async fn bytes(mut self) -> Result<Vec<u8>, ApiError> {
        let too_large = ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
        if self
            .declared
            .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = self.chunks.next().await {
            let chunk = chunk.map_err(|_| ApiError::InvalidJson(BadJson::UnreadableBody))?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}
