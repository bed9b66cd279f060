//! The model catalogue: which checkpoints and samplers each backend offers, and which
//! checkpoint it has loaded, as discovered from the backends themselves.
//!
//! A backend's entry is replaced whole at each discovery, and removed while it cannot answer
//! (a backend that cannot say what it offers is left out until it can). The listing
//! (`GET /api/v1/models`) is the union over the backends that answered.

use crate::domain::routing::Routing;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest checkpoint or sampler name kept.
pub const MAX_NAME_BYTES: usize = 255;

/// Whether `text` may be a checkpoint's or a sampler's name (one a backend lists, or the one
/// Forge says it used): 1..=255 bytes, not only whitespace, no control character.
pub fn is_name(text: &str) -> bool {
    fits(text, MAX_NAME_BYTES)
}

/// Whether `text` is at most `max` bytes, not only whitespace, with no control character.
pub fn fits(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.len() <= max && !text.chars().any(char::is_control)
}

/// One checkpoint as a backend lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The file name without extension (Forge's `model_name`): what a client asks for.
    pub name: String,
    /// Forge's `title`: the file name with its short hash.
    pub title: String,
}

/// One sampler as a backend lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sampler {
    /// Its name (`Euler a`): what `sampler_name` takes.
    pub name: String,
    /// Other names Forge accepts for it (`k_euler_a`).
    pub aliases: Vec<String>,
}

/// What one backend offers, as it answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendModels {
    /// Its checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// Its samplers.
    pub samplers: Vec<Sampler>,
    /// The name of the checkpoint it has loaded, when it is one of `checkpoints`.
    pub loaded: Option<String>,
}

impl BackendModels {
    /// Its checkpoints' names, sorted, each once.
    pub fn names(&self) -> BTreeSet<String> {
        self.checkpoints.iter().map(|c| c.name.clone()).collect()
    }

    /// The name of the checkpoint `asked` names (a name or a title, as Forge accepts).
    pub fn checkpoint_named(&self, asked: &str) -> Option<&Checkpoint> {
        self.checkpoints
            .iter()
            .find(|checkpoint| checkpoint.name == asked || checkpoint.title == asked)
    }
}

/// One model of the listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelEntry {
    /// What `model` takes.
    pub name: String,
    /// Forge's title (file name and short hash), from the first backend that lists it.
    pub title: String,
    /// How many backends offer it.
    pub backends: u32,
    /// On how many it is loaded now.
    pub loaded: u32,
}

/// `GET /api/v1/models`: the union of what the answering backends offer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelListing {
    /// Every checkpoint some backend offers, by name.
    pub models: Vec<ModelEntry>,
    /// Every sampler some backend offers, by name.
    pub samplers: Vec<Sampler>,
}

/// What every backend of this process offers, by backend name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelCatalogue {
    /// What each backend last answered, kept while it cannot answer: routing and positions
    /// do not jump while a backend recovers (its jobs wait for it).
    backends: BTreeMap<String, BackendModels>,
    /// Backends that answered once and cannot answer now: left out of the listing, but what
    /// they offered is still accepted in a create (the job waits for them).
    silent: BTreeSet<String>,
}

impl ModelCatalogue {
    /// Records what `backend` answered; `None` leaves it out (it could not answer). Returns
    /// whether the models it lists changed (and with them the [`Self::routing`]).
    pub fn set(&mut self, backend: &str, offers: Option<BackendModels>) -> bool {
        match offers {
            Some(offers) => {
                let changed =
                    self.backends.get(backend).map(BackendModels::names) != Some(offers.names());
                self.backends.insert(backend.to_owned(), offers);
                self.silent.remove(backend);
                changed
            }
            None => {
                if self.backends.contains_key(backend) {
                    self.silent.insert(backend.to_owned());
                }
                false
            }
        }
    }

    /// Records that `backend` now has `model` loaded (a job switched it), if it offers it.
    pub fn loaded_now(&mut self, backend: &str, model: &str) {
        if let Some(offers) = self.backends.get_mut(backend)
            && let Some(name) = offers.checkpoint_named(model).map(|c| c.name.clone())
        {
            offers.loaded = Some(name);
        }
    }

    /// The routing of queued jobs: the models each backend last listed.
    pub fn routing(&self) -> Routing {
        Routing::new(
            self.backends
                .iter()
                .map(|(backend, offers)| (backend.clone(), offers.names())),
        )
    }

    /// Every checkpoint some backend lists (or listed last, while it cannot answer), sorted.
    pub fn listed_models(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .backends
            .values()
            .flat_map(BackendModels::names)
            .collect();
        names.into_iter().collect()
    }

    /// The checkpoint `backend` has loaded now, if it answers and said.
    pub fn loaded_on(&self, backend: &str) -> Option<&str> {
        self.of(backend)?.loaded.as_deref()
    }

    /// What `backend` offers, if it answers.
    pub fn of(&self, backend: &str) -> Option<&BackendModels> {
        self.backends
            .get(backend)
            .filter(|_| !self.silent.contains(backend))
    }

