//! `GET /asyncapi.json`: the AsyncAPI 3 document of the WebSocket, generated.
//!
//! Two parts make it. The prose, `assets/asyncapi.base.json`: the channel, the operations,
//! each message's summary and example, the security schemes, and the schemas of what has no
//! type of its own on the server (ids, `seq`, client data, refs, and the client's commands,
//! which the reader checks field by field). Every other payload schema is derived here from
//! the type that serializes it ([`crate::domain::frames`], [`JobEventKind`] with
//! [`EventEnvelope`], [`MessageView`],
//! …): a field's doc comment is its description, and a key is required exactly when the
//! serializer writes it for an example with every optional value empty. The committed
//! `assets/asyncapi.json` is this function's output; a unit test fails when they differ
//! (`UPDATE_CONTRACTS=1 cargo test --lib contracts` writes it again).

use crate::domain::catalogue::{ErrorDetail, JobError, JobFailure, PLACEHOLDER_NOTICE_CODE};
use crate::domain::event::{EventEnvelope, EventFrame, JobEventKind};
use crate::domain::frames::{
    ControlFrame, ErrorFrame, HelloFrame, JobPositionFrame, JobPositionsFrame, PongFrame,
    ResyncFrame, SnapshotFrame,
};
use crate::domain::message::{MessageView, Notice};
use crate::domain::params::GenerationParams;
use crate::domain::position_feed::JobPosition;
use crate::domain::status::JobStatus;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// The hand-written part of the document.
const BASE: &str = include_str!("../../assets/asyncapi.base.json");

/// The document.
pub fn document() -> Value {
    let mut doc: Value = serde_json::from_str(BASE).unwrap_or_else(|_| json!({}));
    let mut frames = Map::new();
    control_frame_schemas(&mut frames);
    event_frame_schemas(&mut frames);
    for schema in frames.values_mut() {
        pattern_uuids(schema);
    }
    let mut schemas = shared_schemas();
    schemas.extend(frames);
    if let Some(Value::Object(base)) = doc.pointer_mut("/components/schemas") {
        base.extend(schemas);
    }
    doc
}

/// A lowercase hyphenated UUID, as the server writes every id.
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Gives every `"format": "uuid"` string its pattern: validators of draft-07 (AsyncAPI's
/// schema format) do not know the `uuid` format, so without one any string would pass.
fn pattern_uuids(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("format").and_then(Value::as_str) == Some("uuid") {
                object.insert("pattern".into(), json!(UUID_PATTERN));
            }
            object.values_mut().for_each(pattern_uuids);
        }
        Value::Array(items) => items.iter_mut().for_each(pattern_uuids),
        _ => {}
    }
}

/// The document as the committed file holds it: pretty-printed, with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The schemas of the values both documents show (the message view and what it holds, an
/// error), derived once: the OpenAPI document takes these too, so the two agree.
pub fn shared_schemas() -> Map<String, Value> {
    let mut schemas = Map::new();
    value_schemas(&mut schemas);
    for schema in schemas.values_mut() {
        pattern_uuids(schema);
    }
    schemas
}

/// The schemas of the values frames carry (the message view and what it holds).
fn value_schemas(schemas: &mut Map<String, Value>) {
    add::<MessageView>(schemas, &MessageView::example());
    add::<GenerationParams>(schemas, &GenerationParams::default());
    add::<Notice>(schemas, &Notice::placeholder());
    add::<JobPosition>(
        schemas,
        &JobPosition {
            id: Uuid::nil(),
            queue_position: 1,
            eta_s: None,
        },
    );
    add::<JobError>(schemas, &JobFailure::Unknown.to_error());
    add::<ErrorDetail>(
        schemas,
        &ErrorDetail::from(&crate::domain::catalogue::ApiError::NotFound),
    );
    schemas.insert("JobStatus".into(), to_value(JobStatus::schema()));
    let codes: Vec<&str> = JobFailure::every().iter().map(JobFailure::code).collect();
    schemas["JobError"]["properties"]["code"]["enum"] = json!(codes);
    schemas["Notice"]["properties"]["code"]["const"] = json!(PLACEHOLDER_NOTICE_CODE);
}

/// One schema per frame that is not a job event.
fn control_frame_schemas(schemas: &mut Map<String, Value>) {
    let user = "u";
    control::<HelloFrame>(
        schemas,
        &HelloFrame {
            user,
            server_time: chrono::Utc::now(),
        },
    );
    control::<SnapshotFrame>(schemas, &SnapshotFrame { messages: &[] });
    control::<JobPositionFrame>(
        schemas,
        &JobPositionFrame {
            id: Uuid::nil(),
            queue_position: 1,
            eta_s: None,
            status: JobStatus::Queued,
        },
    );
    control::<JobPositionsFrame>(schemas, &JobPositionsFrame { positions: &[] });
    schemas["JobPositionsFrame"]["properties"]["positions"]["minItems"] = json!(2);
    schemas["JobPositionFrame"]["properties"]["status"] = json!({"const": "queued"});
    control::<PongFrame>(schemas, &PongFrame {});
    control::<ResyncFrame>(schemas, &ResyncFrame {});
    let error = ErrorDetail::from(&crate::domain::catalogue::ApiError::NotFound);
    control::<ErrorFrame>(
        schemas,
        &ErrorFrame {
            error,
            id: None,
            client_ref: None,
        },
    );
}

