//! The queue's order book: queued jobs in ticket order, with exact 1-based positions.
//!
//! Position = 1 + the number of queued jobs ahead that count for it (every one, unless backends
//! offer different models: see [`crate::domain::routing`]); tickets come from an atomic
//! counter, so the order is the order of submission. The in-process queue store is a `QueueBook` behind a lock;
//! in Redis mode each gateway process keeps a `QueueBook` as a mirror of the shared queue, fed
//! by its totally ordered change feed, to tell its own sessions their positions.
//!
//! Costs, with N jobs queued: adding at the tail and taking the head are O(1) (taking the
//! first job a backend offers looks at the head of each of its models' lanes); a position is a
//! binary search, O(log N) (one per counted lane where backends offer different models); removing from the middle (a cancel) moves the tail of the order,
//! O(N) pointer copies. A change never walks the jobs behind it: who moved is computed when
//! someone asks (see [`QueueBook::positions_of`]), not on every pop, so a pop costs the same
//! whether 10 or 100,000 jobs wait.

use crate::domain::routing::{Ahead, Offer, Routing};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use uuid::Uuid;

/// A job waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// Message id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Arc<str>,
    /// Ticket from the atomic counter.
    pub ticket: i64,
    /// The model it asks for (`None`: whatever a backend has loaded).
    pub model: Option<Arc<str>>,
}

/// One change of the queue, as the change feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueChange {
    /// A job entered the queue.
    Added(QueuedJob),
    /// A job left it (popped by a backend, cancelled, or marked stuck).
    Removed {
        /// Message id.
        id: Uuid,
    },
    /// The whole queue was replaced (a rebuild, or a mirror resync): the new contents.
    Reset(Vec<QueuedJob>),
}

/// Queued jobs in ticket order.
#[derive(Debug, Default, Clone)]
pub struct QueueBook {
    order: VecDeque<(i64, Uuid)>,
    jobs: HashMap<Uuid, QueuedJob>,
    /// Each owner's queued jobs by ticket.
    by_user: HashMap<Arc<str>, BTreeSet<(i64, Uuid)>>,
    /// Queued jobs by the model they ask for, each lane in ticket order.
    lanes: HashMap<Option<Arc<str>>, VecDeque<(i64, Uuid)>>,
    /// What the backends offer: who takes which job, and who counts ahead of whom.
    routing: Arc<Routing>,
    /// Grows with every change that changed something.
    version: u64,
}