    /// Whether no backend has answered.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The listing: models and samplers sorted by name, each once.
    pub fn listing(&self) -> ModelListing {
        let mut models: BTreeMap<&str, ModelEntry> = BTreeMap::new();
        let mut samplers: BTreeMap<&str, Sampler> = BTreeMap::new();
        let answering = self
            .backends
            .iter()
            .filter(|(name, _)| !self.silent.contains(*name))
            .map(|(_, offers)| offers);
        for offers in answering {
            for checkpoint in &offers.checkpoints {
                let entry = models
                    .entry(&checkpoint.name)
                    .or_insert_with(|| ModelEntry {
                        name: checkpoint.name.clone(),
                        title: checkpoint.title.clone(),
                        backends: 0,
                        loaded: 0,
                    });
                entry.backends += 1;
                if offers.loaded.as_deref() == Some(checkpoint.name.as_str()) {
                    entry.loaded += 1;
                }
            }
            for sampler in &offers.samplers {
                let entry = samplers.entry(&sampler.name).or_insert_with(|| Sampler {
                    name: sampler.name.clone(),
                    aliases: Vec::new(),
                });
                for alias in &sampler.aliases {
                    if !entry.aliases.contains(alias) {
                        entry.aliases.push(alias.clone());
                    }
                }
            }
        }
        ModelListing {
            models: models.into_values().collect(),
            samplers: samplers.into_values().collect(),
        }
    }

    /// The name of the model `asked` names on some backend (also one that cannot answer right
    /// now: the job waits for it): a checkpoint of that name, else one whose title it is (a
    /// name always wins over another checkpoint's title).
    pub fn model_named(&self, asked: &str) -> Option<String> {
        let checkpoints = || {
            self.backends
                .values()
                .flat_map(|offers| &offers.checkpoints)
        };
        checkpoints()
            .find(|checkpoint| checkpoint.name == asked)
            .or_else(|| checkpoints().find(|checkpoint| checkpoint.title == asked))
            .map(|checkpoint| checkpoint.name.clone())
    }

    /// Whether some backend lists any sampler (a Forge that lists none, or whose list could
    /// not be read as one, says nothing about which samplers it takes).
    pub fn lists_samplers(&self) -> bool {
        self.backends
            .values()
            .any(|offers| !offers.samplers.is_empty())
    }

    /// Whether some backend offers a sampler called `asked` (by name or alias).
    pub fn has_sampler(&self, asked: &str) -> bool {
        self.backends.values().any(|offers| {
            offers
                .samplers
                .iter()
                .any(|sampler| sampler.name == asked || sampler.aliases.iter().any(|a| a == asked))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(names: &[&str], loaded: &str) -> BackendModels {
        BackendModels {
            checkpoints: names
                .iter()
                .map(|name| Checkpoint {
                    name: (*name).to_owned(),
                    title: format!("{name}.safetensors [0]"),
                })
                .collect(),
            samplers: vec![Sampler {
                name: "Euler a".into(),
                aliases: vec!["k_euler_a".into()],
            }],
            loaded: Some(loaded.to_owned()),
        }
    }

    #[test]
    fn the_listing_is_the_union_with_counts() {
        let mut catalogue = ModelCatalogue::default();
        catalogue.set("one", Some(offers(&["a", "b"], "a")));
        catalogue.set("two", Some(offers(&["b", "c"], "b")));
        let listing = catalogue.listing();
        let counts: Vec<(&str, u32, u32)> = listing
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.backends, m.loaded))
            .collect();
        assert_eq!(counts, [("a", 1, 1), ("b", 2, 1), ("c", 1, 0)]);
        assert_eq!(listing.samplers.len(), 1, "one sampler, listed once");
        assert_eq!(listing.samplers[0].aliases, ["k_euler_a"]);
    }

    #[test]
    fn a_backend_that_cannot_answer_is_left_out() {
        let mut catalogue = ModelCatalogue::default();
        catalogue.set("one", Some(offers(&["a"], "a")));
        catalogue.set("two", Some(offers(&["c"], "c")));
        let routing = catalogue.routing();
        catalogue.set("two", None);
        assert_eq!(catalogue.listing().models.len(), 1);
        assert_eq!(
            catalogue.model_named("c"),
            Some("c".into()),
            "still accepted: the job waits for its backend"
        );
        assert_eq!(catalogue.loaded_on("two"), None);
        catalogue.set("never", None);
        assert!(catalogue.of("never").is_none());
        assert_eq!(
            catalogue.routing(),
            routing,
            "its jobs still wait for it, at the same positions"
        );
    }

    #[test]
    fn models_are_found_by_name_or_title_and_samplers_by_name_or_alias() {
        let mut catalogue = ModelCatalogue::default();
        catalogue.set("one", Some(offers(&["a"], "a")));
        assert_eq!(catalogue.model_named("a"), Some("a".into()));
        assert_eq!(catalogue.model_named("a.safetensors [0]"), Some("a".into()));
        assert_eq!(catalogue.model_named("A"), None);
        // A checkpoint whose name is another's title: the name wins.
        catalogue.set(
            "two",
            Some(offers(&["a.safetensors [0]"], "a.safetensors [0]")),
        );
        assert_eq!(
            catalogue.model_named("a.safetensors [0]"),
            Some("a.safetensors [0]".into())
        );
        assert!(catalogue.has_sampler("Euler a"));
        assert!(catalogue.has_sampler("k_euler_a"));
        assert!(!catalogue.has_sampler("Euler A"));
    }

    #[test]
    fn a_backend_that_lists_no_sampler_says_nothing_about_samplers() {
        let mut catalogue = ModelCatalogue::default();
        catalogue.set("odd", Some(BackendModels::default()));
        assert!(!catalogue.is_empty());
        assert!(!catalogue.lists_samplers());
        catalogue.set("one", Some(offers(&["a"], "a")));
        assert!(catalogue.lists_samplers());
    }

    #[test]
    fn a_switch_moves_the_loaded_count() {
        let mut catalogue = ModelCatalogue::default();
        catalogue.set("one", Some(offers(&["a", "b"], "a")));
        catalogue.loaded_now("one", "b");
        catalogue.loaded_now("one", "zzz");
        let loaded: Vec<u32> = catalogue
            .listing()
            .models
            .iter()
            .map(|m| m.loaded)
            .collect();
        assert_eq!(loaded, [0, 1]);
    }
}
