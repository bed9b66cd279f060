//! Checkpoints and samplers as Forge lists them, and which checkpoint a request asks for.
//!
//! Forge lists its checkpoints at `GET /sdapi/v1/sd-models` (a `title`, the file name with
//! its short hash, and a `model_name`, the file name without extension), names the loaded one
//! in `GET /sdapi/v1/options` (`sd_model_checkpoint`, a title), and switches per request with
//! `override_settings: {"sd_model_checkpoint": …}` given a title or a name. A checkpoint it
//! does not know is ignored silently: the request runs on the loaded one.

use serde_json::{Value, json};

/// The model a simulator offers when none are configured.
pub const DEFAULT_MODEL: &str = "sim-model";

/// The samplers every simulator offers, with their aliases, as Forge names them.
pub(crate) const SAMPLERS: &[(&str, &[&str])] = &[
    ("Euler a", &["k_euler_a", "k_euler_ancestral"]),
    ("Euler", &["k_euler"]),
    ("DPM++ 2M", &["k_dpmpp_2m"]),
    ("DPM++ SDE", &["k_dpmpp_sde"]),
    ("DDIM", &[]),
    ("UniPC", &[]),
];

/// A checkpoint's title: its file name and a short hash of it, as Forge shows it.
pub(crate) fn title(name: &str) -> String {
    format!("{name}.safetensors [{:010x}]", short_hash(name))
}

/// The model of `models` that `asked` names (a title or a name, as Forge accepts), if any.
pub(crate) fn find<'a>(models: &'a [String], asked: &str) -> Option<&'a String> {
    let asked = asked.trim();
    models
        .iter()
        .find(|name| name.as_str() == asked || title(name) == asked)
}

/// The body of `GET /sdapi/v1/sd-models`.
pub(crate) fn sd_models_json(models: &[String]) -> Value {
    Value::Array(
        models
            .iter()
            .map(|name| {
                json!({
                    "title": title(name),
                    "model_name": name,
                    "hash": format!("{:010x}", short_hash(name)),
                    "sha256": null,
                    "filename": format!("/models/Stable-diffusion/{name}.safetensors"),
                    "config": null,
                })
            })
            .collect(),
    )
}

/// The body of `GET /sdapi/v1/samplers`.
pub(crate) fn samplers_json() -> Value {
    Value::Array(
        SAMPLERS
            .iter()
            .map(|(name, aliases)| json!({"name": name, "aliases": aliases, "options": {}}))
            .collect(),
    )
}

/// What the `models` setting must be, from the flag or the admin endpoint: at least one
/// checkpoint, each named, none twice.
pub(crate) fn check_models(models: &[String]) -> Result<(), String> {
    if models.is_empty() {
        return Err("models: at least one checkpoint is needed".into());
    }
    for (index, name) in models.iter().enumerate() {
        if name.trim().is_empty() || name.len() > 255 {
            return Err(format!(
                "models: {name:?} is not a checkpoint name (1..=255 bytes)"
            ));
        }
        if models[..index].contains(name) {
            return Err(format!("models: {name:?} is listed twice"));
        }
    }
    Ok(())
}

/// FNV-1a of the name, cut to 40 bits: stable across runs, like a file's hash.
fn short_hash(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash & 0xff_ffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_found_by_name_or_title_and_nothing_else() {
        let models = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(find(&models, "b"), Some(&models[1]));
        assert_eq!(find(&models, &title("a")), Some(&models[0]));
        assert_eq!(find(&models, "c"), None);
        assert_eq!(find(&models, "a.safetensors [0000000000]"), None);
        assert!(title("a").starts_with("a.safetensors ["));
    }

    #[test]
    fn the_lists_have_forge_s_shape() {
        let models = sd_models_json(&["a".to_owned()]);
        assert_eq!(models[0]["model_name"], "a");
        assert_eq!(models[0]["title"], title("a"));
        let samplers = samplers_json();
        assert_eq!(samplers[0]["name"], "Euler a");
        assert_eq!(samplers[0]["aliases"][0], "k_euler_a");
    }
}
