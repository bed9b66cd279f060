//! The simulator's settings: fault mode, latency, failure rate, and how they parse from flags
//! and from the admin endpoint.

use crate::tls::TlsIdentity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How the simulator answers `POST /sdapi/v1/txt2img`. Every other route always answers
/// normally, like a real server whose generation path is broken but whose web layer is alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimMode {
    /// Generate and answer 200 with an image.
    #[default]
    Normal,
    /// Take the generation lock and never answer: a wedged GPU. Interrupt does not help; the
    /// lock is released only when the client closes its connection.
    Hang,
    /// Answer 500 with Forge's CUDA out-of-memory error at once.
    Error500,
    /// Read the request, then reset the connection (TCP RST).
    Reset,
    /// Answer 200 `application/json` whose body is not JSON, as a misbehaving proxy would.
    Garbage,
    /// Announce a body, send part of it, then close the connection.
    Close,
}

impl SimMode {
    /// Every mode, in the order of the documentation.
    pub const ALL: [SimMode; 6] = [
        SimMode::Normal,
        SimMode::Hang,
        SimMode::Error500,
        SimMode::Reset,
        SimMode::Garbage,
        SimMode::Close,
    ];

    /// The name used by flags, JSON and `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            SimMode::Normal => "normal",
            SimMode::Hang => "hang",
            SimMode::Error500 => "error500",
            SimMode::Reset => "reset",
            SimMode::Garbage => "garbage",
            SimMode::Close => "close",
        }
    }
}

impl fmt::Display for SimMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that names no [`SimMode`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?} (expected normal, hang, error500, reset, garbage or close)")]
pub struct ParseModeError(pub String);

impl FromStr for SimMode {
    type Err = ParseModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        SimMode::ALL
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ParseModeError(text.to_owned()))
    }
}

/// How long one generation takes when no `steps_per_second` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// A uniform pick between the two bounds (inclusive), drawn from the seeded generator.
    Range(Duration, Duration),
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(Duration::from_secs(2))
    }
}

/// A text that is neither a human duration nor a `low..high` range of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid latency {text:?}: {reason} (expected a duration such as 2s or a range such as 1s..3s)"
)]
pub struct ParseLatencyError {
    /// The text as given.
    pub text: String,
    /// What was wrong with it.
    pub reason: String,
}

impl FromStr for Latency {
    type Err = ParseLatencyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseLatencyError {
            text: text.to_owned(),
            reason,
        };
        let one = |part: &str| {
            humantime::parse_duration(part.trim()).map_err(|err| fail(format!("{part:?}: {err}")))
        };
        match text.split_once("..") {
            None => Ok(Latency::Fixed(one(text)?)),
            Some((low, high)) => {
                let (low, high) = (one(low)?, one(high)?);
                if low > high {
                    return Err(fail("the lower bound is above the upper bound".into()));
                }
                Ok(Latency::Range(low, high))
            }
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(duration) => write!(f, "{}", humantime::format_duration(*duration)),
            Latency::Range(low, high) => write!(
                f,
                "{}..{}",
                humantime::format_duration(*low),
                humantime::format_duration(*high)
            ),
        }
    }
}

impl Latency {
    /// The shortest duration this latency can give.
    pub fn min(&self) -> Duration {
        match self {
            Latency::Fixed(duration) | Latency::Range(duration, _) => *duration,
        }
    }

    /// A duration for one generation; `unit` in `0.0..=1.0` selects within a range.
    pub(crate) fn pick(&self, unit: f64) -> Duration {
        match self {
            Latency::Fixed(duration) => *duration,
            Latency::Range(low, high) => {
                let span = high.saturating_sub(*low).as_secs_f64();
                *low + Duration::from_secs_f64((span * unit.clamp(0.0, 1.0)).max(0.0))
            }
        }
    }
}

// As text in JSON, the same way the flag takes it, so `GET /sim/config` can be posted back.
impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        latency_from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A latency as text, or as a number of seconds for convenience.
fn latency_from_json(value: &Value) -> Result<Latency, String> {
    match value {
        Value::String(text) => text
            .parse()
            .map_err(|err: ParseLatencyError| err.to_string()),
        Value::Number(number) => match number.as_f64() {
            Some(secs) if secs.is_finite() && (0.0..=1e9).contains(&secs) => {
                Ok(Latency::Fixed(Duration::from_secs_f64(secs)))
            }
            _ => Err(format!("latency {number} is not a number of seconds >= 0")),
        },
        other => Err(format!(
            "latency must be a duration text such as \"2s\" or \"1s..3s\", got {other}"
        )),
    }
}

