//! The body of a txt2img request, read the way Forge's FastAPI reads it: the same defaults,
//! the same lax types and the same 422 error lists, so that a client sees no difference.

use serde_json::{Map, Value, json};

/// The fields of a txt2img request the simulator uses, with Forge's defaults.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Txt2Img {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    /// Negative: pick a random seed.
    pub seed: i64,
    pub sampler_name: String,
    pub batch_size: u32,
    pub n_iter: u32,
    /// `override_settings.sd_model_checkpoint`: the checkpoint to generate with.
    pub checkpoint: Option<String>,
    /// `override_settings_restore_afterwards` (Forge's default: true): load the previous
    /// checkpoint again after this request.
    pub restore_afterwards: bool,
}

impl Txt2Img {
    /// Reads the body the way FastAPI would: invalid JSON and wrong types give FastAPI's 422
    /// error list; unknown fields are ignored. Sizes are clamped to what the simulator serves.
    pub fn parse(body: &[u8]) -> Result<(Txt2Img, Map<String, Value>), Vec<Value>> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![json!({
                "type": "missing",
                "loc": ["body"],
                "msg": "Field required",
                "input": null,
            })]);
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|err| vec![json_invalid(body, &err)])?;
        let Value::Object(fields) = value else {
            return Err(vec![json!({
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": value,
            })]);
        };
        let mut errors = Vec::new();
        let mut reader = FieldReader {
            fields: &fields,
            errors: &mut errors,
        };
        let prompt = reader.string("prompt").unwrap_or_default();
        let negative_prompt = reader.string("negative_prompt").unwrap_or_default();
        let width = reader.int("width").unwrap_or(512);
        let height = reader.int("height").unwrap_or(512);
        let steps = reader.int("steps").unwrap_or(50);
        let cfg_scale = reader.float("cfg_scale").unwrap_or(7.0);
        let seed = reader.int("seed").unwrap_or(-1);
        let sampler_name = reader.string("sampler_name");
        let sampler_index = reader.string("sampler_index");
        let batch_size = reader.int("batch_size").unwrap_or(1);
        let n_iter = reader.int("n_iter").unwrap_or(1);
        let checkpoint = fields
            .get("override_settings")
            .and_then(|settings| settings.get("sd_model_checkpoint"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let restore_afterwards = fields
            .get("override_settings_restore_afterwards")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !errors.is_empty() {
            return Err(errors);
        }
        let request = Txt2Img {
            prompt,
            negative_prompt,
            width: clamp_u32(width, 64, 2048),
            height: clamp_u32(height, 64, 2048),
            steps: clamp_u32(steps, 1, 1000),
            cfg_scale: if cfg_scale.is_finite() {
                cfg_scale
            } else {
                7.0
            },
            seed,
            sampler_name: sampler_name
                .or(sampler_index)
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "Euler".to_owned()),
            batch_size: clamp_u32(batch_size, 1, 8),
            n_iter: clamp_u32(n_iter, 1, 8),
            checkpoint,
            restore_afterwards,
        };
        Ok((request, fields))
    }
}

fn clamp_u32(value: i64, low: u32, high: u32) -> u32 {
    u32::try_from(value.clamp(i64::from(low), i64::from(high))).unwrap_or(low)
}

/// FastAPI's answer to a body that is not JSON; `loc` carries the byte offset of the error.
pub(crate) fn json_invalid(body: &[u8], err: &serde_json::Error) -> Value {
    let offset: usize = body
        .split(|byte| *byte == b'\n')
        .take(err.line().saturating_sub(1))
        .map(|line| line.len() + 1)
        .sum::<usize>()
        + err.column().saturating_sub(1);
    json!({
        "type": "json_invalid",
        "loc": ["body", offset],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": err.to_string()},
    })
}

/// Reads typed fields and collects pydantic-style errors for the wrong ones. A missing field
/// or `null` means "use the default", as every Forge field is optional.
struct FieldReader<'a> {
    fields: &'a Map<String, Value>,
    errors: &'a mut Vec<Value>,
}

