//! Client data: JSON Merge Patch (RFC 7396) and the line between client- and server-owned fields.

use serde_json::{Map, Value};

/// Fields of a message only the server writes: every key of its view but `data`, and what
/// the record holds besides (a unit test checks the view against this list). A client patch
/// that names one is refused with `server_owned_field`.
pub const SERVER_OWNED_FIELDS: &[&str] = &[
    "id",
    "seed",
    "model",
    "preview_url",
    "position_unavailable",
    "idempotency_key",
    "client_refs",
    "user_id",
    "status",
    "progress",
    "queue_position",
    "eta_s",
    "ticket",
    "image_url",
    "placeholder",
    "notice",
    "error",
    "error_code",
    "error_message",
    "version",
    "retry_of",
    "backend",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "activity_at",
    "prompt",
    "params",
    "conversation_id",
];

/// Largest client data object, serialized, after a merge.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Deepest nesting allowed in client data.
pub const MAX_DATA_DEPTH: usize = 16;

/// Why a client patch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body names a server-owned field.
    #[error("'{0}' is server-owned")]
    ServerOwned(String),
    /// The body names a field that is neither `data` nor server-owned.
    #[error("unknown field '{0}'")]
    UnknownField(String),
    /// `data` is missing or not an object.
    #[error("data must be an object")]
    NotAnObject,
    /// The patch or the merged result nests deeper than [`MAX_DATA_DEPTH`].
    #[error("data nests too deep")]
    TooDeep,
    /// The merged result is larger than [`MAX_DATA_BYTES`].
    #[error("data is too large")]
    TooLarge,
    /// A key or string holds a NUL character, which no database text column can store.
    #[error("data holds a NUL character")]
    NulCharacter,
}

/// Takes the `data` patch out of a client's update body (`{"data": {...}}`), refusing any
/// other field: server-owned ones by name, anything else as unknown. `ignore` lists envelope
/// keys that are not fields (the WebSocket command's `type` and `id`).
pub fn client_patch_from_body(
    body: &Map<String, Value>,
    ignore: &[&str],
) -> Result<Value, PatchError> {
    for key in body.keys() {
        if key == "data" || ignore.contains(&key.as_str()) {
            continue;
        }
        if SERVER_OWNED_FIELDS.contains(&key.as_str()) {
            return Err(PatchError::ServerOwned(key.clone()));
        }
        return Err(PatchError::UnknownField(key.clone()));
    }
    match body.get("data") {
        Some(patch @ Value::Object(_)) => {
            if depth(patch) > MAX_DATA_DEPTH {
                return Err(PatchError::TooDeep);
            }
            if has_nul(patch) {
                return Err(PatchError::NulCharacter);
            }
            Ok(patch.clone())
        }
        _ => Err(PatchError::NotAnObject),
    }
}

/// Applies a merge patch to client data (RFC 7396: objects merge key by key, anything else
/// replaces, `null` removes), refusing a result over the size limit. On refusal `data` is unchanged.
pub fn merge_client_data(data: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject);
    }
    if has_nul(patch) {
        return Err(PatchError::NulCharacter);
    }
    let mut merged = data.clone();
    json_patch::merge(&mut merged, patch);
    if depth(&merged) > MAX_DATA_DEPTH {
        return Err(PatchError::TooDeep);
    }
    if serialized_len(&merged) > MAX_DATA_BYTES {
        return Err(PatchError::TooLarge);
    }
    *data = merged;
    Ok(())
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether any key or string in `value` holds a NUL character.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn merge_follows_rfc_7396() {
        let mut data = json!({"a": 1, "nested": {"x": 1, "y": 2}, "gone": true});
        merge_client_data(
            &mut data,
            &json!({"nested": {"y": 3, "z": 4}, "gone": null, "b": [1]}),
        )
        .unwrap();
        assert_eq!(
            data,
            json!({"a": 1, "nested": {"x": 1, "y": 3, "z": 4}, "b": [1]})
        );
    }

    #[test]
    fn disjoint_patches_commute() {
        let patches = [
            json!({"p1": {"k": 1}}),
            json!({"p2": 2}),
            json!({"p1": {"j": 0}}),
        ];
        let mut forward = json!({});
        let mut backward = json!({});
        for patch in &patches {
            merge_client_data(&mut forward, patch).unwrap();
        }
        for patch in patches.iter().rev() {
            merge_client_data(&mut backward, patch).unwrap();
        }
        assert_eq!(forward, backward);
        assert_eq!(forward, json!({"p1": {"k": 1, "j": 0}, "p2": 2}));
    }

    #[test]
    fn server_owned_fields_are_refused_by_name() {
        let err = client_patch_from_body(&body(json!({"data": {}, "status": "complete"})), &[]);
        assert_eq!(err, Err(PatchError::ServerOwned("status".into())));
        let err = client_patch_from_body(&body(json!({"image_url": "x"})), &[]);
        assert_eq!(err, Err(PatchError::ServerOwned("image_url".into())));
        let err = client_patch_from_body(&body(json!({"data": {}, "colour": 1})), &[]);
        assert_eq!(err, Err(PatchError::UnknownField("colour".into())));
    }

    #[test]
    fn data_must_be_an_object() {
        assert_eq!(
            client_patch_from_body(&body(json!({"data": [1]})), &[]),
            Err(PatchError::NotAnObject)
        );
        assert_eq!(
            client_patch_from_body(&body(json!({})), &[]),
            Err(PatchError::NotAnObject)
        );
        let ok = client_patch_from_body(
            &body(json!({"type": "update_message", "id": "x", "data": {"a": 1}})),
            &["type", "id"],
        );
        assert_eq!(ok, Ok(json!({"a": 1})));
    }

    #[test]
    fn limits_hold_and_leave_data_unchanged() {
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        assert_eq!(
            client_patch_from_body(&body(json!({"data": deep.clone()})), &[]),
            Err(PatchError::TooDeep)
        );
        let mut data = json!({"keep": 1});
        assert_eq!(
            merge_client_data(&mut data, &deep),
            Err(PatchError::TooDeep)
        );
        let big = json!({"blob": "x".repeat(MAX_DATA_BYTES)});
        assert_eq!(
            merge_client_data(&mut data, &big),
            Err(PatchError::TooLarge)
        );
        assert_eq!(data, json!({"keep": 1}));
        assert_eq!(
            merge_client_data(&mut data, &json!({"a\u{0}": 1})),
            Err(PatchError::NulCharacter)
        );
        assert_eq!(
            merge_client_data(&mut data, &json!({"a": ["\u{0}"]})),
            Err(PatchError::NulCharacter)
        );
    }
}