/// One schema per job event kind: the envelope's fields and the kind's, `status` fixed to
/// the status the kind implies.
fn event_frame_schemas(schemas: &mut Map<String, Value>) {
    let envelope = to_value(EventEnvelope::schema());
    let kinds = to_value(JobEventKind::schema());
    for example in JobEventKind::examples() {
        let kind = example.type_name();
        let Some(variant) = kinds["oneOf"].as_array().and_then(|variants| {
            variants
                .iter()
                .find(|variant| variant["properties"]["type"]["enum"][0] == kind)
        }) else {
            continue;
        };
        let mut schema = variant.clone();
        for (name, property) in envelope["properties"].as_object().into_iter().flatten() {
            schema["properties"][name] = property.clone();
        }
        match example.status() {
            Some(status) => schema["properties"]["status"] = json!({"const": status.as_str()}),
            None => {
                if let Some(properties) = schema["properties"].as_object_mut() {
                    properties.remove("status");
                }
            }
        }
        let frame = EventFrame {
            kind: &example,
            envelope: EventEnvelope {
                id: Uuid::nil(),
                version: Some(1),
                status: example.status(),
            },
        };
        frame_schema(schemas, kind, schema, &frame);
    }
}

/// Adds `T`'s schema, its keys required as `example` has them.
fn add<T: ToSchema + Serialize>(schemas: &mut Map<String, Value>, example: &T) {
    let mut schema = to_value(T::schema());
    close(&mut schema, &to_value(example));
    schemas.insert(T::name().into_owned(), schema);
}

/// Adds the schema of the control frame `F`.
fn control<'a, F: ControlFrame + ToSchema + 'a>(schemas: &mut Map<String, Value>, example: &F) {
    let schema = to_value(F::schema());
    let body: Value = serde_json::from_str(&example.body()).unwrap_or(Value::Null);
    frame_schema(schemas, F::TYPE, schema, &body);
}

/// Adds a frame's schema under `<Type>Frame` (`job.queued` → `JobQueuedFrame`): its `type` a
/// const, `seq` first, and the keys required that `example` has.
fn frame_schema(
    schemas: &mut Map<String, Value>,
    kind: &str,
    mut schema: Value,
    example: &impl Serialize,
) {
    let mut example = to_value(example);
    example["type"] = json!(kind);
    example["seq"] = json!(1);
    schema["type"] = json!("object");
    schema["properties"]["type"] = json!({"type": "string", "const": kind});
    schema["properties"]["seq"] = json!({"$ref": "#/components/schemas/Seq"});
    close(&mut schema, &example);
    schemas.insert(frame_name(kind), schema);
}

/// No key but the schema's, and the keys `example` has required (sorted, so the document
/// is stable).
fn close(schema: &mut Value, example: &Value) {
    let mut required: Vec<&String> = example
        .as_object()
        .map(|object| object.keys().collect())
        .unwrap_or_default();
    required.sort();
    let required = json!(required);
    schema["required"] = required;
    schema["additionalProperties"] = json!(false);
}

/// `job.queued` → `JobQueuedFrame`.
fn frame_name(kind: &str) -> String {
    let mut name: String = kind
        .split(['.', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect();
    name.push_str("Frame");
    name
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what the code generates; with `UPDATE_CONTRACTS=1` the
    /// test writes it instead.
    #[test]
    fn contracts_the_committed_asyncapi_is_the_generated_one() {
        crate::http::check_committed_contract("asyncapi.json", &document_text());
    }

    #[test]
    fn frame_names_are_the_type_in_words() {
        assert_eq!(frame_name("job.queued"), "JobQueuedFrame");
        assert_eq!(frame_name("message.updated"), "MessageUpdatedFrame");
        assert_eq!(frame_name("hello"), "HelloFrame");
    }

    #[test]
    fn every_key_a_frame_has_is_in_its_schema() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for example in JobEventKind::examples() {
            let body: Value = serde_json::from_str(
                &crate::domain::event::JobEvent {
                    user_id: "u".into(),
                    message_id: Uuid::nil(),
                    version: Some(1),
                    kind: example.clone(),
                }
                .frame_body(),
            )
            .unwrap();
            let schema = &schemas[frame_name(example.type_name())];
            for key in body.as_object().unwrap().keys() {
                assert!(
                    schema["properties"].get(key).is_some(),
                    "{}: {key} is not in its schema",
                    example.type_name()
                );
            }
        }
    }
}
