//! `GET /openapi.json`: the OpenAPI document of the REST API, generated from the code.
//!
//! Each route of [`super::api`] has a documented stub here tying it to the real schema types
//! (`MessageView`, `GenerationParams`, `JobError`, …). A unit test checks the documented
//! limits against the validator's constants so the two cannot drift apart.

#![allow(dead_code)]

use crate::domain::catalogue::{ErrorBody, ErrorDetail, JobError};
use crate::domain::merge::{MAX_DATA_BYTES, MAX_DATA_DEPTH};
use crate::domain::message::{MessageView, Notice};
use crate::domain::models::{ModelEntry, ModelListing, Sampler};
use crate::domain::params::{CREATE_FIELDS, FieldRule, GenerationParams, Rule};
use crate::domain::status::JobStatus;
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `POST /api/v1/messages`: its schema is built from [`CREATE_FIELDS`], the table the
/// validator checks a body against.
pub struct CreateMessage;

impl utoipa::PartialSchema for CreateMessage {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .description(Some(
                "A new image request; every field but `prompt` has a default.",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for field in &CREATE_FIELDS {
            object = object.property(field.name, field_schema(field));
            if field.required {
                object = object.required(field.name);
            }
        }
        object.into()
    }
}

impl ToSchema for CreateMessage {}

/// No NUL, and at least one character that is not Unicode `White_Space` (what Rust's
/// `trim` removes, which is what the validator checks). Spelled out: ECMA-262's `\s` is
/// another set (it has U+FEFF and lacks U+0085), and `\S` would match NUL.
const NOT_BLANK_PATTERN: &str = "^[^\\x00]*[^\\x00\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00]*$";

/// The JSON Schema of one create field, from its rule.
fn field_schema(field: &FieldRule) -> Schema {
    let of = |kind: Type| {
        if field.required {
            SchemaType::Type(kind)
        } else {
            SchemaType::from_iter([kind, Type::Null])
        }
    };
    let schema = ObjectBuilder::new().description(Some(field.about));
    let schema = match field.rule {
        Rule::Text {
            min,
            max,
            not_blank,
        } => schema
            .schema_type(of(Type::String))
            .min_length((min > 0).then_some(min))
            .max_length(Some(max))
            .pattern(Some(if not_blank {
                NOT_BLANK_PATTERN
            } else {
                r"^[^\x00]*$"
            })),
        Rule::Integer { min, max, step } => schema
            .schema_type(of(Type::Integer))
            .minimum(Some(min as f64))
            .maximum(Some(max as f64))
            .multiple_of((step != 1).then_some(step as f64)),
        Rule::Number { min, max } => schema
            .schema_type(of(Type::Number))
            .minimum(Some(min as f64))
            .maximum(Some(max as f64)),
        Rule::Data => schema
            .schema_type(of(Type::Object))
            .description(Some(format!(
                "{} An object of at most {} KiB serialized and {} levels deep, with no NUL \
             character in any key or string.",
                field.about,
                MAX_DATA_BYTES / 1024,
                MAX_DATA_DEPTH
            ))),
    };
    schema.into()
}

/// `PATCH /api/v1/messages/{id}`: a JSON Merge Patch (RFC 7396) of the client data.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMessage {
    /// Merged into the message's data: objects merge key by key, `null` removes a key. The
    /// result may be at most 64 KiB and 16 levels deep, with no NUL in any key or string.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `{"messages": [...], "next": …}`: a page of a listing.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MessageList {
    /// Newest first, with live positions.
    pub messages: Vec<MessageView>,
    /// Set when the page ended before the user's last message (its `limit`, or about
    /// `LIST_MAX_BYTES` of messages): pass it as `before` for the next page.
    pub next: Option<uuid::Uuid>,
}

/// The optional body of `POST /api/v1/messages/{id}/retry`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOptions {
    /// Run again with the seed Forge used last time (same picture), instead of the requested
    /// one (a random seed stays random). Default false.
    #[schema(nullable = true)]
    pub reuse_seed: Option<bool>,
}

