//! The browser socket, in one place: the upgrade of `GET /ws` (this module), the session actor
//! ([`session`]), its bounded outbox ([`outbox`]), the bounded read side ([`reader`]) and the
//! per-user command rate ([`rate`]).
//!
//! The upgrade is done here rather than by warp's `Ws` filter so tungstenite's buffers can be
//! sized (see [`super::server`]). Before answering `101` it checks the handshake, the token
//! (`Authorization: Bearer …` or `?token=`), the user's command rate and the session caps; a
//! refusal is an HTTP error with the usual JSON body, and the sessions already open are not
//! touched.
//!
//! What one session can hold, at most: inbound, tungstenite's read buffer up to
//! [`MAX_SOCKET_FRAME`] plus `WS_COMMAND_QUEUE` + 1 commands of at most `MAX_CLIENT_FRAME`;
//! outbound, `WS_OUTBOX_BYTES` waiting, plus the batch being written (one frame larger than
//! the bound can pass through an empty outbox: a snapshot).

pub mod outbox;
pub mod rate;
mod reader;
pub mod session;

use super::{HttpState, error_response};
use crate::domain::catalogue::{ApiError, Invalid};
use crate::domain::event::with_seq;
use crate::events::registry::{Permit, Refused};
use crate::metrics::ReasonLabel;
use actix::Actor as _;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use outbox::{Frame, Outbox};
use reader::{End, Reader, apply_commands};
use session::{Closed, LastSeen, SessionActor, SessionParts};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

/// Largest client text frame taken as a command (bigger ones get an `error` event and the
/// connection stays).
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// Largest frame tungstenite reads at all; a bigger one closes the connection with 1009.
pub const MAX_SOCKET_FRAME: usize = 4 * MAX_CLIENT_FRAME;

/// Frames are written to the socket once this many bytes are buffered, or at the end of a batch.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// What the WebSocket endpoint is configured with.
#[derive(Clone, Copy, Debug)]
pub struct WsSettings {
    /// Heartbeat and silence limit.
    pub timing: session::SessionTiming,
    /// `WS_OUTBOX`.
    pub outbox_frames: usize,
    /// `WS_OUTBOX_BYTES`.
    pub outbox_bytes: usize,
    /// `WS_COMMAND_QUEUE`.
    pub command_queue: usize,
    /// `WS_CLOSE_TIMEOUT`: how long the commands read before a socket ended may still take.
    pub close_timeout: Duration,
}

/// tungstenite's buffers: small, because most sessions are idle most of the time. The read
/// buffer grows for a large frame, up to [`MAX_SOCKET_FRAME`]. The writer feeds a whole outbox
/// batch and then flushes, so the write buffer turns a batch into one `send` instead of one
/// per frame; it grows only as large as the batches are.
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

/// The bearer token of the upgrade: the `Authorization` header, or `?token=` (browsers cannot
/// set headers on a WebSocket).
fn token_of(request: &hyper::Request<Incoming>) -> Option<String> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::to_owned);
    header.or_else(|| {
        url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    })
}

/// Checks the handshake, the token, the rate and the caps, answers `101` and serves the socket.
pub async fn upgrade(mut request: hyper::Request<Incoming>, state: Arc<HttpState>) -> Response {
    if !state.accepting.load(std::sync::atomic::Ordering::Relaxed) {
        return error_response(&ApiError::Unavailable);
    }
    let Some(accept) = accept_key(request.headers()) else {
        return error_response(&ApiError::invalid("Upgrade", Invalid::BadHandshake));
    };
    let identity = match token_of(&request).map(|token| state.auth.verify(&token)) {
        Some(Ok(identity)) => identity,
        Some(Err(err)) => return error_response(&err),
        None => return error_response(&ApiError::Unauthorized { expired: false }),
    };
    let user = Arc::<str>::from(identity.user);
    let expires = expiry_instant(identity.valid_until);
    let permit = match admit(&state, &user).await {
        Ok(permit) => permit,
        Err(refused) => return refused,
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
                serve(socket, permit, state, expires).await;
            }
            Err(err) => tracing::debug!(error = %err, "WebSocket upgrade failed"),
        }
    });
    switching_protocols(&accept)
}