impl FieldReader<'_> {
    fn error(&mut self, name: &str, kind: &str, msg: &str, input: &Value) {
        self.errors.push(json!({
            "type": kind,
            "loc": ["body", name],
            "msg": msg,
            "input": input,
        }));
    }

    fn present(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|value| !value.is_null())
    }

    fn string(&mut self, name: &str) -> Option<String> {
        let value = self.present(name)?.clone();
        match value {
            Value::String(text) => Some(text),
            other => {
                self.error(
                    name,
                    "string_type",
                    "Input should be a valid string",
                    &other,
                );
                None
            }
        }
    }

    /// Integers as pydantic's lax mode takes them: numbers with no fraction, numeric strings.
    fn int(&mut self, name: &str) -> Option<i64> {
        let value = self.present(name)?.clone();
        let parsed = match &value {
            Value::Number(number) => number.as_i64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            }),
            Value::String(text) => text.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let (kind, msg) = match &value {
                Value::Number(_) => (
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ),
                Value::String(_) => (
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                ),
                _ => ("int_type", "Input should be a valid integer"),
            };
            self.error(name, kind, msg, &value);
        }
        parsed
    }

    fn float(&mut self, name: &str) -> Option<f64> {
        let value = self.present(name)?.clone();
        let parsed = match &value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let (kind, msg) = match &value {
                Value::String(_) => (
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                ),
                _ => ("float_type", "Input should be a valid number"),
            };
            self.error(name, kind, msg, &value);
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Txt2Img, Vec<Value>> {
        Txt2Img::parse(body.as_bytes()).map(|(params, _)| params)
    }

    #[test]
    fn an_empty_object_takes_forge_defaults() {
        let params = parse("{}").expect("valid");
        assert_eq!(
            params,
            Txt2Img {
                prompt: String::new(),
                negative_prompt: String::new(),
                width: 512,
                height: 512,
                steps: 50,
                cfg_scale: 7.0,
                seed: -1,
                sampler_name: "Euler".into(),
                batch_size: 1,
                n_iter: 1,
                checkpoint: None,
                restore_afterwards: true,
            }
        );
    }

    #[test]
    fn fields_are_read_and_unknown_ones_ignored() {
        let params = parse(
            r#"{"prompt":"a cat","negative_prompt":"dogs","width":768,"height":"320","steps":20.0,
                "cfg_scale":"5.5","seed":42,"sampler_name":"DPM++ 2M","eta":0.3,"s_churn":0,
                "hr_scale":2,"sampler_index":"Euler a","styles":[],"override_settings":{"a":1},
                "batch_size":null}"#,
        )
        .expect("valid");
        assert_eq!(params.prompt, "a cat");
        assert_eq!(params.negative_prompt, "dogs");
        assert_eq!((params.width, params.height), (768, 320));
        assert_eq!(params.steps, 20);
        assert_eq!(params.cfg_scale, 5.5);
        assert_eq!(params.seed, 42);
        assert_eq!(params.sampler_name, "DPM++ 2M");
        assert_eq!(params.batch_size, 1);
    }

    #[test]
    fn the_legacy_sampler_index_is_a_fallback() {
        assert_eq!(
            parse(r#"{"sampler_index":"Euler a"}"#)
                .expect("valid")
                .sampler_name,
            "Euler a"
        );
    }

    #[test]
    fn sizes_are_clamped() {
        let params = parse(r#"{"width":1,"height":100000,"steps":0,"n_iter":99}"#).expect("valid");
        assert_eq!((params.width, params.height), (64, 2048));
        assert_eq!(params.steps, 1);
        assert_eq!(params.n_iter, 8);
    }

    #[test]
    fn invalid_json_is_a_fastapi_422() {
        let errors = parse(r#"{"prompt": "#).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["type"], "json_invalid");
        assert_eq!(errors[0]["loc"][0], "body");
        let errors = parse("").expect_err("empty");
        assert_eq!(errors[0]["type"], "missing");
        let errors = parse("[1]").expect_err("not an object");
        assert_eq!(errors[0]["type"], "model_attributes_type");
        let errors = parse("\u{0}\u{1}").expect_err("binary");
        assert_eq!(errors[0]["type"], "json_invalid");
    }

    #[test]
    fn wrong_types_are_all_reported() {
        let errors = parse(r#"{"width":"wide","steps":2.5,"prompt":5,"cfg_scale":[],"seed":true}"#)
            .expect_err("invalid");
        let fields: Vec<&str> = errors
            .iter()
            .filter_map(|error| error["loc"][1].as_str())
            .collect();
        assert_eq!(fields, ["prompt", "width", "steps", "cfg_scale", "seed"]);
        assert_eq!(errors[1]["type"], "int_parsing");
        assert_eq!(errors[2]["type"], "int_from_float");
    }
}