/// Everything that shapes the simulator's answers. Changing it at run time (see
/// [`SimServer::set_config`](super::SimServer::set_config)) affects requests that arrive later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Generation time when `steps_per_second` is unset.
    pub latency: Latency,
    /// Probability (0..=1) that a txt2img in `normal` mode fails with a fault picked uniformly
    /// among `error500`, `reset` and `garbage`.
    pub fail_rate: f64,
    /// The fault mode of txt2img.
    pub mode: SimMode,
    /// When set, a generation takes `steps / steps_per_second` instead of `latency`, so tests
    /// can make the duration depend on the request.
    pub steps_per_second: Option<f64>,
    /// Seed of the generator behind random seeds, latency picks and failures, so runs repeat.
    pub seed: u64,
    /// Whether `/sdapi/v1/progress` returns a live preview image (Forge's live previews).
    pub previews: bool,
    /// When set, the server speaks HTTPS with this certificate and key instead of HTTP. Read
    /// once by [`SimServer::start`](super::SimServer::start): a running server keeps the
    /// identity it started with. Not part of the JSON of `/sim/config`.
    #[serde(skip)]
    pub tls: Option<TlsIdentity>,
    /// The checkpoints offered (`GET /sdapi/v1/sd-models`); the first is loaded at start.
    pub models: Vec<String>,
    /// What loading another checkpoint costs, inside the generation lock as on a GPU.
    #[serde(with = "duration_text")]
    pub model_switch: Duration,
}

/// A duration in JSON as human text ("3s", "250ms").
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Latency::default(),
            fail_rate: 0.0,
            mode: SimMode::Normal,
            steps_per_second: None,
            seed: 0,
            previews: true,
            tls: None,
            models: vec![crate::models::DEFAULT_MODEL.to_owned()],
            model_switch: Duration::ZERO,
        }
    }
}

/// A setting outside its allowed values, as one line naming it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SimConfigError(pub String);

impl SimConfig {
    /// Checks the values that types alone do not constrain.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        check_fail_rate(self.fail_rate).map_err(SimConfigError)?;
        crate::models::check_models(&self.models).map_err(SimConfigError)?;
        if let Some(rate) = self.steps_per_second {
            check_steps_per_second(rate).map_err(SimConfigError)?;
        }
        if let Latency::Range(low, high) = self.latency
            && low > high
        {
            return Err(SimConfigError(
                "latency: the lower bound is above the upper bound".into(),
            ));
        }
        Ok(())
    }

    /// The config with the fields present in `patch` replaced (the body of `POST /sim/config`).
    /// Unknown fields are refused so that a typo is not silently ignored.
    pub fn patched(&self, patch: &Value) -> Result<SimConfig, SimConfigError> {
        let Value::Object(fields) = patch else {
            return Err(SimConfigError(format!(
                "the body must be a JSON object, got {patch}"
            )));
        };
        let mut next = self.clone();
        apply(&mut next, fields).map_err(SimConfigError)?;
        next.validate()?;
        Ok(next)
    }
}

fn apply(config: &mut SimConfig, fields: &Map<String, Value>) -> Result<(), String> {
    for (name, value) in fields {
        match name.as_str() {
            "mode" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("mode must be a string, got {value}"))?;
                config.mode = text
                    .parse()
                    .map_err(|err: ParseModeError| err.to_string())?;
            }
            "latency" => config.latency = latency_from_json(value)?,
            "fail_rate" => {
                config.fail_rate = value
                    .as_f64()
                    .ok_or_else(|| format!("fail_rate must be a number, got {value}"))?;
            }
            "steps_per_second" => {
                config.steps_per_second = match value {
                    Value::Null => None,
                    other => Some(other.as_f64().ok_or_else(|| {
                        format!("steps_per_second must be a number or null, got {other}")
                    })?),
                };
            }
            "previews" => {
                config.previews = value
                    .as_bool()
                    .ok_or_else(|| format!("previews must be true or false, got {value}"))?;
            }
            "seed" => {
                config.seed = value
                    .as_u64()
                    .ok_or_else(|| format!("seed must be an integer >= 0, got {value}"))?;
            }
            "models" => {
                config.models = serde_json::from_value(value.clone()).map_err(|_| {
                    format!("models must be a list of checkpoint names, got {value}")
                })?;
            }
            "model_switch" => {
                let text = value.as_str().ok_or_else(|| {
                    format!("model_switch must be a duration text such as \"3s\", got {value}")
                })?;
                config.model_switch = humantime::parse_duration(text)
                    .map_err(|err| format!("model_switch {text:?}: {err}"))?;
            }
            other => return Err(format!("unknown setting {other:?}")),
        }
    }
    Ok(())
}

/// Shared by the flag parser and the admin endpoint so both say the same thing.
pub(crate) fn check_fail_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("fail_rate must be between 0 and 1, got {rate}"))
    }
}