/// `POST /api/v1/dev/token` (dev mode only).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    /// Any user name: 1..=64 characters, no control characters, not only whitespace.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f\s][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub user: String,
}

/// A dev-mode token.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DevToken {
    /// The bearer token (HS256 JWT).
    pub token: String,
    /// Its user.
    pub user: String,
    /// When it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// `{"status": "ok"}`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
}

/// `GET /readyz`: ok or not per dependency, never why.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `{"database": "ok"|"unavailable", "queue": "ok"|"unavailable"}`.
    #[schema(value_type = Object)]
    pub checks: serde_json::Value,
    /// Present when unavailable.
    pub error: Option<ErrorDetail>,
}

/// `GET /admin/status`: readiness with its reasons, and this process's sessions.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AdminStatus {
    /// Whether the database and the queue store answer.
    pub ready: bool,
    /// `{"ok": bool, "detail"?: string}`.
    #[schema(value_type = Object)]
    pub database: serde_json::Value,
    /// `{"ok": bool, "detail"?: string}`.
    #[schema(value_type = Object)]
    pub queue: serde_json::Value,
    /// `{"open": sessions, "users": distinct users}` on this process.
    #[schema(value_type = Object)]
    pub sessions: serde_json::Value,
}

#[utoipa::path(post, path = "/api/v1/messages", tag = "messages",
    request_body = CreateMessage,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "Repeat a create safely: the same key returns the first message again")),
    responses(
        (status = 202, description = "Queued", body = MessageView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 408, description = "Body not received within HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "A field failed validation", body = ErrorBody),
        (status = 429, description = "Too many pending messages", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn create_message() {}

#[utoipa::path(get, path = "/api/v1/messages", tag = "messages",
    params(
        ("status" = Option<String>, Query, pattern = r"^(pending|queued|processing|complete|error|cancelled)(,(pending|queued|processing|complete|error|cancelled))*$", description = "pending, queued, processing, complete, error or cancelled (comma-separated)"),
        ("conversation_id" = Option<String>, Query, min_length = 1, max_length = 255, pattern = r"^[^\x00]+$", description = "Only this conversation"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "At most this many (default 50)"),
        ("before" = Option<uuid::Uuid>, Query, description = "Only messages older than this one (a page's `next`)")),
    responses(
        (status = 200, description = "Newest first, live positions; a page ends at `limit` messages or about `LIST_MAX_BYTES`, and `next` continues it", body = MessageList),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 422, description = "A query parameter failed validation", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn list_messages() {}

#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses(
        (status = 200, description = "The checkpoints and samplers the backends offer, as they last answered (each backend is asked at start and every MODELS_REFRESH; one that cannot answer is left out until it can)", body = ModelListing),
        (status = 401, description = "No or bad token", body = ErrorBody)),
    security(("bearer" = [])))]
fn list_models() {}

#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "The message, live position", body = MessageView),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such message for this user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn get_message() {}

#[utoipa::path(patch, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    request_body = PatchMessage,
    responses(
        (status = 200, description = "Merged", body = MessageView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such message for this user", body = ErrorBody),
        (status = 408, description = "Body not received within HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Invalid patch, or a server-owned field named", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn patch_message() {}

#[utoipa::path(post, path = "/api/v1/messages/{id}/cancel", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "Cancelled", body = MessageView),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such message for this user", body = ErrorBody),
        (status = 409, description = "Already terminal", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn cancel_message() {}

#[utoipa::path(post, path = "/api/v1/messages/{id}/retry", tag = "messages",
    params(("id" = String, Path, description = "Message id"),
           ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]+$", description = "Repeat a retry safely")),
    request_body(content = Option<RetryOptions>, description = "Optional: `{\"reuse_seed\": true}`"),
    responses(
        (status = 202, description = "A new message with the same prompt and params", body = MessageView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 408, description = "Body not received within HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 404, description = "No such message for this user", body = ErrorBody),
        (status = 409, description = "Still pending", body = ErrorBody),
        (status = 422, description = "Bad Idempotency-Key or option", body = ErrorBody),
        (status = 429, description = "Too many pending messages", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
fn retry_message() {}

#[utoipa::path(post, path = "/api/v1/dev/token", tag = "dev",
    request_body = DevTokenRequest,
    responses(
        (status = 200, description = "A token (dev mode only; 404 otherwise)", body = DevToken),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 408, description = "Body not received within HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Bad user name", body = ErrorBody)))]
fn dev_token() {}

#[utoipa::path(get, path = "/images/{file}", tag = "images",
    params(("file" = String, Path, description = "`<id>.png`, `<id>.preview.png` or `placeholder.png`")),
    responses(
        (status = 200, description = "The PNG", content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "No such image", body = ErrorBody)))]
fn image() {}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = Health)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Database and queue store answer", body = Readiness),
        (status = 503, description = "A dependency does not answer", body = Readiness)))]
