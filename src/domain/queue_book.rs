//! The queue's order book: queued jobs in ticket order, with exact 1-based positions.
//!
//! Position = 1 + the number of queued jobs ahead; tickets come from an atomic counter, so the
//! order is the order of submission. The in-process queue store is a `QueueBook` behind a lock;
//! in Redis mode each gateway process keeps a `QueueBook` as a mirror of the shared queue, fed
//! by its totally ordered change feed, to push new positions to its own sessions.

use std::collections::{HashMap, VecDeque};
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

/// A job whose position is now `position`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionUpdate {
    /// Message id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Arc<str>,
    /// New 1-based position.
    pub position: u32,
}

/// Queued jobs in ticket order.
#[derive(Debug, Default, Clone)]
pub struct QueueBook {
    order: VecDeque<(i64, Uuid)>,
    jobs: HashMap<Uuid, QueuedJob>,
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
        self.jobs.insert(job.id, job);
        Some(index as u32 + 1)
    }

    /// Removes a job; returns it and the index it had (0-based), so the caller can tell
    /// everyone behind it that they moved up.
    pub fn remove(&mut self, id: &Uuid) -> Option<(QueuedJob, usize)> {
        let job = self.jobs.remove(id)?;
        let index = self.index_of(job.ticket, id)?;
        self.order.remove(index);
        Some((job, index))
    }

    /// Takes the first job.
    pub fn pop_front(&mut self) -> Option<QueuedJob> {
        let (_, id) = self.order.pop_front()?;
        self.jobs.remove(&id)
    }

    /// The job's 1-based position.
    pub fn position(&self, id: &Uuid) -> Option<u32> {
        let job = self.jobs.get(id)?;
        self.index_of(job.ticket, id).map(|index| index as u32 + 1)
    }

    /// The jobs from 0-based `index` on, with their positions (those that moved after a removal there).
    pub fn positions_from(&self, index: usize) -> impl Iterator<Item = PositionUpdate> + '_ {
        let index = index.min(self.order.len());
        self.order
            .range(index..)
            .zip(index..)
            .filter_map(|((_, id), at)| {
                self.jobs.get(id).map(|job| PositionUpdate {
                    id: *id,
                    user_id: job.user_id.clone(),
                    position: at as u32 + 1,
                })
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
        let mut jobs = jobs;
        jobs.sort_by_key(|job| job.ticket);
        for job in jobs {
            self.insert(job);
        }
    }

    /// Applies a feed change; returns the position updates it caused (for every job whose
    /// position changed, including a newly added one).
    pub fn apply(&mut self, change: QueueChange) -> Vec<PositionUpdate> {
        match change {
            QueueChange::Added(job) => match self.insert(job) {
                Some(position) => self.positions_from(position as usize - 1).collect(),
                None => Vec::new(),
            },
            QueueChange::Removed { id } => match self.remove(&id) {
                Some((_, index)) => self.positions_from(index).collect(),
                None => Vec::new(),
            },
            QueueChange::Reset(jobs) => {
                self.reset(jobs);
                self.positions_from(0).collect()
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
        }
    }

    fn positions(book: &QueueBook) -> Vec<(i64, u32)> {
        book.jobs()
            .map(|job| (job.ticket, book.position(&job.id).unwrap()))
            .collect()
    }

    fn assert_gap_free(book: &QueueBook) {
        let got: Vec<u32> = positions(book).into_iter().map(|(_, p)| p).collect();
        let want: Vec<u32> = (1..=book.len() as u32).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn positions_are_one_based_and_in_ticket_order() {
        let mut book = QueueBook::new();
        assert_eq!(book.insert(job(1)), Some(1));
        assert_eq!(book.insert(job(2)), Some(2));
        assert_eq!(book.insert(job(3)), Some(3));
        assert_eq!(book.insert(job(2)), None, "no job is queued twice");
        assert_eq!(positions(&book), vec![(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn pop_and_remove_shift_everyone_behind() {
        let mut book = QueueBook::new();
        for ticket in 1..=6 {
            book.insert(job(ticket));
        }
        assert_eq!(book.pop_front().map(|j| j.ticket), Some(1));
        assert_gap_free(&book);
        let updates = book.apply(QueueChange::Removed { id: job(4).id });
        assert_eq!(
            updates
                .iter()
                .map(|u| (u.id, u.position))
                .collect::<Vec<_>>(),
            vec![(job(5).id, 3), (job(6).id, 4)]
        );
        assert_gap_free(&book);
        assert_eq!(book.position(&job(4).id), None);
        assert!(
            book.apply(QueueChange::Removed { id: job(4).id })
                .is_empty()
        );
    }

    #[test]
    fn an_earlier_ticket_goes_in_front_and_pushes_back_the_rest() {
        let mut book = QueueBook::new();
        book.insert(job(5));
        book.insert(job(9));
        let updates = book.apply(QueueChange::Added(job(7)));
        assert_eq!(
            updates.iter().map(|u| u.position).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(positions(&book), vec![(5, 1), (7, 2), (9, 3)]);
    }

    #[test]
    fn reset_orders_by_ticket_and_drops_duplicates() {
        let mut book = QueueBook::new();
        book.insert(job(100));
        book.reset(vec![job(3), job(1), job(2), job(1)]);
        assert_eq!(positions(&book), vec![(1, 1), (2, 2), (3, 3)]);
        assert!(!book.contains(&job(100).id));
    }

    #[test]
    fn stays_gap_free_under_random_operations() {
        let mut book = QueueBook::new();
        let mut next = 1;
        let mut state: u64 = 42;
        for _ in 0..2000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            match state >> 62 {
                0 | 1 => {
                    book.insert(job(next));
                    next += 1;
                }
                2 => {
                    book.pop_front();
                }
                _ => {
                    let victim = (state >> 20) as i64 % next.max(1);
                    book.remove(&job(victim).id);
                }
            }
            assert_gap_free(&book);
        }
    }
}
