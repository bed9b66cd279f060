//! The WebSocket endpoint `GET /ws?token=…`: checks the handshake and the token before the
//! upgrade, then serves the socket with two tasks: a reader forwarding frames to the session
//! actor and a writer draining its outbox. The upgrade is done here rather than by warp's
//! `Ws` filter so tungstenite's buffers can be sized (see [`super::server`]).

use super::{HttpState, error_response};
use crate::actors::session::{Inbound, MAX_CLIENT_FRAME, SessionActor, SessionHandle};
use crate::domain::catalogue::ApiError;
use crate::domain::event::with_seq;
use crate::events::outbox::{Frame, Outbox};
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

/// Largest frame tungstenite reads at all; frames between [`MAX_CLIENT_FRAME`] and this get an
/// `error` event and the connection stays open.
const MAX_SOCKET_FRAME: usize = 1024 * 1024;

/// Frames are written to the socket once this many bytes are buffered, or at the end of a batch.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// tungstenite's buffers: small, because most sessions are idle most of the time. The read
/// buffer grows for a large frame. The writer feeds a whole outbox batch and then flushes, so
/// the write buffer turns a batch into one `send` instead of one per frame (a burst of
/// position updates is many small frames); it grows only as large as the batches are.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_message_size(Some(MAX_SOCKET_FRAME))
        .max_frame_size(Some(MAX_SOCKET_FRAME))
}

/// Whether the request asks to upgrade `/ws` to a WebSocket.
pub fn is_upgrade(request: &hyper::Request<Incoming>) -> bool {
    request.uri().path() == "/ws"
        && request.method() == hyper::Method::GET
        && request
            .headers()
            .get(header::UPGRADE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// Checks the handshake and the token (`?token=`), answers `101` and serves the socket.
pub fn upgrade(mut request: hyper::Request<Incoming>, state: Arc<HttpState>) -> Response {
    if !state.accepting.load(std::sync::atomic::Ordering::Relaxed) {
        return error_response(&ApiError::Unavailable);
    }
    let headers = request.headers();
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        == Some(b"13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| connection_upgrade && version_13)
    else {
        return error_response(&ApiError::validation(
            "Upgrade",
            "Geçersiz WebSocket el sıkışması (Connection: Upgrade, Sec-WebSocket-Version: 13 ve Sec-WebSocket-Key gerekir).",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let token = url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned());
    let user = match token.as_deref().map(|token| state.auth.user_of(token)) {
        Some(Ok(user)) => user,
        Some(Err(err)) => return error_response(&err),
        None => return error_response(&ApiError::Unauthorized { expired: false }),
    };
    let upgrading = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket_config()),
                )
                .await;
                serve(socket, user, state).await;
            }
            Err(err) => tracing::debug!(error = %err, "WebSocket upgrade failed"),
        }
    });
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn serve<S>(socket: WebSocketStream<S>, user: String, state: Arc<HttpState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(arbiter) = state.next_arbiter() else {
        return;
    };
    let outbox = Outbox::new(state.outbox_capacity);
    let session = SessionHandle::start(
        arbiter,
        SessionActor::new(
            user,
            outbox.clone(),
            state.hub.clone(),
            state.gateway.clone(),
            state.timing,
        ),
    );
    state.metrics.ws_sessions_open.inc();
    let (mut sink, mut stream) = socket.split();

    let writer = {
        let outbox = outbox.clone();
        let metrics = state.metrics.clone();
        async move {
            let mut seq: u64 = 0;
            loop {
                let batch = outbox.next_batch().await;
                if batch.is_empty() {
                    break;
                }
                let mut closing = false;
                for frame in batch {
                    let sent = match frame {
                        Frame::Text(body) => {
                            seq += 1;
                            if body.contains("\"type\":\"resync\"") {
                                metrics.ws_resyncs.inc();
                            }
                            metrics.ws_events_sent.inc();
                            sink.feed(Message::text(with_seq(&body, seq))).await
                        }
                        Frame::Ping => sink.feed(Message::Ping(Default::default())).await,
                        Frame::Close(reason) => {
                            closing = true;
                            sink.feed(Message::Close(Some(CloseFrame {
                                code: CloseCode::Away,
                                reason: reason.into(),
                            })))
                            .await
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() || closing {
                    return;
                }
            }
        }
    };

    let reader = {
        let session = session.clone();
        async move {
            while let Some(frame) = stream.next().await {
                let inbound = match frame {
                    Ok(Message::Text(text)) if text.len() > MAX_CLIENT_FRAME => {
                        Inbound::TooLarge(text.len())
                    }
                    Ok(Message::Text(text)) => Inbound::Text(text.as_str().to_owned()),
                    Ok(Message::Binary(bytes)) => Inbound::Binary(bytes.len()),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Inbound::Alive,
                };
                session.inbound(inbound);
            }
        }
    };

    tokio::pin!(writer);
    tokio::pin!(reader);
    tokio::select! {
        () = &mut reader => {
            // The client went away (or broke the protocol): end the session.
            session.inbound(Inbound::Closed);
        }
        () = &mut writer => {
            // We closed (shutdown, idle client) or the socket failed: give the client a moment
            // to answer the close frame, then let go.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut reader).await;
            session.inbound(Inbound::Closed);
        }
    }
    outbox.abandon();
    let counts = outbox.counts();
    state.metrics.ws_events_dropped.inc_by(counts.dropped);
    state.metrics.ws_sessions_open.dec();
}
