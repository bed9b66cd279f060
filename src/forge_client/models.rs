//! Discovery: what one backend offers (`GET /sdapi/v1/sd-models`, `/sdapi/v1/samplers`) and
//! which checkpoint it has loaded (`GET /sdapi/v1/options` → `sd_model_checkpoint`).

use super::ForgeClient;
use super::failure::ForgeFailure;
use crate::domain::models::{BackendModels, Checkpoint, Sampler, fits, is_name};
use serde_json::Value;
use std::time::Duration;

/// The most a list or the options may hold. Forge's options object is about 100 KiB; a
/// checkpoint entry about 300 bytes, so this is room for thousands.
pub const MAX_LIST_ANSWER: usize = 4 * 1024 * 1024;

/// The most checkpoints or samplers kept of one answer (a backend listing more is cut).
pub const MAX_LISTED: usize = 2_000;

/// Longest checkpoint title kept (a name, `.safetensors` and a hash); a longer one is skipped.
const MAX_TITLE_BYTES: usize = 512;

impl ForgeClient {
    /// What the backend offers now, each of the three reads within `deadline`.
    pub async fn models(&self, deadline: Duration) -> Result<BackendModels, ForgeFailure> {
        let checkpoints = read_checkpoints(&self.get_json("/sdapi/v1/sd-models", deadline).await?)?;
        let samplers = read_samplers(&self.get_json("/sdapi/v1/samplers", deadline).await?);
        let options = self.get_json("/sdapi/v1/options", deadline).await?;
        let loaded = options
            .get("sd_model_checkpoint")
            .and_then(Value::as_str)
            .and_then(|asked| {
                checkpoints
                    .iter()
                    .find(|c| c.title == asked || c.name == asked)
                    .map(|c| c.name.clone())
            });
        Ok(BackendModels {
            checkpoints,
            samplers,
            loaded,
        })
    }

    async fn get_json(&self, path: &str, deadline: Duration) -> Result<Value, ForgeFailure> {
        let bytes = self
            .fetch(reqwest::Method::GET, path, deadline, MAX_LIST_ANSWER)
            .await?;
        serde_json::from_slice(&bytes).map_err(|err| ForgeFailure::unparsable(path, err))
    }
}

fn name(value: Option<&Value>) -> Option<String> {
    let text = value?.as_str()?;
    is_name(text).then(|| text.to_owned())
}

fn title(value: Option<&Value>) -> Option<String> {
    let text = value?.as_str()?;
    fits(text, MAX_TITLE_BYTES).then(|| text.to_owned())
}

/// The checkpoints of a `sd-models` answer; entries without a usable name are skipped. An
/// answer that is not a list, or a non-empty list none of whose entries is a checkpoint, is a
/// bad answer: the backend is left out (its last list kept) rather than taken as listing
/// nothing, which would strand the jobs queued for its models.
fn read_checkpoints(answer: &Value) -> Result<Vec<Checkpoint>, ForgeFailure> {
    let entries = answer
        .as_array()
        .ok_or_else(|| ForgeFailure::bad_answer("sd-models is not a list"))?;
    if !entries.is_empty()
        && !entries
            .iter()
            .any(|entry| entry.get("model_name").is_some())
    {
        return Err(ForgeFailure::bad_answer(
            "sd-models lists no entry with a model_name",
        ));
    }
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for entry in entries {
        let (Some(name), Some(title)) = (name(entry.get("model_name")), title(entry.get("title")))
        else {
            continue;
        };
        if checkpoints.len() < MAX_LISTED && !checkpoints.iter().any(|c| c.name == name) {
            checkpoints.push(Checkpoint { name, title });
        }
    }
    Ok(checkpoints)
}

/// The samplers of a `samplers` answer.
fn read_samplers(answer: &Value) -> Vec<Sampler> {
    let mut samplers: Vec<Sampler> = Vec::new();
    for entry in answer.as_array().into_iter().flatten() {
        let Some(sampler) = name(entry.get("name")) else {
            continue;
        };
        let aliases = entry
            .get("aliases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|alias| name(Some(alias)))
            .take(16)
            .collect();
        if samplers.len() < MAX_LISTED && !samplers.iter().any(|s| s.name == sampler) {
            samplers.push(Sampler {
                name: sampler,
                aliases,
            });
        }
    }
    samplers
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_are_read_leniently_and_bounded() {
        let checkpoints = read_checkpoints(&json!([
            {"model_name": "a", "title": "a.safetensors [1]"},
            {"model_name": "a", "title": "again"},
            {"model_name": "", "title": "blank"},
            {"model_name": "b\u{7}", "title": "control"},
            {"model_name": "x".repeat(300), "title": "long"},
            {"title": "no name"},
            "not an object",
            {"model_name": "c", "title": "c.safetensors [3]"},
        ]))
        .expect("a list");
        let names: Vec<&str> = checkpoints.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(read_checkpoints(&json!({"not": "a list"})).is_err());
        assert!(
            read_checkpoints(&json!([1, 2, 3])).is_err(),
            "no entry is a checkpoint"
        );
        assert_eq!(
            read_checkpoints(&json!([])).ok(),
            Some(Vec::new()),
            "lists nothing"
        );
        let many: Vec<Value> = (0..MAX_LISTED + 10)
            .map(|n| json!({"model_name": format!("m{n}"), "title": format!("m{n}")}))
            .collect();
        assert_eq!(
            read_checkpoints(&Value::Array(many)).map(|c| c.len()).ok(),
            Some(MAX_LISTED)
        );
        let samplers = read_samplers(&json!([
            {"name": "Euler a", "aliases": ["k_euler_a", 5]},
            {"name": 7},
        ]));
        assert_eq!(samplers.len(), 1);
        assert_eq!(samplers[0].aliases, ["k_euler_a"]);
    }
}
