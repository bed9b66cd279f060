//! Routing by model: which queued jobs a backend may take, and which queued jobs count ahead
//! of a job in its position.
//!
//! Each backend offers a set of models (as it last listed them; a backend that stops
//! answering keeps its last list, so positions do not jump while it recovers). A job asks for
//! one model, or for none (it runs on whatever a backend has loaded). The rules:
//!
//! - **Taking.** A free backend takes the queued job with the lowest ticket among those it can
//!   run: every job without a model, and every job whose model it offers. A backend never
//!   takes a job for a model it does not list, and never sits idle behind one.
//! - **Position.** A job's position is 1 + the number of queued jobs ahead of it (lower
//!   tickets) that could take one of its backends: jobs without a model, and jobs whose
//!   model some backend offers that also offers this job's model. When every backend offers
//!   every model, that is every job ahead: first come, first served across all models. A job
//!   whose model no backend lists any more can take no backend and counts for nobody.
//!
//! The position only falls while the job waits (jobs ahead leave; new jobs come behind). It
//! is exact when the backends a job can use all offer the same models as each other (every
//! backend offering everything is the common case); where a job's backends offer different
//! models (backend 1 `a,b`, backend 2 `b,c`, and a job for `b`), a job counted ahead of it
//! may run on a backend it cannot use, and it may start sooner than its position says: the
//! position is then the most jobs that can start before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The models one backend offers, as the queue's pop takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// The models it offers (by name), sorted; empty while it has never listed any.
    pub models: Arc<[Arc<str>]>,
    /// The one it has loaded now, if known (among free backends, the one with a job's model
    /// loaded takes it first).
    pub loaded: Option<Arc<str>>,
}

impl Offer {
    /// Whether this backend may run a job for `model` (`None`: any loaded model).
    pub fn can_run(&self, model: Option<&str>) -> bool {
        match model {
            None => true,
            Some(model) => self
                .models
                .binary_search_by(|offered| offered.as_ref().cmp(model))
                .is_ok(),
        }
    }

    /// Whether this backend has `model` loaded now.
    pub fn has_loaded(&self, model: Option<&str>) -> bool {
        model.is_some() && self.loaded.as_deref() == model
    }
}

/// The models whose jobs count ahead of a job, sorted.
type Counted = Arc<[Arc<str>]>;

/// Which jobs ahead of a job count in its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahead<'a> {
    /// Every job ahead that can take some backend (its backends can run every listed model;
    /// see [`Routing::can_be_run`] for the jobs that can take none).
    All,
    /// Jobs without a model, and jobs for these models (sorted).
    Models(&'a [Arc<str>]),
}

impl Ahead<'_> {
    /// Whether a job for `model` counts.
    pub fn counts(&self, model: Option<&str>) -> bool {
        match (self, model) {
            (Ahead::All, _) | (_, None) => true,
            (Ahead::Models(models), Some(model)) => models
                .binary_search_by(|offered| offered.as_ref().cmp(model))
                .is_ok(),
        }
    }
}

/// Every backend's offer, and from it the rule for positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// Each backend's models, sorted (shared by every [`Offer`] made from them).
    offers: BTreeMap<String, Counted>,
    /// Every model some backend lists.
    listed: BTreeSet<Arc<str>>,
    /// For each model whose backends do not offer every model: the models counted ahead of
    /// its jobs. A model missing here counts every job ahead.
    ahead: HashMap<Arc<str>, Counted>,
}

impl Routing {
    /// The routing for these backends' offers (backend name → model names).
    pub fn new<I, M>(offers: I) -> Routing
    where
        I: IntoIterator<Item = (String, M)>,
        M: IntoIterator<Item = String>,
    {
        let offers: BTreeMap<String, BTreeSet<Arc<str>>> = offers
            .into_iter()
            .map(|(backend, models)| (backend, models.into_iter().map(Arc::from).collect()))
            .collect();
        let every: BTreeSet<&Arc<str>> = offers.values().flatten().collect();
        // Models offered by the same backends count the same jobs: one list per set of
        // backends, shared (a few lists, not one per model).
        let mut by_backends: HashMap<Vec<usize>, Option<Counted>> = HashMap::new();
        let mut ahead = HashMap::new();
        for model in &every {
            let backends: Vec<usize> = offers
                .values()
                .enumerate()
                .filter(|(_, models)| models.contains(*model))
                .map(|(index, _)| index)
                .collect();
            let counted = by_backends.entry(backends).or_insert_with_key(|backends| {
                let shared: BTreeSet<&Arc<str>> = offers
                    .values()
                    .enumerate()
                    .filter(|(index, _)| backends.contains(index))
                    .flat_map(|(_, models)| models)
                    .collect();
                (shared.len() < every.len()).then(|| shared.into_iter().cloned().collect())
            });
            if let Some(counted) = counted {
                ahead.insert((*model).clone(), counted.clone());
            }
        }
        let listed = every.into_iter().cloned().collect();
        let offers = offers
            .into_iter()
            .map(|(backend, models)| (backend, models.into_iter().collect()))
            .collect();
        Routing {
            offers,
            listed,
            ahead,
        }
    }

