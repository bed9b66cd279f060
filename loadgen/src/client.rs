//! The gateway's REST contract as the load generator uses it (`/api/v1/*`, `/healthz`) and
//! the simulator's `/sim/config`. Kept apart from the WebSocket side (`session.rs`) so that
//! scenarios that only POST (open) or only poll (deep's drain) need nothing else.

use serde::Deserialize;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// REST access to one gateway.
#[derive(Clone)]
pub struct Api {
    /// The gateway's base URL, without a trailing slash.
    pub base: String,
    /// `host:port` for WebSocket connections.
    pub ws_addr: String,
    /// The shared HTTP client (one connection pool for the whole run).
    pub http: reqwest::Client,
}

/// What a `POST /api/v1/messages` gave.
pub struct Submitted {
    /// Just before the request was sent.
    pub sent: Instant,
    /// When the whole answer had been read.
    pub answered: Instant,
    /// The job id and its position, or an error code (`http 503`, `too_many_pending`, …).
    pub result: Result<(Uuid, Option<u32>), String>,
}

/// The largest `limit` the list call accepts (API.md: `GET /api/v1/messages`).
pub const LIST_LIMIT: usize = 200;

/// The fields of a listed message view the load generator reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Listed {
    /// The message (and job) id.
    pub id: Uuid,
    /// The live position while queued.
    pub queue_position: Option<u32>,
}

#[derive(Deserialize)]
struct ViewHead {
    id: Uuid,
    queue_position: Option<u32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: String,
}

fn error_code(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => format!("http {} {}", status.as_u16(), parsed.error.code),
        Err(_) => format!("http {}", status.as_u16()),
    }
}

impl Api {
    /// A client of the gateway at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Api, String> {
        let parsed = url::Url::parse(base).map_err(|err| format!("--url {base}: {err}"))?;
        let host = parsed.host_str().ok_or("the gateway URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(Duration::from_secs(300))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| format!("http client: {err}"))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            ws_addr: format!("{host}:{port}"),
            http,
        })
    }

    /// `POST /api/v1/dev/token`.
    pub async fn token(&self, user: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let answer = self
                .http
                .post(format!("{}/api/v1/dev/token", self.base))
                .json(&serde_json::json!({ "user": user }))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => {
                    let body = response.bytes().await.map_err(|err| err.to_string())?;
                    return serde_json::from_slice::<Token>(&body)
                        .map(|token| token.token)
                        .map_err(|err| format!("token answer: {err}"));
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    last = error_code(status, &body);
                    if status.is_client_error() {
                        break;
                    }
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(format!("dev token for {user}: {last}"))
    }

    /// `POST /api/v1/messages` with a small, fast job.
    pub async fn submit(&self, token: &str, prompt: &str) -> Submitted {
        self.submit_json(
            token,
            serde_json::json!({ "prompt": prompt, "width": 64, "height": 64, "steps": 1 }),
        )
        .await
    }

    /// `POST /api/v1/messages` with `body`.
    pub async fn submit_json(&self, token: &str, body: serde_json::Value) -> Submitted {
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let request = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        let sent = Instant::now();
        let result = match request.send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.as_u16() == 202 => serde_json::from_slice::<ViewHead>(&body)
                        .map(|view| (view.id, view.queue_position))
                        .map_err(|err| format!("bad 202 body: {err}")),
                    Ok(body) => Err(error_code(status, &body)),
                    Err(err) => Err(format!("body: {}", short_error(&err))),
                }
            }
            Err(err) => Err(format!("send: {}", short_error(&err))),
        };
        Submitted {
            sent,
            answered: Instant::now(),
            result,
        }
    }

    /// `POST /api/v1/messages/{id}/cancel`: the status code.
    pub async fn cancel(&self, token: &str, id: Uuid) -> Result<u16, String> {
        let response = self
            .http
            .post(format!("{}/api/v1/messages/{id}/cancel", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        Ok(status)
    }

    /// `GET /api/v1/messages/{id}`.
    pub async fn message(&self, token: &str, id: Uuid) -> Result<serde_json::Value, String> {
        let response = self
            .http
            .get(format!("{}/api/v1/messages/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| short_error(&err))?;
        if !status.is_success() {
            return Err(error_code(status, &body));
        }
        serde_json::from_slice(&body).map_err(|err| err.to_string())
    }

    /// `POST /api/v1/messages` with a prepared body, reading the answer only for its status
    /// (the open-loop intake, like `wrk`): when it was sent and the status or a send error.
    pub async fn post_message_status(
        &self,
        token: &str,
        body: bytes::Bytes,
    ) -> (Instant, Result<u16, String>) {
        let request = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        let sent = Instant::now();
        let result = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body to the end so that the connection is reused.
                match response.bytes().await {
                    Ok(_) => Ok(status),
                    Err(err) => Err(format!("body: {}", short_error(&err))),
                }
            }
            Err(err) => Err(format!("send: {}", short_error(&err))),
        };
        (sent, result)
    }

    /// One page of `GET /api/v1/messages?status=…&limit=…[&before=…]`, newest first.
    pub async fn list(
        &self,
        token: &str,
        status: &str,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<Listed>, String> {
        #[derive(Deserialize)]
        struct Page {
            messages: Vec<Listed>,
        }
        let mut url = format!(
            "{}/api/v1/messages?status={status}&limit={limit}",
            self.base
        );
        if let Some(before) = before {
            url.push_str(&format!("&before={before}"));
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| short_error(&err))?;
        if !status.is_success() {
            return Err(error_code(status, &body));
        }
        serde_json::from_slice::<Page>(&body)
            .map(|page| page.messages)
            .map_err(|err| format!("list answer: {err}"))
    }

    /// Every message of the user with `status` (pages of [`LIST_LIMIT`] followed with `before`).
    pub async fn list_all(&self, token: &str, status: &str) -> Result<Vec<Listed>, String> {
        let mut all: Vec<Listed> = Vec::new();
        loop {
            let before = all.last().map(|listed| listed.id);
            let page = self.list(token, status, LIST_LIMIT, before).await?;
            let full = page.len() == LIST_LIMIT;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> bool {
        matches!(
            self.http.get(format!("{}/healthz", self.base)).send().await,
            Ok(response) if response.status().is_success()
        )
    }

    /// `POST <sim>/sim/config`.
    pub async fn sim_config(&self, sim: &str, body: serde_json::Value) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/sim/config", sim.trim_end_matches('/')))
            .json(&body)
            .send()
            .await
            .map_err(|err| short_error(&err))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(format!("sim config {status}: {body}"))
        }
    }
}

/// A one-line description of a reqwest error with its causes, at most 200 characters.
pub fn short_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_request() {
        "request"
    } else if err.is_body() {
        "body"
    } else {
        "other"
    };
    let mut text = format!("{kind}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    crate::procs::truncate(&text, 200)
}
