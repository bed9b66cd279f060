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
/// Longest `conversation_id`.
pub const MAX_ID_CHARS: usize = 255;
/// Longest `sampler_name`.
pub const MAX_SAMPLER_CHARS: usize = 64;
/// Most sampling steps.
pub const MAX_STEPS: i64 = 150;

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
    /// The checkpoint asked for (checked against what the backends offer by the gateway).
    pub model: Option<String>,
    /// Initial client data (an object).
    pub data: Value,
}

/// What one field of a create body may hold. [`CreateRequest::from_json`] checks each field
/// by its rule in [`CREATE_FIELDS`], and the OpenAPI document's request schema is built from
/// the same table, so what is enforced and what is published cannot differ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// A string of `min..=max` characters with no NUL; `not_blank`: not only whitespace.
    Text {
        /// Fewest characters.
        min: usize,
        /// Most characters.
        max: usize,
        /// Whether a string of only whitespace is refused.
        not_blank: bool,
    },
    /// An integer in `min..=max` that is a multiple of `step` (512.0 counts as 512).
    Integer {
        /// Smallest.
        min: i64,
        /// Largest.
        max: i64,
        /// Every accepted value is a multiple of it (1: any integer).
        step: i64,
    },
    /// A number in `min..=max`.
    Number {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// A JSON object of client data, within [`merge::MAX_DATA_BYTES`] and
    /// [`merge::MAX_DATA_DEPTH`], with no NUL in any key or string.
    Data,
}

/// One field of a create body: its name, its rule, and what it is for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FieldRule {
    /// The JSON key.
    pub name: &'static str,
    /// What it may hold.
    pub rule: Rule,
    /// Whether a body must have it (every other field has a default).
    pub required: bool,
    /// One line for the API document, the default included.
    pub about: &'static str,
}

const fn text(
    name: &'static str,
    (min, max): (usize, usize),
    not_blank: bool,
    about: &'static str,
) -> FieldRule {
    FieldRule {
        name,
        rule: Rule::Text {
            min,
            max,
            not_blank,
        },
        required: false,
        about,
    }
}

const fn integer(
    name: &'static str,
    min: i64,
    max: i64,
    step: i64,
    about: &'static str,
) -> FieldRule {
    FieldRule {
        name,
        rule: Rule::Integer { min, max, step },
        required: false,
        about,
    }
}

/// Every field a create body may have, in the order they are checked (the first offending
/// one is named). A key not in this table is refused as unknown.
pub const CREATE_FIELDS: [FieldRule; 11] = [
    FieldRule {
        required: true,
        ..text("prompt", (1, MAX_PROMPT_CHARS), true, "What to draw.")
    },
    text(
        "negative_prompt",
        (0, MAX_PROMPT_CHARS),
        false,
        "What not to draw (default empty).",
    ),
    integer(
        "width",
        MIN_SIDE as i64,
        MAX_SIDE as i64,
        8,
        "Image width in pixels (default 512).",
    ),
    integer(
        "height",
        MIN_SIDE as i64,
        MAX_SIDE as i64,
        8,
        "Image height in pixels (default 512).",
    ),
    integer("steps", 1, MAX_STEPS, 1, "Sampling steps (default 20)."),
    FieldRule {
        name: "cfg_scale",
        rule: Rule::Number { min: 1, max: 30 },
        required: false,
        about: "Classifier-free guidance scale (default 7).",
    },
    text(
        "sampler_name",
        (1, MAX_SAMPLER_CHARS),
        true,
        "Sampler (default \"Euler a\").",
    ),
    integer(
        "seed",
        -1,
        u32::MAX as i64,
        1,
        "-1 for a random seed (default), else the seed.",
    ),
    text(
        "conversation_id",
        (1, MAX_ID_CHARS),
        false,
        "The chat conversation (default none).",
    ),
    text(
        "model",
        (1, MAX_ID_CHARS),
        true,
        "The checkpoint: a name or title of GET /api/v1/models (default DEFAULT_MODEL, else \
         the one the backend has loaded).",
    ),
    FieldRule {
        name: "data",
        rule: Rule::Data,
        required: false,
        about: "Initial client data (default {}).",
    },
];

/// A field's value, checked against its rule.
#[derive(Debug)]
enum Checked {
    Absent,
    Text(String),
    Integer(i64),
    Number(f64),
    Data(Value),
}