    /// What `backend` offers (`loaded`: the model it has loaded now, if known).
    pub fn offer(&self, backend: &str, loaded: Option<&str>) -> Offer {
        Offer {
            models: self.offers.get(backend).cloned().unwrap_or_default(),
            loaded: loaded.map(Arc::from),
        }
    }

    /// Which jobs ahead of a job for `model` count in its position.
    pub fn ahead_of(&self, model: Option<&str>) -> Ahead<'_> {
        let Some(model) = model else {
            return Ahead::All;
        };
        match self.ahead.get(model) {
            Some(models) => Ahead::Models(models),
            // Offered by every backend that offers anything, or by none (then the jobs ahead
            // that could take its backend, once one offers it, are all of them).
            None => Ahead::All,
        }
    }

    /// Whether a job for `model` can take some backend: no model, or one a backend lists (or
    /// nothing is known yet: no backend has listed anything). Jobs that cannot (their model
    /// was removed from every backend) count in nobody's position.
    pub fn can_be_run(&self, model: Option<&str>) -> bool {
        model.is_none_or(|model| self.listed.is_empty() || self.listed.contains(model))
    }

    /// Whether no backend has listed any model yet (every position is a rank).
    pub fn knows_nothing(&self) -> bool {
        self.listed.is_empty()
    }

    /// The models whose jobs do not count every job ahead.
    pub fn partial(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.ahead.keys()
    }

    /// Each backend's models, by backend name.
    pub fn offers(&self) -> impl Iterator<Item = (&str, &[Arc<str>])> + '_ {
        self.offers
            .iter()
            .map(|(backend, models)| (backend.as_str(), models.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(offers: &[(&str, &[&str])]) -> Routing {
        Routing::new(offers.iter().map(|(backend, models)| {
            (
                backend.to_string(),
                models.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            )
        }))
    }

    #[test]
    fn when_every_backend_offers_everything_every_job_ahead_counts() {
        let routing = routing(&[("one", &["a", "b"]), ("two", &["b", "a"])]);
        assert_eq!(routing.partial().count(), 0);
        assert_eq!(routing.ahead_of(Some("a")), Ahead::All);
        assert!(routing.can_be_run(Some("a")) && routing.can_be_run(None));
        assert!(!routing.can_be_run(Some("unknown")), "counts for nobody");
        assert!(
            Routing::default().can_be_run(Some("unknown")),
            "nothing is known yet"
        );
        assert_eq!(routing.ahead_of(None), Ahead::All);
        assert_eq!(routing.ahead_of(Some("unknown")), Ahead::All);
    }

    #[test]
    fn with_overlapping_offers_only_jobs_that_share_a_backend_count() {
        let routing = routing(&[("one", &["a", "b"]), ("two", &["b", "c"])]);
        assert_eq!(routing.partial().count(), 2);
        let a = routing.ahead_of(Some("a"));
        assert!(a.counts(Some("a")) && a.counts(Some("b")) && a.counts(None));
        assert!(!a.counts(Some("c")), "a job for c never takes backend one");
        let c = routing.ahead_of(Some("c"));
        assert!(!c.counts(Some("a")) && c.counts(Some("b")));
        // A job for b may use either backend: every job ahead may take one of them.
        assert_eq!(routing.ahead_of(Some("b")), Ahead::All);
    }

    #[test]
    fn a_backend_takes_only_what_it_offers_and_anything_without_a_model() {
        let routing = routing(&[("one", &["b", "a"])]);
        let offer = routing.offer("one", Some("a"));
        assert!(offer.can_run(Some("a")) && offer.can_run(Some("b")) && offer.can_run(None));
        assert!(!offer.can_run(Some("c")));
        assert!(offer.has_loaded(Some("a")) && !offer.has_loaded(Some("b")));
        assert!(!offer.has_loaded(None));
        let unknown = routing.offer("never-listed", None);
        assert!(unknown.can_run(None) && !unknown.can_run(Some("a")));
    }
}