impl QueueBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether `id` is queued.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.jobs.contains_key(id)
    }

    /// How many changes changed the book: positions read at a higher version are newer.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Adds a job; returns its position, or `None` if it was queued already (nothing changes).
    /// Jobs behind it (a ticket lower than the tail's: a rebuild or a requeue) move back by one.
    pub fn insert(&mut self, job: QueuedJob) -> Option<u32> {
        if self.jobs.contains_key(&job.id) {
            return None;
        }
        let index = match self.order.back() {
            Some((last, _)) if *last < job.ticket => self.order.len(),
            None => 0,
            _ => self
                .order
                .partition_point(|(ticket, _)| *ticket < job.ticket),
        };
        self.order.insert(index, (job.ticket, job.id));
        let lane = self.lanes.entry(job.model.clone()).or_default();
        let at = lane.partition_point(|(ticket, _)| *ticket < job.ticket);
        lane.insert(at, (job.ticket, job.id));
        self.by_user
            .entry(job.user_id.clone())
            .or_default()
            .insert((job.ticket, job.id));
        let position = self.position_of(&job);
        self.jobs.insert(job.id, job);
        self.version += 1;
        position
    }

    /// Removes a job; returns it and the index it had (0-based).
    pub fn remove(&mut self, id: &Uuid) -> Option<(QueuedJob, usize)> {
        let job = self.jobs.remove(id)?;
        let index = self.index_of(job.ticket, id)?;
        self.order.remove(index);
        self.forget_owner(&job);
        self.version += 1;
        Some((job, index))
    }

    /// Takes the first job (whatever its model).
    pub fn pop_front(&mut self) -> Option<QueuedJob> {
        let (_, id) = *self.order.front()?;
        self.remove(&id).map(|(job, _)| job)
    }

    /// Takes the first job a backend with `offer` may run (see [`crate::domain::routing`]).
    pub fn pop_for(&mut self, offer: &Offer) -> Option<QueuedJob> {
        let id = self.first_for(offer)?;
        self.remove(&id).map(|(job, _)| job)
    }

    /// The first job a backend with `offer` may run.
    pub fn first_for(&self, offer: &Offer) -> Option<Uuid> {
        let (_, head) = self.order.front()?;
        let job = self.jobs.get(head)?;
        if offer.can_run(job.model.as_deref()) {
            return Some(*head);
        }
        let fronts = std::iter::once(None)
            .chain(offer.models.iter().cloned().map(Some))
            .filter_map(|lane| self.lanes.get(&lane)?.front().copied());
        fronts.min().map(|(_, id)| id)
    }

    /// Jobs from the head in order, as far as `limit` of them.
    pub fn head(&self, limit: usize) -> impl Iterator<Item = &QueuedJob> + '_ {
        self.jobs().take(limit)
    }

    /// Sets what the backends offer; returns whether it changed (positions may have).
    pub fn set_routing(&mut self, routing: Arc<Routing>) -> bool {
        if *routing == *self.routing {
            return false;
        }
        self.routing = routing;
        self.version += 1;
        true
    }

    fn forget_owner(&mut self, job: &QueuedJob) {
        if let Some(lane) = self.lanes.get_mut(&job.model) {
            let at = lane.partition_point(|(ticket, _)| *ticket < job.ticket);
            if lane.get(at).map(|(_, id)| id) == Some(&job.id) {
                lane.remove(at);
            }
            if lane.is_empty() {
                self.lanes.remove(&job.model);
            }
        }
        if let Some(tickets) = self.by_user.get_mut(&job.user_id) {
            tickets.remove(&(job.ticket, job.id));
            if tickets.is_empty() {
                self.by_user.remove(&job.user_id);
            }
        }
    }

    /// The job's 1-based position: 1 + the jobs ahead that count for it.
    pub fn position(&self, id: &Uuid) -> Option<u32> {
        self.position_of(self.jobs.get(id)?)
    }

    fn position_of(&self, job: &QueuedJob) -> Option<u32> {
        let index = self.index_of(job.ticket, &job.id)?;
        let ahead = match self.routing.ahead_of(job.model.as_deref()) {
            // Every job ahead but those whose model no backend lists any more (they can take
            // no backend; the watchdog ends them).
            Ahead::All => {
                index
                    - self
                        .lanes
                        .iter()
                        .filter(|(model, _)| !self.routing.can_be_run(model.as_deref()))
                        .map(|(_, lane)| lane.partition_point(|(ticket, _)| *ticket < job.ticket))
                        .sum::<usize>()
            }
            // Over the lanes that hold jobs (the models queued now), not over every model the
            // job's backends list (a backend may list thousands).
            ahead @ Ahead::Models(_) => self
                .lanes
                .iter()
                .filter(|(model, _)| ahead.counts(model.as_deref()))
                .map(|(_, lane)| lane.partition_point(|(ticket, _)| *ticket < job.ticket))
                .sum(),
        };
        Some(ahead as u32 + 1)
    }

    /// The positions of `user`'s queued jobs, in queue order: O(k log N) for k jobs.
    pub fn positions_of(&self, user: &str) -> Vec<(Uuid, u32)> {
        self.positions_of_from(user, None)
            .map(|((_, id), position)| (id, position))
            .collect()
    }

    /// How many jobs `user` has queued.
    pub fn count_of(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, BTreeSet::len)
    }

    /// `user`'s queued jobs with their keys and positions in queue order, starting after the
    /// job keyed `after` (from the first if `None`) and wrapping around to end just at it:
    /// O(log N) per job read, so a caller that reads only some of them pays only for those.
    pub fn positions_of_from(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
    ) -> impl Iterator<Item = ((i64, Uuid), u32)> + '_ {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let tickets = self.by_user.get(user);
        let (tail, head) = match (tickets, after) {
            (Some(tickets), Some(after)) => (
                Some(tickets.range((Excluded(after), Unbounded))),
                Some(tickets.range((Unbounded, Included(after)))),
            ),
            (Some(tickets), None) => (Some(tickets.range(..)), None),
            (None, _) => (None, None),
        };
        tail.into_iter()
            .flatten()
            .chain(head.into_iter().flatten())
            .filter_map(|key| {
                let job = self.jobs.get(&key.1)?;
                self.position_of(job).map(|position| (*key, position))
            })
    }

    /// All jobs in order.
    pub fn jobs(&self) -> impl Iterator<Item = &QueuedJob> + '_ {
        self.order.iter().filter_map(|(_, id)| self.jobs.get(id))
    }

    /// Replaces the contents (jobs in any order; duplicates ignored).
    pub fn reset(&mut self, jobs: Vec<QueuedJob>) {
        self.order.clear();
        self.jobs.clear();
        self.by_user.clear();
        self.lanes.clear();
        let mut jobs = jobs;
        jobs.sort_by_key(|job| job.ticket);
        for job in jobs {
            self.insert(job);
        }
        self.version += 1;
    }

    /// Applies a feed change; returns whether it changed anything.
    pub fn apply(&mut self, change: QueueChange) -> bool {
        match change {
            QueueChange::Added(job) => self.insert(job).is_some(),
            QueueChange::Removed { id } => self.remove(&id).is_some(),
            QueueChange::Reset(jobs) => {
                self.reset(jobs);
                true
            }
        }
    }

    fn index_of(&self, ticket: i64, id: &Uuid) -> Option<usize> {
        let index = self.order.partition_point(|(t, _)| *t < ticket);
        (self.order.get(index).map(|(_, at)| at) == Some(id)).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ticket: i64) -> QueuedJob {
        QueuedJob {
            id: Uuid::from_u128(ticket as u128),
            user_id: Arc::from(format!("u{}", ticket % 3)),
            ticket,
            model: None,
        }
    }

    fn for_model(ticket: i64, model: &str) -> QueuedJob {
        QueuedJob {
            model: Some(Arc::from(model)),
            ..job(ticket)
        }
    }

    fn overlapping() -> Arc<Routing> {
        Arc::new(Routing::new([
            ("one".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("two".to_string(), vec!["b".to_string(), "c".to_string()]),
        ]))
    }

    #[test]
    fn with_overlapping_offers_positions_count_only_jobs_that_share_a_backend() {
        let mut book = QueueBook::new();
        assert!(book.set_routing(overlapping()));
        assert!(
            !book.set_routing(overlapping()),
            "the same routing changes nothing"
        );
        let jobs = [
            for_model(1, "c"),
            for_model(2, "a"),
            for_model(3, "b"),
            for_model(4, "c"),
            job(5),
            for_model(6, "a"),
        ];
        let inserted: Vec<Option<u32>> = jobs.iter().map(|j| book.insert(j.clone())).collect();
        // a: counts a, b and no-model jobs; c: counts b, c and no-model; b and none: all.
        assert_eq!(
            inserted,
            [Some(1), Some(1), Some(3), Some(3), Some(5), Some(4)]
        );
        let routing = overlapping();
        let (one, two) = (
            routing.offer("one", Some("a")),
            routing.offer("two", Some("b")),
        );
        assert_eq!(book.pop_for(&one).map(|j| j.ticket), Some(2));
        assert_eq!(book.pop_for(&two).map(|j| j.ticket), Some(1));
        assert_eq!(book.position(&for_model(6, "a").id), Some(3));
        assert_eq!(book.position(&for_model(4, "c").id), Some(2));
        let none = routing.offer("three", None);
        assert_eq!(book.pop_for(&none).map(|j| j.ticket), Some(5));
        assert_eq!(
            book.pop_for(&none),
            None,
            "a backend that lists nothing takes no model's job"
        );
        assert_eq!(book.pop_for(&two).map(|j| j.ticket), Some(3));
        assert_eq!(book.pop_for(&two).map(|j| j.ticket), Some(4));
        assert_eq!(book.pop_for(&two), None, "never a job for a model it lacks");
        assert_eq!(book.pop_for(&one).map(|j| j.ticket), Some(6));
        assert!(book.is_empty() && book.lanes.is_empty());
    }

    fn positions(book: &QueueBook) -> Vec<(i64, u32)> {
        book.jobs()
            .map(|job| (job.ticket, book.position(&job.id).unwrap()))
            .collect()
    }

    fn assert_consistent(book: &QueueBook) {
        let got: Vec<u32> = positions(book).into_iter().map(|(_, p)| p).collect();
        let want: Vec<u32> = (1..=book.len() as u32).collect();
        assert_eq!(got, want, "gap-free");
        for user in ["u0", "u1", "u2"] {
            let expected: Vec<(Uuid, u32)> = book
                .jobs()
                .filter(|job| &*job.user_id == user)
                .map(|job| (job.id, book.position(&job.id).unwrap()))
                .collect();
            assert_eq!(book.positions_of(user), expected, "{user}'s index");
            assert_eq!(book.count_of(user), expected.len());
        }
    }

    #[test]
    fn positions_are_one_based_and_in_ticket_order() {
        let mut book = QueueBook::new();
        assert_eq!(book.insert(job(1)), Some(1));
        assert_eq!(book.insert(job(2)), Some(2));
        assert_eq!(book.insert(job(3)), Some(3));
        let version = book.version();
        assert_eq!(book.insert(job(2)), None, "no job is queued twice");
        assert_eq!(book.version(), version, "nothing changed, nothing counted");
        assert_eq!(positions(&book), vec![(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn a_users_positions_can_be_read_from_any_job_on_wrapping_around() {
        let mut book = QueueBook::new();
        for ticket in 1..=9 {
            book.insert(job(ticket));
        }
        // u0 holds tickets 3, 6 and 9 at positions 3, 6 and 9.
        let key = |ticket: i64| (ticket, job(ticket).id);
        let read = |book: &QueueBook, after| -> Vec<(i64, u32)> {
            book.positions_of_from("u0", after)
                .map(|((ticket, _), position)| (ticket, position))
                .collect()
        };
        assert_eq!(book.count_of("u0"), 3);
        assert_eq!(read(&book, None), vec![(3, 3), (6, 6), (9, 9)]);
        assert_eq!(read(&book, Some(key(3))), vec![(6, 6), (9, 9), (3, 3)]);
        assert_eq!(read(&book, Some(key(9))), vec![(3, 3), (6, 6), (9, 9)]);
        // A cursor on a job that has left still orders the rest.
        book.remove(&job(6).id);
        assert_eq!(read(&book, Some(key(6))), vec![(9, 8), (3, 3)]);
        assert_eq!(book.count_of("nobody"), 0);
        assert_eq!(book.positions_of_from("nobody", None).count(), 0);
    }

    #[test]
    fn pop_and_remove_shift_everyone_behind() {
        let mut book = QueueBook::new();
        for ticket in 1..=6 {
            book.insert(job(ticket));
        }
        assert_eq!(book.pop_front().map(|j| j.ticket), Some(1));
        assert_consistent(&book);
        assert!(book.apply(QueueChange::Removed { id: job(4).id }));
        assert_eq!(book.position(&job(5).id), Some(3));
        assert_eq!(book.position(&job(6).id), Some(4));
        assert_consistent(&book);
        assert_eq!(book.position(&job(4).id), None);
        assert!(!book.apply(QueueChange::Removed { id: job(4).id }));
    }

    #[test]
    fn an_earlier_ticket_goes_in_front_and_pushes_back_the_rest() {
        let mut book = QueueBook::new();
        book.insert(job(5));
        book.insert(job(9));
        assert!(book.apply(QueueChange::Added(job(7))));
        assert_eq!(positions(&book), vec![(5, 1), (7, 2), (9, 3)]);
        assert_eq!(book.positions_of("u0"), vec![(job(9).id, 3)]);
    }

    #[test]
    fn reset_orders_by_ticket_and_drops_duplicates() {
        let mut book = QueueBook::new();
        book.insert(job(100));
        book.reset(vec![job(3), job(1), job(2), job(1)]);
        assert_eq!(positions(&book), vec![(1, 1), (2, 2), (3, 3)]);
        assert!(!book.contains(&job(100).id));
        assert!(book.count_of("u1") == 0 || book.positions_of("u1") == vec![(job(1).id, 1)]);
        assert_consistent(&book);
    }

    #[test]
    fn stays_consistent_under_random_operations() {
        let mut book = QueueBook::new();
        let mut next = 1;
        let mut state: u64 = 42;
        let mut version = book.version();
        for _ in 0..2000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let changed = match state >> 62 {
                0 | 1 => {
                    next += 1;
                    book.insert(job(next - 1)).is_some()
                }
                2 => book.pop_front().is_some(),
                _ => {
                    let victim = (state >> 20) as i64 % next.max(1);
                    book.remove(&job(victim).id).is_some()
                }
            };
            assert_eq!(book.version() > version, changed);
            version = book.version();
            assert_consistent(&book);
        }
    }
}