fn readyz() {}

#[utoipa::path(get, path = "/admin/status", tag = "operations",
    responses(
        (status = 200, description = "Readiness with reasons, and sessions", body = AdminStatus),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody)),
    security(("admin" = [])))]
fn admin_status() {}

#[utoipa::path(get, path = "/", tag = "browser",
    responses((status = 200, description = "The bundled page", content_type = "text/html", body = String)))]
fn page() {}

#[utoipa::path(get, path = "/client.js", tag = "browser",
    responses((status = 200, description = "The browser client module (ES module)", content_type = "text/javascript", body = String)))]
fn client_js() {}

#[utoipa::path(get, path = "/asyncapi.json", tag = "browser",
    responses((status = 200, description = "The AsyncAPI 3 document of the WebSocket at /ws", content_type = "application/json", body = Object)))]
fn asyncapi() {}

#[utoipa::path(get, path = "/admin/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody)),
    security(("admin" = [])))]
fn metrics() {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "forge-gateway", description = "Image requests queued, run on Forge servers, persisted and pushed over WebSocket (`GET /ws`, described by `/asyncapi.json` and docs/api.md). Any request may be answered 503 `too_many_connections` when the server holds MAX_CONNECTIONS connections."),
    paths(create_message, list_messages, list_models, get_message, patch_message, cancel_message, retry_message, dev_token, image, healthz, readyz, admin_status, metrics, page, client_js, asyncapi),
    components(schemas(ModelListing, ModelEntry, Sampler, MessageView, GenerationParams, JobError, Notice, JobStatus, CreateMessage, PatchMessage, RetryOptions, MessageList, ErrorBody, ErrorDetail, DevTokenRequest, DevToken, Health, Readiness, AdminStatus)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as JSON; `dev_mode` keeps or drops the dev token route.
pub fn document(dev_mode: bool) -> String {
    let mut doc = ApiDoc::openapi();
    if !dev_mode {
        doc.paths.paths.remove("/api/v1/dev/token");
    }
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    // The values REST shares with the WebSocket get the same schemas as the AsyncAPI
    // document: every key the serializer always writes required, no other key allowed.
    if let Some(serde_json::Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
        for (name, schema) in crate::http::asyncapi::shared_schemas() {
            if schemas.contains_key(&name) {
                schemas.insert(name, schema);
            }
        }
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::params::{MAX_PROMPT_CHARS, MAX_SIDE, MIN_SIDE};
    use serde_json::Value;

    /// `assets/openapi.json` is what the code generates (with the dev token route); with
    /// `UPDATE_CONTRACTS=1` the test writes it instead.
    #[test]
    fn contracts_the_committed_openapi_is_the_generated_one() {
        let generated: Value = serde_json::from_str(&document(true)).unwrap();
        let mut generated = serde_json::to_string_pretty(&generated).unwrap();
        generated.push('\n');
        crate::http::check_committed_contract("openapi.json", &generated);
    }

    /// The published request schema and the validator agree on text fields, whitespace and
    /// NUL included.
    #[test]
    fn the_request_schema_accepts_exactly_what_the_validator_accepts() {
        let doc: Value = serde_json::from_str(&document(true)).unwrap();
        let schema = doc["components"]["schemas"]["CreateMessage"].clone();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let texts = [
            "a",
            " a ",
            "",
            " ",
            "\t\n",
            "a\u{0}b",
            "\u{0}",
            "\u{feff}",
            "\u{85}",
            "\u{a0}",
            "\u{3000}x",
            "\u{200b}",
            "ç",
            "\u{2028}",
        ];
        for field in [
            "prompt",
            "sampler_name",
            "negative_prompt",
            "conversation_id",
        ] {
            for text in texts {
                let mut body = serde_json::json!({"prompt": "p", field: text});
                if field == "sampler_name" {
                    body["sampler_name"] = Value::from(text);
                }
                let enforced = crate::domain::params::CreateRequest::from_json(&body).is_ok();
                let published = validator.is_valid(&body);
                assert_eq!(published, enforced, "{field} = {text:?}");
            }
        }
    }

    /// A value both documents show has one schema in both.
    #[test]
    fn shared_values_have_the_same_schema_in_both_documents() {
        let rest: Value = serde_json::from_str(&document(true)).unwrap();
        let socket = crate::http::asyncapi::document();
        for name in [
            "MessageView",
            "GenerationParams",
            "JobError",
            "Notice",
            "ErrorDetail",
        ] {
            let path = format!("/components/schemas/{name}");
            assert_eq!(rest.pointer(&path), socket.pointer(&path), "{name}");
            assert!(rest.pointer(&path).is_some(), "{name}");
        }
    }

    /// Every rule of the validator's table is in the request schema, with its limits.
    #[test]
    fn the_request_schema_is_the_validators_table() {
        let doc: Value = serde_json::from_str(&document(true)).unwrap();
        let create = &doc["components"]["schemas"]["CreateMessage"];
        let properties = create["properties"].as_object().unwrap();
        assert_eq!(properties.len(), CREATE_FIELDS.len());
        assert_eq!(create["required"], serde_json::json!(["prompt"]));
        assert_eq!(create["additionalProperties"], false);
        for field in &CREATE_FIELDS {
            let schema = &properties[field.name];
            match field.rule {
                Rule::Text { min, max, .. } => {
                    assert_eq!(schema["maxLength"], max, "{}", field.name);
                    assert_eq!(schema.get("minLength").cloned().unwrap_or(0.into()), min);
                }
                Rule::Integer { min, max, step } => {
                    assert_eq!(
                        schema["minimum"].as_f64(),
                        Some(min as f64),
                        "{}",
                        field.name
                    );
                    assert_eq!(
                        schema["maximum"].as_f64(),
                        Some(max as f64),
                        "{}",
                        field.name
                    );
                    assert_eq!(schema["multipleOf"].as_f64().unwrap_or(1.0), step as f64);
                }
                Rule::Number { min, max } => {
                    assert_eq!(schema["minimum"].as_f64(), Some(min as f64));
                    assert_eq!(schema["maximum"].as_f64(), Some(max as f64));
                }
                Rule::Data => assert!(schema["type"].to_string().contains("object")),
            }
        }
    }

    #[test]
    fn the_documented_limits_are_the_validators() {
        let doc: Value = serde_json::from_str(&document(true)).unwrap();
        let create = &doc["components"]["schemas"]["CreateMessage"]["properties"];
        assert_eq!(create["prompt"]["maxLength"], MAX_PROMPT_CHARS);
        assert_eq!(create["width"]["minimum"], MIN_SIDE);
        assert_eq!(create["width"]["maximum"], MAX_SIDE);
        assert_eq!(create["height"]["multipleOf"], 8);
        assert!(doc["paths"]["/api/v1/messages"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/messages/{id}/retry"]["post"].is_object());
        let without_dev: Value = serde_json::from_str(&document(false)).unwrap();
        assert!(without_dev["paths"].get("/api/v1/dev/token").is_none());
        assert!(doc["paths"].get("/api/v1/dev/token").is_some());
    }
}