impl CreateRequest {
    /// Validates a create body against [`CREATE_FIELDS`], naming the first offending field.
    pub fn from_json(body: &Value) -> Result<CreateRequest, ApiError> {
        let Some(body) = body.as_object() else {
            return Err(ApiError::InvalidJson(BadJson::NotAnObject));
        };
        if let Some(unknown) = body
            .keys()
            .find(|key| !CREATE_FIELDS.iter().any(|field| field.name == key.as_str()))
        {
            return Err(ApiError::invalid(unknown.as_str(), Invalid::UnknownField));
        }
        let mut fields = Fields(Map::new());
        for field in &CREATE_FIELDS {
            let checked = check(field, body.get(field.name))?;
            fields.0.insert(field.name.to_owned(), checked.into_value());
        }
        let defaults = GenerationParams::default();
        Ok(CreateRequest {
            prompt: fields.text("prompt").unwrap_or_default(),
            params: GenerationParams {
                negative_prompt: fields
                    .text("negative_prompt")
                    .unwrap_or(defaults.negative_prompt),
                width: fields.integer("width").map_or(defaults.width, |n| n as u32),
                height: fields
                    .integer("height")
                    .map_or(defaults.height, |n| n as u32),
                steps: fields.integer("steps").map_or(defaults.steps, |n| n as u32),
                cfg_scale: fields.number("cfg_scale").unwrap_or(defaults.cfg_scale),
                sampler_name: fields.text("sampler_name").unwrap_or(defaults.sampler_name),
                seed: fields.integer("seed").unwrap_or(defaults.seed),
            },
            conversation_id: fields.text("conversation_id"),
            model: fields.text("model"),
            data: match fields.0.remove("data") {
                Some(Value::Null) | None => Value::Object(Map::new()),
                Some(data) => data,
            },
        })
    }
}

/// The checked fields of a body by name (null: absent).
struct Fields(Map<String, Value>);

impl Fields {
    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).and_then(Value::as_str).map(str::to_owned)
    }

    fn integer(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }

    fn number(&self, name: &str) -> Option<f64> {
        self.0.get(name).and_then(Value::as_f64)
    }
}

impl Checked {
    fn into_value(self) -> Value {
        match self {
            Checked::Absent => Value::Null,
            Checked::Text(text) => Value::String(text),
            Checked::Integer(number) => Value::from(number),
            Checked::Number(number) => Value::from(number),
            Checked::Data(data) => data,
        }
    }
}

/// Checks one field's value (`None` or null: absent) against its rule.
fn check(field: &FieldRule, value: Option<&Value>) -> Result<Checked, ApiError> {
    let name = field.name;
    let value = match value {
        None | Some(Value::Null) if field.required => {
            return Err(ApiError::invalid(name, Invalid::Required));
        }
        None | Some(Value::Null) => return Ok(Checked::Absent),
        Some(value) => value,
    };
    match field.rule {
        Rule::Text {
            min,
            max,
            not_blank,
        } => {
            let Value::String(text) = value else {
                return Err(ApiError::invalid(name, Invalid::NotText));
            };
            if text.contains('\0') {
                return Err(ApiError::invalid(name, Invalid::Nul));
            }
            let chars = text.chars().count();
            if chars < min || chars > max || (not_blank && text.trim().is_empty()) {
                let invalid = if min == 0 {
                    Invalid::AtMostChars { max }
                } else {
                    Invalid::Chars { min, max }
                };
                return Err(ApiError::invalid(name, invalid));
            }
            Ok(Checked::Text(text.clone()))
        }
        Rule::Integer { min, max, step } => match whole_number(value) {
            Some(number) if (min..=max).contains(&number) && number % step == 0 => {
                Ok(Checked::Integer(number))
            }
            _ if step != 1 => Err(ApiError::invalid(
                name,
                Invalid::ImageSide {
                    min: min as u32,
                    max: max as u32,
                },
            )),
            _ => Err(ApiError::invalid(name, Invalid::Integer { min, max })),
        },
        Rule::Number { min, max } => match value.as_f64() {
            Some(number) if (min as f64..=max as f64).contains(&number) => {
                Ok(Checked::Number(number))
            }
            _ => Err(ApiError::invalid(name, Invalid::Number { min, max })),
        },
        Rule::Data => {
            let mut merged = Value::Object(Map::new());
            merge::merge_client_data(&mut merged, value).map_err(|err| data_error(name, &err))?;
            Ok(Checked::Data(merged))
        }
    }
}

/// A JSON number that is a whole number: JSON has one number type, so 512.0 is the integer
/// 512 (JSON Schema agrees).
fn whole_number(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|number| number.fract() == 0.0 && number.abs() < 1e15)
            .map(|number| number as i64)
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