/// Shared by the flag parser and the admin endpoint so both say the same thing.
pub(crate) fn check_steps_per_second(rate: f64) -> Result<(), String> {
    if rate.is_finite() && rate > 0.0 {
        Ok(())
    } else {
        Err(format!("steps_per_second must be above 0, got {rate}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn latency_parses_a_duration_or_a_range() {
        assert_eq!(
            "2s".parse::<Latency>(),
            Ok(Latency::Fixed(Duration::from_secs(2)))
        );
        assert_eq!(
            "250ms".parse::<Latency>(),
            Ok(Latency::Fixed(Duration::from_millis(250)))
        );
        assert_eq!("0".parse::<Latency>(), Ok(Latency::Fixed(Duration::ZERO)));
        assert_eq!(
            "1s..3s".parse::<Latency>(),
            Ok(Latency::Range(
                Duration::from_secs(1),
                Duration::from_secs(3)
            ))
        );
        assert_eq!(
            " 500ms .. 1s ".parse::<Latency>(),
            Ok(Latency::Range(
                Duration::from_millis(500),
                Duration::from_secs(1)
            ))
        );
    }

    #[test]
    fn bad_latencies_are_refused() {
        for text in ["", "soon", "3s..1s", "1s..", "..2s", "1s..2s..3s", "-1s"] {
            assert!(text.parse::<Latency>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn latency_round_trips_through_display_and_json() {
        for text in ["2s", "1s..3s", "0s", "1s 500ms..2m"] {
            let latency: Latency = text.parse().expect("valid");
            assert_eq!(latency.to_string().parse::<Latency>(), Ok(latency));
            let json = serde_json::to_value(latency).expect("serializable");
            assert_eq!(serde_json::from_value::<Latency>(json).ok(), Some(latency));
        }
    }

    #[test]
    fn a_range_picks_within_its_bounds() {
        let range = Latency::Range(Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(range.pick(0.0), Duration::from_secs(1));
        assert_eq!(range.pick(1.0), Duration::from_secs(3));
        assert_eq!(range.pick(0.5), Duration::from_secs(2));
        assert_eq!(range.pick(7.0), Duration::from_secs(3));
    }

    #[test]
    fn modes_parse_and_display_by_name() {
        for mode in SimMode::ALL {
            assert_eq!(mode.to_string().parse::<SimMode>(), Ok(mode));
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(json!(mode.to_string()))
            );
        }
        assert_eq!("Error500".parse::<SimMode>(), Ok(SimMode::Error500));
        assert!("broken".parse::<SimMode>().is_err());
        assert!("".parse::<SimMode>().is_err());
    }

    #[test]
    fn the_default_config_is_the_documented_one() {
        let config = SimConfig::default();
        assert_eq!(config.latency, Latency::Fixed(Duration::from_secs(2)));
        assert_eq!(config.fail_rate, 0.0);
        assert_eq!(config.mode, SimMode::Normal);
        assert_eq!(config.steps_per_second, None);
        assert_eq!(config.seed, 0);
        assert!(config.previews);
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let config = SimConfig::default();
        let next = config
            .patched(&json!({"mode": "hang", "latency": "1s..2s", "steps_per_second": 20}))
            .expect("valid patch");
        assert_eq!(next.mode, SimMode::Hang);
        assert_eq!(
            next.latency,
            Latency::Range(Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(next.steps_per_second, Some(20.0));
        assert_eq!(next.fail_rate, 0.0);
        assert!(next.previews);
        let cleared = next
            .patched(&json!({"steps_per_second": null, "latency": 0.5}))
            .expect("valid patch");
        assert_eq!(cleared.steps_per_second, None);
        assert_eq!(cleared.latency, Latency::Fixed(Duration::from_millis(500)));
    }

    #[test]
    fn bad_patches_are_refused() {
        let config = SimConfig::default();
        for patch in [
            json!({"mode": "broken"}),
            json!({"mode": 3}),
            json!({"fail_rate": 1.5}),
            json!({"fail_rate": -0.1}),
            json!({"fail_rate": "half"}),
            json!({"latency": "soon"}),
            json!({"latency": -1}),
            json!({"steps_per_second": 0}),
            json!({"steps_per_second": "fast"}),
            json!({"previews": "yes"}),
            json!({"seed": -3}),
            json!({"colour": "blue"}),
            json!([1, 2]),
            json!("normal"),
        ] {
            assert!(config.patched(&patch).is_err(), "{patch} accepted");
        }
    }

    #[test]
    fn the_whole_config_round_trips_through_json() {
        let config = SimConfig {
            latency: Latency::Range(Duration::from_millis(100), Duration::from_secs(1)),
            fail_rate: 0.25,
            mode: SimMode::Garbage,
            steps_per_second: Some(12.5),
            seed: 9,
            previews: false,
            tls: None,
            models: vec!["a".into(), "b".into()],
            model_switch: Duration::from_millis(1500),
        };
        let json = serde_json::to_value(&config).expect("serializable");
        assert_eq!(json["latency"], json!("100ms..1s"));
        assert_eq!(json["model_switch"], json!("1s 500ms"));
        assert_eq!(json["mode"], json!("garbage"));
        assert_eq!(serde_json::from_value::<SimConfig>(json).ok(), Some(config));
    }
}
