//! The WebSocket endpoint: authenticates before the upgrade, then serves the socket with two
//! tasks (a reader forwarding frames to the session actor, a writer draining its outbox).

use super::{HttpState, error_response};
use crate::actors::session::{Inbound, MAX_CLIENT_FRAME, SessionActor, SessionHandle};
use crate::domain::catalogue::ApiError;
use crate::domain::event::with_seq;
use crate::events::outbox::{Frame, Outbox};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use warp::reply::{Reply, Response};
use warp::ws::{Message, WebSocket, Ws};

/// Largest frame tungstenite reads at all; frames between [`MAX_CLIENT_FRAME`] and this get an
/// `error` event and the connection stays open.
const MAX_SOCKET_FRAME: usize = 1024 * 1024;

/// Checks the token (`?token=`) and upgrades.
pub fn upgrade(upgrade: Ws, query: &str, state: Arc<HttpState>) -> Response {
    if !state.accepting.load(std::sync::atomic::Ordering::Relaxed) {
        return error_response(&ApiError::Unavailable);
    }
    let token = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned());
    let user = match token.as_deref().map(|token| state.auth.user_of(token)) {
        Some(Ok(user)) => user,
        Some(Err(err)) => return error_response(&err),
        None => return error_response(&ApiError::Unauthorized { expired: false }),
    };
    upgrade
        .max_message_size(MAX_SOCKET_FRAME)
        .max_frame_size(MAX_SOCKET_FRAME)
        .on_upgrade(move |socket| serve(socket, user, state))
        .into_response()
}

async fn serve(socket: WebSocket, user: String, state: Arc<HttpState>) {
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
                        Frame::Ping => sink.feed(Message::ping(Vec::new())).await,
                        Frame::Close(reason) => {
                            closing = true;
                            sink.feed(Message::close_with(1001u16, reason)).await
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
                let Ok(frame) = frame else { break };
                if frame.is_close() {
                    break;
                }
                let inbound = if frame.is_text() {
                    let bytes = frame.as_bytes();
                    if bytes.len() > MAX_CLIENT_FRAME {
                        Inbound::TooLarge(bytes.len())
                    } else {
                        match frame.to_str() {
                            Ok(text) => Inbound::Text(text.to_owned()),
                            Err(()) => Inbound::Binary(bytes.len()),
                        }
                    }
                } else if frame.is_binary() {
                    Inbound::Binary(frame.as_bytes().len())
                } else {
                    Inbound::Alive
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