/// The `Sec-WebSocket-Accept` of a valid version-13 upgrade request, or `None`.
fn accept_key(headers: &hyper::HeaderMap) -> Option<String> {
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
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| connection_upgrade && version_13)
        .map(|key| derive_accept_key(key.as_bytes()))
}

/// A session for `user` within the command rate and the session caps, or the refusal to
/// answer (counted by reason).
async fn admit(state: &HttpState, user: &Arc<str>) -> Result<Permit, Response> {
    let refuse = |reason: &str, err: ApiError| {
        state
            .metrics
            .ws_sessions_refused
            .get_or_create(&ReasonLabel::of(reason))
            .inc();
        error_response(&err)
    };
    if state.ws_rate.take(user).is_err() {
        let per_second = state.ws_rate.per_second();
        return Err(refuse("rate", ApiError::RateLimited { per_second }));
    }
    match state.registry.admit(user).await {
        Ok(permit) => Ok(permit),
        Err(Refused::PerUser(limit)) => Err(refuse(
            "per_user",
            ApiError::TooManySessions {
                limit,
                per_user: true,
            },
        )),
        Err(Refused::Total(limit)) => Err(refuse(
            "total",
            ApiError::TooManySessions {
                limit,
                per_user: false,
            },
        )),
        Err(Refused::Stopped) => Err(error_response(&ApiError::Unavailable)),
    }
}

/// The `101 Switching Protocols` answer.
fn switching_protocols(accept: &str) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// When a token valid until `valid_until` (seconds since the epoch) stops being valid, on
/// this process's clock.
fn expiry_instant(valid_until: i64) -> tokio::time::Instant {
    let left = valid_until
        .saturating_sub(chrono::Utc::now().timestamp())
        .max(0);
    // Far enough for any token, near enough not to overflow the clock.
    let left = Duration::from_secs((left as u64).min(10 * 365 * 24 * 3600));
    tokio::time::Instant::now() + left
}

/// How a socket's service came to its end.
enum Ending {
    /// Reading stopped (the client closed, left, fell silent, or sent too much).
    Read(End),
    /// Writing stopped (we closed, or the socket failed).
    Written,
    /// The token the socket was opened with expired.
    Expired,
}

