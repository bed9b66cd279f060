//! Validation of a create request: the prompt, the generation parameters, and their limits.

use crate::domain::catalogue::{ApiError, BadJson, Invalid};
use crate::domain::merge::{self, PatchError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest prompt (and negative prompt), in characters.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Smallest and largest image side, in pixels.
pub const MIN_SIDE: u32 = 64;
/// See [`MIN_SIDE`].
pub const MAX_SIDE: u32 = 2048;
/// Longest `conversation_id` and `sampler_name`.
pub const MAX_ID_CHARS: usize = 255;

/// Generation parameters of a job, validated, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct GenerationParams {
    /// What the image should not show.
    pub negative_prompt: String,
    /// Width in pixels: 64..=2048, a multiple of 8.
    pub width: u32,
    /// Height in pixels: 64..=2048, a multiple of 8.
    pub height: u32,
    /// Sampling steps: 1..=150.
    pub steps: u32,
    /// Classifier-free guidance scale: 1..=30.
    pub cfg_scale: f64,
    /// Sampler name; Forge falls back to its default for unknown names.
    pub sampler_name: String,
    /// `-1` for a random seed.
    pub seed: i64,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            steps: 20,
            cfg_scale: 7.0,
            sampler_name: "Euler a".to_owned(),
            seed: -1,
        }
    }
}

/// A validated `POST /api/v1/messages` body.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateRequest {
    /// The prompt, 1..=2000 characters.
    pub prompt: String,
    /// Its generation parameters.
    pub params: GenerationParams,
    /// The chat conversation, if given.
    pub conversation_id: Option<String>,
    /// Initial client data (an object).
    pub data: Value,
}

const FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "sampler_name",
    "seed",
    "conversation_id",
    "data",
];

impl CreateRequest {
    /// Validates a create body, naming the first offending field.
    pub fn from_json(body: &Value) -> Result<CreateRequest, ApiError> {
        let Some(body) = body.as_object() else {
            return Err(ApiError::InvalidJson(BadJson::NotAnObject));
        };
        if let Some(unknown) = body.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(ApiError::invalid(unknown.as_str(), Invalid::UnknownField));
        }
        let prompt =
            text(body, "prompt")?.ok_or_else(|| ApiError::invalid("prompt", Invalid::Required))?;
        if prompt.trim().is_empty() || prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(ApiError::invalid(
                "prompt",
                Invalid::Chars {
                    min: 1,
                    max: MAX_PROMPT_CHARS,
                },
            ));
        }
        let params = generation_params(body)?;
        let conversation_id = text(body, "conversation_id")?;
        if let Some(id) = &conversation_id
            && (id.is_empty() || id.chars().count() > MAX_ID_CHARS)
        {
            return Err(ApiError::invalid(
                "conversation_id",
                Invalid::Chars {
                    min: 1,
                    max: MAX_ID_CHARS,
                },
            ));
        }
        let data = match body.get("data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(data) => {
                let mut merged = Value::Object(Map::new());
                merge::merge_client_data(&mut merged, data)
                    .map_err(|err| data_error("data", &err))?;
                merged
            }
        };
        Ok(CreateRequest {
            prompt,
            params,
            conversation_id,
            data,
        })
    }
}

/// The generation parameters of a create body, each defaulted when absent.
fn generation_params(body: &Map<String, Value>) -> Result<GenerationParams, ApiError> {
    let defaults = GenerationParams::default();
    let negative_prompt = text(body, "negative_prompt")?.unwrap_or(defaults.negative_prompt);
    if negative_prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "negative_prompt",
            Invalid::AtMostChars {
                max: MAX_PROMPT_CHARS,
            },
        ));
    }
    let width = side(body, "width")?.unwrap_or(defaults.width);
    let height = side(body, "height")?.unwrap_or(defaults.height);
    let steps = integer(body, "steps", 1, 150)?.map_or(defaults.steps, |s| s as u32);
    let cfg_scale = match body.get("cfg_scale") {
        None | Some(Value::Null) => defaults.cfg_scale,
        Some(value) => match value.as_f64() {
            Some(scale) if (1.0..=30.0).contains(&scale) => scale,
            _ => {
                return Err(ApiError::invalid(
                    "cfg_scale",
                    Invalid::Number { min: 1, max: 30 },
                ));
            }
        },
    };
    let sampler_name = text(body, "sampler_name")?.unwrap_or(defaults.sampler_name);
    if sampler_name.trim().is_empty() || sampler_name.chars().count() > 64 {
        return Err(ApiError::invalid(
            "sampler_name",
            Invalid::Chars { min: 1, max: 64 },
        ));
    }
    let seed = integer(body, "seed", -1, u32::MAX as i64)?.unwrap_or(defaults.seed);
    Ok(GenerationParams {
        negative_prompt,
        width,
        height,
        steps,
        cfg_scale,
        sampler_name,
        seed,
    })
}

