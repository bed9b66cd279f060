//! One request's way through the simulator on hyper: read it whole, let the routes decide,
//! then carry out the decision, including the fault modes that no well-behaved answer can
//! express.
//!
//! - `hang`: the future never answers. hyper drops it when the client closes its connection
//!   (an end of stream in the middle of an exchange ends an HTTP/1 connection unless
//!   half-close is allowed, which it is not) or when the simulator stops; the generation
//!   lock it holds is released on drop.
//! - `reset`: trips the connection's [`ResetSwitch`] and fails, so hyper drops the
//!   connection without answering and the socket closes with RST (see [`crate::reset`]).
//! - `close`: answers with a [`CutShort`] body, which announces the whole length, yields part
//!   of it and then fails; hyper ends the connection in the middle of the body.

use crate::action::Action;
use crate::api;
use crate::http::{self, Body, Response};
use crate::reset::ResetSwitch;
use crate::state::Shared;
use crate::tasks::Tasks;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Why a request ends its connection instead of answering.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Abort {
    /// The `reset` fault.
    #[error("the reset fault ends this connection")]
    Reset,
    /// The simulator is stopping.
    #[error("the simulator is stopping")]
    Stopping,
}

/// What every request of one connection shares.
#[derive(Clone)]
pub(crate) struct Exchange {
    pub shared: Arc<Shared>,
    pub tasks: Tasks,
    pub reset: ResetSwitch,
}

impl Exchange {
    /// Serves one request: hyper's service function.
    pub async fn serve(
        self,
        request: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Body>, Abort> {
        let request = match http::read_request(request).await {
            Ok(request) => request,
            Err(refusal) => return Ok(refusal.into_hyper()),
        };
        // The routes run on a task of their own: hyper drops this future as soon as the client
        // leaves, but a generation, like Forge's, runs to its end (holding the lock) anyway.
        let shared = self.shared.clone();
        let action = self
            .tasks
            .run(async move { api::handle(&shared, &request).await })
            .await
            .ok_or(Abort::Stopping)?;
        match action {
            Action::Respond(response) => Ok(response.into_hyper()),
            Action::Hang(spec) => {
                // Queued like any generation, then holding the lock until dropped.
                let _in_hand = self.shared.counters.txt2img_in_hand();
                let _job = self.shared.begin(spec).await;
                std::future::pending().await
            }
            Action::Reset => {
                self.reset.trip();
                Err(Abort::Reset)
            }
            Action::Truncate { response, sent } => {
                let body = CutShort::of(&response, sent);
                Ok(response.with_body(body.boxed()))
            }
        }
    }
}

/// How long a [`CutShort`] body waits between its part and its failure. hyper discards what
/// it still buffers when a body fails; it flushes as soon as the body has nothing ready, so
/// this only has to cover a socket that cannot take the part at once.
const FLUSH_PAUSE: Duration = Duration::from_millis(100);

/// The body of the `close` fault: announces `total` bytes, yields only `part`, then fails.
pub(crate) struct CutShort {
    part: Option<Bytes>,
    total: u64,
    pause: Option<Pin<Box<Sleep>>>,
}

impl CutShort {
    /// The body of `response`, cut after `sent` bytes.
    pub fn of(response: &Response, sent: usize) -> CutShort {
        let body = &response.body;
        CutShort {
            part: Some(Bytes::copy_from_slice(&body[..sent.min(body.len())])),
            total: u64::try_from(body.len()).unwrap_or(u64::MAX),
            pause: None,
        }
    }
}

impl hyper::body::Body for CutShort {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(part) = self.part.take() {
            return Poll::Ready(Some(Ok(Frame::data(part))));
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_PAUSE)));
        ready!(pause.as_mut().poll(cx));
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the close fault cuts the body short",
        ))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    // Exact, so that hyper announces the whole length in Content-Length.
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;
    use serde_json::json;

    #[tokio::test]
    async fn a_cut_short_body_yields_its_part_then_fails() {
        let response = Response::json(200, &json!({"images": ["0123456789"]}));
        let total = response.body.len();
        let mut body = CutShort::of(&response, 5);
        assert_eq!(body.size_hint().exact(), Some(total as u64));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().map(|data| data.len()), Some(5));
        assert!(body.frame().await.expect("a frame").is_err());
    }
}