/// Serves one socket: a session actor, a reader, a command applier and a writer, until the
/// socket ends or its token expires. Commands read before the end are applied before the
/// session goes (within `WS_CLOSE_TIMEOUT`).
async fn serve<S>(
    socket: WebSocketStream<S>,
    permit: Permit,
    state: Arc<HttpState>,
    expires: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(arbiter) = state.next_arbiter() else {
        return;
    };
    let settings = state.ws;
    let user = permit.user().clone();
    let outbox = Outbox::new(settings.outbox_frames, settings.outbox_bytes);
    let last_seen = LastSeen::new();
    let resyncing = Arc::new(AtomicBool::new(false));
    let (greeted, greeting) = tokio::sync::watch::channel(false);
    let parts = SessionParts {
        user: user.clone(),
        outbox: outbox.clone(),
        last_seen: last_seen.clone(),
        resyncing: resyncing.clone(),
        greeted: Arc::new(greeted),
    };
    let session = start_session(&state, arbiter, parts, permit);
    let (commands, queued) = mpsc::channel(settings.command_queue.max(1));
    let applier = tokio::spawn(apply_commands(
        queued,
        state.gateway.clone(),
        user.clone(),
        outbox.clone(),
    ));
    let (sink, stream) = socket.split();
    let reader = Reader {
        user: user.clone(),
        outbox: outbox.clone(),
        session: session.clone(),
        commands,
        resyncing,
        last_seen,
        rate: state.ws_rate.clone(),
        metrics: state.metrics.clone(),
        idle_timeout: settings.timing.idle_timeout,
        max_frame: MAX_CLIENT_FRAME,
        greeted: greeting,
    };
    let mut writer = Box::pin(write_frames(sink, outbox.clone(), state.metrics.clone()));
    let mut reader = Box::pin(reader.run(stream));
    let ending = tokio::select! {
        end = &mut reader => Ending::Read(end),
        () = &mut writer => Ending::Written,
        () = tokio::time::sleep_until(expires) => Ending::Expired,
    };
    if let Ending::Written = ending {
        // We closed (shutdown, idle client) or the socket failed: give the client a moment to
        // answer the close frame; what it sent until then is read.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut reader).await;
    }
    // The session ends now: it no longer counts against the caps, nor gets events. Nothing
    // more is read; the commands already read are applied, in order (the queue's sender went
    // with the reader, so the applier ends after them).
    session.do_send(Closed);
    drop(reader);
    drain_commands(applier, settings.close_timeout, &user).await;
    if !matches!(ending, Ending::Written) {
        if let Some((code, reason)) = farewell(&ending) {
            outbox.push(Frame::Close(code, reason));
        } else {
            outbox.abandon();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    }
    outbox.abandon();
    state
        .metrics
        .ws_events_dropped
        .inc_by(outbox.counts().dropped);
    state.metrics.ws_sessions_open.dec();
}

/// Lets the applier apply the commands read before the socket ended, for up to
/// `WS_CLOSE_TIMEOUT`; drops the rest.
async fn drain_commands(
    mut applier: tokio::task::JoinHandle<()>,
    close_timeout: Duration,
    user: &str,
) {
    if tokio::time::timeout(close_timeout, &mut applier)
        .await
        .is_err()
    {
        applier.abort();
        tracing::warn!(user = %user, "commands of a closed WebSocket still waiting after WS_CLOSE_TIMEOUT were dropped");
    }
}

/// The session actor of a socket, on `arbiter`.
fn start_session(
    state: &HttpState,
    arbiter: &actix::ArbiterHandle,
    parts: SessionParts,
    permit: Permit,
) -> actix::Addr<SessionActor> {
    let (gateway, registry, timing) = (
        state.gateway.clone(),
        state.registry.clone(),
        state.ws.timing,
    );
    let session = SessionActor::start_in_arbiter(arbiter, move |_| {
        SessionActor::new(parts, permit, gateway, registry, timing)
    });
    state.metrics.ws_sessions_open.inc();
    session
}

/// The close frame a socket that ended this way gets, if any.
fn farewell(ending: &Ending) -> Option<(u16, &'static str)> {
    match ending {
        Ending::Read(End::TooBig) => Some((1009, "frame too large")),
        Ending::Read(End::Idle) => Some((1001, "idle timeout")),
        Ending::Expired => Some((TOKEN_EXPIRED_CLOSE, "token expired")),
        // Answers the client's close frame (and flushes what waits before it).
        Ending::Read(End::Closed) => Some((1000, "")),
        Ending::Read(End::Gone) | Ending::Written => None,
    }
}

/// The close code of a socket whose token expired: the client gets a fresh token and
/// reconnects (`client.js` asks `renewToken`).
pub const TOKEN_EXPIRED_CLOSE: u16 = 4001;

/// Drains the outbox into the socket, stamping `seq` on every text frame, one `send` per batch.
async fn write_frames<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    outbox: Arc<Outbox>,
    metrics: Arc<crate::metrics::Metrics>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seq: u64 = 0;
    loop {
        let batch = outbox.next_batch().await;
        if batch.is_empty() {
            return;
        }
        let mut closing = false;
        for frame in batch {
            let sent = match frame {
                Frame::Text(body) => {
                    seq += 1;
                    if body.starts_with("{\"type\":\"resync\"") {
                        metrics.ws_resyncs.inc();
                    }
                    metrics.ws_events_sent.inc();
                    sink.feed(Message::text(with_seq(&body, seq))).await
                }
                Frame::Ping => sink.feed(Message::Ping(Default::default())).await,
                Frame::Close(code, reason) => {
                    closing = true;
                    sink.feed(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
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