/// The validation error for a refused client data patch.
pub fn data_error(field: &str, err: &PatchError) -> ApiError {
    match err {
        PatchError::ServerOwned(name) => ApiError::ServerOwnedField {
            field: name.clone(),
        },
        PatchError::UnknownField(name) => ApiError::invalid(name.as_str(), Invalid::UnknownField),
        PatchError::NotAnObject => ApiError::invalid(field, Invalid::NotAnObject),
        PatchError::TooDeep => ApiError::invalid(
            field,
            Invalid::TooDeep {
                max: merge::MAX_DATA_DEPTH,
            },
        ),
        PatchError::TooLarge => ApiError::invalid(
            field,
            Invalid::TooLarge {
                kib: merge::MAX_DATA_BYTES / 1024,
            },
        ),
        PatchError::NulCharacter => ApiError::invalid(field, Invalid::Nul),
    }
}

fn text(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.contains('\0') => {
            Err(ApiError::invalid(field, Invalid::Nul))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::invalid(field, Invalid::NotText)),
    }
}

fn integer(
    body: &Map<String, Value>,
    field: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        // JSON has one number type: 512.0 is the integer 512 (JSON Schema agrees).
        Some(value) => match value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|number| number.fract() == 0.0 && number.abs() < 1e15)
                .map(|number| number as i64)
        }) {
            Some(number) if (min..=max).contains(&number) => Ok(Some(number)),
            _ => Err(ApiError::invalid(field, Invalid::Integer { min, max })),
        },
    }
}

fn side(body: &Map<String, Value>, field: &str) -> Result<Option<u32>, ApiError> {
    let error = || {
        ApiError::invalid(
            field,
            Invalid::ImageSide {
                min: MIN_SIDE,
                max: MAX_SIDE,
            },
        )
    };
    match integer(body, field, MIN_SIDE as i64, MAX_SIDE as i64) {
        Ok(Some(side)) if side % 8 == 0 => Ok(Some(side as u32)),
        Ok(Some(_)) | Err(_) => Err(error()),
        Ok(None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match CreateRequest::from_json(&body) {
            Err(err) => err.field().unwrap_or("-").to_owned(),
            Ok(_) => "ok".to_owned(),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let request = CreateRequest::from_json(&json!({"prompt": "a cat"})).unwrap();
        assert_eq!(request.params, GenerationParams::default());
        assert_eq!(request.data, json!({}));
        assert_eq!(request.conversation_id, None);
    }

    #[test]
    fn limits_are_the_documented_ones() {
        assert_eq!(field_of(json!({"prompt": ""})), "prompt");
        assert_eq!(field_of(json!({"prompt": "   "})), "prompt");
        assert_eq!(field_of(json!({"prompt": "x".repeat(2000)})), "ok");
        assert_eq!(field_of(json!({"prompt": "ç".repeat(2000)})), "ok");
        assert_eq!(field_of(json!({"prompt": "x".repeat(2001)})), "prompt");
        assert_eq!(field_of(json!({})), "prompt");
        assert_eq!(field_of(json!({"prompt": 5})), "prompt");
        for (width, ok) in [
            (64, true),
            (2048, true),
            (56, false),
            (2056, false),
            (65, false),
            (512, true),
        ] {
            assert_eq!(
                field_of(json!({"prompt": "p", "width": width})) == "ok",
                ok,
                "width {width}"
            );
            assert_eq!(
                field_of(json!({"prompt": "p", "height": width})) == "ok",
                ok,
                "height {width}"
            );
        }
        assert_eq!(field_of(json!({"prompt": "p", "width": 512.5})), "width");
        assert_eq!(
            field_of(json!({"prompt": "p", "width": 512.0, "seed": 488.0})),
            "ok"
        );
        assert_eq!(field_of(json!({"prompt": "p", "width": "512"})), "width");
        assert_eq!(field_of(json!({"prompt": "p", "steps": 0})), "steps");
        assert_eq!(field_of(json!({"prompt": "p", "steps": 150})), "ok");
        assert_eq!(field_of(json!({"prompt": "p", "steps": 151})), "steps");
        assert_eq!(
            field_of(json!({"prompt": "p", "cfg_scale": 0.5})),
            "cfg_scale"
        );
        assert_eq!(field_of(json!({"prompt": "p", "cfg_scale": 30})), "ok");
        assert_eq!(
            field_of(json!({"prompt": "p", "cfg_scale": 30.5})),
            "cfg_scale"
        );
        assert_eq!(field_of(json!({"prompt": "p", "seed": -2})), "seed");
        assert_eq!(
            field_of(json!({"prompt": "p", "seed": 4294967295u64})),
            "ok"
        );
        assert_eq!(
            field_of(json!({"prompt": "p", "sampler_name": ""})),
            "sampler_name"
        );
        assert_eq!(
            field_of(json!({"prompt": "p", "conversation_id": ""})),
            "conversation_id"
        );
        assert_eq!(field_of(json!({"prompt": "p", "data": [1]})), "data");
        assert_eq!(field_of(json!({"prompt": "p", "colour": "red"})), "colour");
        assert_eq!(field_of(json!({"prompt": "a\u{0}b"})), "prompt");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_invalid_json() {
        let err = CreateRequest::from_json(&json!([1])).unwrap_err();
        assert_eq!(err.code(), "invalid_json");
    }
}
