//! A client of a gateway over HTTP, the one every test talks through (in-process app or
//! child process alike).

use super::{DEADLINE, WsClient};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A plain HTTP client of a gateway (process or in-process).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    /// A request with the user's token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
    }

    /// A dev-mode token.
    pub async fn token(&self, user: &str) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/dev/token", self.base))
            .json(&json!({"user": user}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// `POST /api/v1/messages`.
    pub async fn submit(&self, token: &str, body: Value) -> (u16, Value) {
        let answer = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Submits `prompt` (a small image), which must be accepted; returns the new message's id.
    pub async fn submit_id(&self, token: &str, prompt: &str) -> String {
        let (status, created) = self.submit(token, super::small_prompt(prompt)).await;
        assert_eq!(status, 202, "{created}");
        created["id"].as_str().expect("id").to_owned()
    }

    /// `POST /api/v1/messages/{id}/cancel`.
    pub async fn cancel(&self, token: &str, id: &str) -> (u16, Value) {
        let answer = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/messages/{id}/cancel"),
                token,
            )
            .send()
            .await
            .expect("cancel");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `POST /api/v1/messages/{id}/retry` without a body.
    pub async fn retry(&self, token: &str, id: &str) -> (u16, Value) {
        let answer = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/messages/{id}/retry"),
                token,
            )
            .send()
            .await
            .expect("retry");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `PATCH /api/v1/messages/{id}` with `body` as it is.
    pub async fn patch(&self, token: &str, id: &str, body: &Value) -> (u16, Value) {
        let answer = self
            .request(
                reqwest::Method::PATCH,
                &format!("/api/v1/messages/{id}"),
                token,
            )
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("patch");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `GET` a path.
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let answer = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Polls a message until `done` holds.
    pub async fn wait_message(
        &self,
        token: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_message_within(DEADLINE, token, id, done).await
    }

    /// Polls a message until `done` holds, for at most `within` (for the heavy tests, whose
    /// debug build runs much slower than a release one when the suite shares the cores).
    pub async fn wait_message_within(
        &self,
        within: Duration,
        token: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, message) = self.get(token, &format!("/api/v1/messages/{id}")).await;
            if done(&message) {
                return message;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} never reached the expected state; last: {message}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Opens a WebSocket.
    pub async fn ws(&self, token: &str) -> WsClient {
        WsClient::connect(&self.base, token).await
    }
}
