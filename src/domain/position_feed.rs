//! Which connected users get which positions, and when: the live-position bookkeeping of a
//! gateway process, as plain logic with the time passed in.
//!
//! Each pop moves every waiting job, so telling each moved job's owner at every pop costs
//! queue depth × pop rate. Instead, a tick reads, for each *connected* user, the positions of
//! that user's queued jobs from the mirror (O(log N) each) and sends one frame per user whose
//! positions changed: the cost is connected users × tick rate, whatever the depth and however
//! fast the queue moves. Ticks follow changes: the first change after a quiet period is
//! answered at once, a burst at most once per interval. The interval adapts to what a tick
//! costs: five times the time the last tick took, and long enough that the positions sent
//! beyond the first of each frame stay within [`BACKLOG_POSITIONS_PER_SECOND`] (they are
//! the part that grows with how many jobs each user has waiting; a tick's frames are built
//! here, then written to every socket and parsed by every client, which costs more than
//! reading them), between [`MIN_INTERVAL`] and [`MAX_INTERVAL`]. So a session gets at most
//! 1 / `MIN_INTERVAL` position frames a second and a position is at most about `MAX_INTERVAL`
//! stale while the queue moves.
//!
//! A frame carries at most `per_frame` positions (`WS_POSITIONS_PER_FRAME`), so its size does
//! not grow with how many jobs one user has waiting. A user with no more waiting jobs than that
//! gets all of them in every frame (a *complete* frame, which replaces an unsent older one). A
//! user with more gets, at each tick, up to `per_frame` of the positions that changed since
//! they were told, taken in queue order from where the previous tick stopped, round and round
//! (a *partial* frame): each job is refreshed every ⌈waiting ÷ `per_frame`⌉ ticks, and ticks go
//! on after the queue stops until every position told is exact.

use crate::domain::eta::EtaModel;
use crate::domain::queue_book::QueueBook;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Shortest time between two ticks (at most 5 position frames a second per session).
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Longest time between two ticks while positions change.
pub const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// Positions beyond the first of each frame a process sends a second, over all its users,
/// before ticks slow down (up to [`MAX_INTERVAL`]). One position per connected user and tick
/// is the cost of the sessions themselves and is not slowed (10,000 users with one waiting job
/// each still hear of a pop at once); extra positions are what many jobs per user add. Deep
/// queues measured it (docs/benchmarks.md, `deep`): 51,200 positions a second (64 users × 160
/// jobs × 5 ticks) cost a quarter of the throughput of two cores; 15,000 keep it under a tenth.
pub const BACKLOG_POSITIONS_PER_SECOND: u32 = 15_000;

/// One queued job's position and estimate (an entry of a `job.positions` frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobPosition {
    /// The message.
    pub id: Uuid,
    /// 1-based position.
    #[schema(minimum = 1)]
    pub queue_position: u32,
    /// Estimated seconds until done.
    pub eta_s: Option<u32>,
}

/// The positions of one user's queued jobs, to send to that user's sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPositions {
    /// The user.
    pub user: Arc<str>,
    /// Their queued jobs in queue order (from where the last partial frame stopped).
    pub positions: Vec<JobPosition>,
    /// Whether these are all of the user's queued jobs (else some of those that changed).
    pub complete: bool,
}

/// What one connected user was told.
#[derive(Debug, Default)]
struct Told {
    /// Each job's position and estimate as last told.
    sent: HashMap<Uuid, (u32, Option<u32>)>,
    /// The job (ticket, id) the last partial frame ended with.
    cursor: Option<(i64, Uuid)>,
}

/// The bookkeeping.
#[derive(Debug)]
pub struct PositionFeed {
    /// Most positions in one frame.
    per_frame: usize,
    /// Connected users.
    watched: HashSet<Arc<str>>,
    /// What each connected user with queued jobs was told.
    told: HashMap<Arc<str>, Told>,
    /// Users to tell at the next tick even if nothing changed (a new session).
    fresh: HashSet<Arc<str>>,
    /// Users whose last frame was partial and full: more changed positions to tell.
    behind: HashSet<Arc<str>>,
    /// The queue changed since the last tick.
    changed: bool,
    last_tick: Option<Instant>,
    interval: Duration,
}

impl PositionFeed {
    /// Nobody connected yet; frames of at most `per_frame` positions (at least 1).
    pub fn new(per_frame: usize) -> Self {
        PositionFeed {
            per_frame: per_frame.max(1),
            watched: HashSet::new(),
            told: HashMap::new(),
            fresh: HashSet::new(),
            behind: HashSet::new(),
            changed: false,
            last_tick: None,
            interval: MIN_INTERVAL,
        }
    }

    /// A session of `user` opened here: the next tick tells the user, changed or not.
    pub fn watch(&mut self, user: Arc<str>) {
        self.fresh.insert(user.clone());
        self.watched.insert(user);
    }

    /// The last session of `user` here closed.
    pub fn unwatch(&mut self, user: &str) {
        self.watched.remove(user);
        self.told.remove(user);
        self.fresh.remove(user);
        self.behind.remove(user);
    }

    /// The queue (or the ETA model) changed.
    pub fn changed(&mut self) {
        self.changed = true;
    }

    /// When the next tick should run: `None` while there is nothing to tell.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if !self.changed && self.fresh.is_empty() && self.behind.is_empty() {
            return None;
        }
        Some(match self.last_tick {
            Some(last) => (last + self.interval).max(now),
            None => now,
        })
    }

    /// Reads the positions of every connected user from `mirror` and returns those to send:
    /// the users whose positions (or estimates) changed since they were last told, and new
    /// sessions' users. `cost` is how long the previous tick took (it sets the pace).
    pub fn tick(
        &mut self,
        mirror: &QueueBook,
        eta: &EtaModel,
        now: Instant,
        cost: Duration,
    ) -> Vec<UserPositions> {
        self.last_tick = Some(now);
        self.changed = false;
        let fresh = std::mem::take(&mut self.fresh);
        let mut out = Vec::new();
        for user in &self.watched {
            let waiting = mirror.count_of(user);
            if waiting == 0 {
                self.told.remove(user);
                self.behind.remove(user);
                continue;
            }
            let told = self.told.entry(user.clone()).or_default();
            if fresh.contains(user) {
                told.sent.clear();
            }
            let (positions, complete) = if waiting <= self.per_frame {
                self.behind.remove(user);
                let positions: Vec<JobPosition> = mirror
                    .positions_of_from(user, None)
                    .map(|entry| position(eta, entry))
                    .collect();
                if told.sent.len() == waiting && positions.iter().all(|p| unchanged(told, p)) {
                    continue;
                }
                told.sent.clear();
                (positions, true)
            } else {
                let positions = next_part(mirror, eta, user, told, self.per_frame);
                if positions.len() == self.per_frame {
                    self.behind.insert(user.clone());
                } else {
                    self.behind.remove(user);
                }
                if positions.is_empty() {
                    continue;
                }
                // Jobs that left are forgotten once they outnumber the waiting ones.
                if told.sent.len() > 2 * waiting {
                    told.sent.retain(|id, _| mirror.contains(id));
                }
                (positions, false)
            };
            for job in &positions {
                told.sent.insert(job.id, (job.queue_position, job.eta_s));
            }
            out.push(UserPositions {
                user: user.clone(),
                positions,
                complete,
            });
        }
        let backlog: usize = out.iter().map(|user| user.positions.len() - 1).sum();
        let to_send_them = Duration::from_secs(1) * backlog as u32 / BACKLOG_POSITIONS_PER_SECOND;
        self.interval = (cost * 5)
            .max(to_send_them)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        out
    }
}

/// A job's place and estimate, from the mirror's `(ticket, id)` key and position.
fn position(eta: &EtaModel, (key, queue_position): ((i64, Uuid), u32)) -> JobPosition {
    JobPosition {
        id: key.1,
        queue_position,
        eta_s: eta.for_position(queue_position),
    }
}

/// Whether the user was already told this place and estimate of the job.
fn unchanged(told: &Told, job: &JobPosition) -> bool {
    told.sent.get(&job.id) == Some(&(job.queue_position, job.eta_s))
}

/// For a user with more waiting jobs than a frame holds: the next `per_frame` jobs whose place
/// changed, from where the last frame stopped (the cursor moves past them).
fn next_part(
    mirror: &QueueBook,
    eta: &EtaModel,
    user: &str,
    told: &mut Told,
    per_frame: usize,
) -> Vec<JobPosition> {
    let mut last = None;
    let mut positions = Vec::new();
    for (key, queue_position) in mirror.positions_of_from(user, told.cursor) {
        let job = position(eta, (key, queue_position));
        if !unchanged(told, &job) {
            positions.push(job);
            last = Some(key);
            if positions.len() == per_frame {
                break;
            }
        }
    }
    if !positions.is_empty() {
        told.cursor = last;
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::queue_book::QueuedJob;

    fn job(ticket: i64, user: &str) -> QueuedJob {
        QueuedJob {
            id: Uuid::from_u128(ticket as u128),
            user_id: Arc::from(user),
            ticket,
            model: None,
        }
    }

    fn told(out: &[UserPositions]) -> Vec<(String, Vec<u32>)> {
        let mut told: Vec<_> = out
            .iter()
            .map(|user| {
                (
                    user.user.to_string(),
                    user.positions.iter().map(|p| p.queue_position).collect(),
                )
            })
            .collect();
        told.sort();
        told
    }

    #[test]
    fn only_connected_users_whose_positions_changed_are_told() {
        let mut mirror = QueueBook::new();
        for (ticket, user) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
            mirror.insert(job(ticket, user));
        }
        let eta = EtaModel::new(1);
        let mut feed = PositionFeed::new(100);
        let start = Instant::now();
        feed.watch(Arc::from("a"));
        feed.watch(Arc::from("b"));
        let out = feed.tick(&mirror, &eta, start, Duration::ZERO);
        assert_eq!(
            told(&out),
            [("a".into(), vec![1, 3]), ("b".into(), vec![2])]
        );
        // c is not connected here: never computed. Nothing changed: nothing sent.
        assert!(feed.tick(&mirror, &eta, start, Duration::ZERO).is_empty());
        // The head leaves: everyone behind moved.
        mirror.pop_front();
        feed.changed();
        let out = feed.tick(&mirror, &eta, start, Duration::ZERO);
        assert_eq!(told(&out), [("a".into(), vec![2]), ("b".into(), vec![1])]);
        // The last job of c leaves: a and b did not move, nobody is told.
        mirror.remove(&job(4, "c").id);
        feed.changed();
        assert!(feed.tick(&mirror, &eta, start, Duration::ZERO).is_empty());
        // A new session of b is told at once, unchanged or not.
        feed.watch(Arc::from("b"));
        assert_eq!(
            told(&feed.tick(&mirror, &eta, start, Duration::ZERO)),
            [("b".into(), vec![1])]
        );
        // A user who left is not told.
        feed.unwatch("a");
        mirror.pop_front();
        feed.changed();
        assert!(feed.tick(&mirror, &eta, start, Duration::ZERO).is_empty());
    }

    #[test]
    fn ticks_follow_changes_at_most_once_per_interval() {
        let mut feed = PositionFeed::new(100);
        let mirror = QueueBook::new();
        let eta = EtaModel::new(1);
        let t0 = Instant::now();
        assert_eq!(feed.due(t0), None, "nothing to tell");
        feed.changed();
        assert_eq!(feed.due(t0), Some(t0), "the first change goes out at once");
        feed.tick(&mirror, &eta, t0, Duration::ZERO);
        feed.changed();
        assert_eq!(
            feed.due(t0),
            Some(t0 + MIN_INTERVAL),
            "a burst waits for the interval"
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(feed.due(later), Some(later));
        // An expensive tick slows the pace, up to the longest interval.
        feed.tick(&mirror, &eta, later, Duration::from_millis(100));
        feed.changed();
        assert_eq!(feed.due(later), Some(later + Duration::from_millis(500)));
        feed.tick(&mirror, &eta, later, Duration::from_secs(3));
        feed.changed();
        assert_eq!(feed.due(later), Some(later + MAX_INTERVAL));
    }

    #[test]
    fn a_user_with_more_jobs_than_a_frame_holds_gets_them_in_turns_until_all_are_exact() {
        let mut mirror = QueueBook::new();
        for ticket in 1..=25 {
            mirror.insert(job(ticket, if ticket == 1 { "b" } else { "a" }));
        }
        let eta = EtaModel::new(1);
        let mut feed = PositionFeed::new(10);
        let now = Instant::now();
        feed.watch(Arc::from("a"));
        feed.watch(Arc::from("b"));
        let mut shown: HashMap<Uuid, u32> = HashMap::new();
        let mut tick = |feed: &mut PositionFeed, mirror: &QueueBook| {
            let out = feed.tick(mirror, &eta, now, Duration::ZERO);
            for user in &out {
                assert!(user.positions.len() <= 10, "a frame holds at most 10");
                for p in &user.positions {
                    shown.insert(p.id, p.queue_position);
                }
            }
            out
        };
        // 24 jobs of a: 10, 10, then the last 4; b's one job in a complete frame.
        let out = tick(&mut feed, &mirror);
        let a = out.iter().find(|u| &*u.user == "a").unwrap();
        let b = out.iter().find(|u| &*u.user == "b").unwrap();
        assert!(!a.complete && b.complete);
        assert_eq!(a.positions.first().map(|p| p.queue_position), Some(2));
        assert_eq!(
            told(&tick(&mut feed, &mirror))[0].1,
            (12..=21).collect::<Vec<_>>()
        );
        assert_eq!(told(&tick(&mut feed, &mirror))[0].1, vec![22, 23, 24, 25]);
        assert_eq!(feed.due(now), None, "everyone knows every position");
        // The head leaves: everything moves; a full round later every shown position is exact.
        mirror.pop_front();
        mirror.pop_front();
        feed.changed();
        for _ in 0..3 {
            assert!(feed.due(now).is_some());
            tick(&mut feed, &mirror);
        }
        assert_eq!(feed.due(now), None);
        for (id, position) in mirror.positions_of("a") {
            assert_eq!(shown.get(&id), Some(&position));
        }
    }

    #[test]
    fn many_positions_told_slow_the_next_tick_down() {
        let mut mirror = QueueBook::new();
        for ticket in 0..9_000 {
            mirror.insert(job(ticket, &format!("u{}", ticket % 30)));
        }
        let eta = EtaModel::new(1);
        let mut feed = PositionFeed::new(500);
        for user in 0..30 {
            feed.watch(Arc::from(format!("u{user}")));
        }
        let now = Instant::now();
        let told: usize = feed
            .tick(&mirror, &eta, now, Duration::ZERO)
            .iter()
            .map(|user| user.positions.len())
            .sum();
        assert_eq!(told, 9_000);
        feed.changed();
        // 9,000 positions, 30 of them first in their frame: 8,970 at 15,000 a second.
        assert_eq!(feed.due(now), Some(now + Duration::from_millis(598)));
        // A small tick goes back to the shortest interval.
        mirror.pop_front();
        for user in 1..30 {
            feed.unwatch(&format!("u{user}"));
        }
        feed.tick(&mirror, &eta, now, Duration::ZERO);
        feed.changed();
        assert_eq!(feed.due(now), Some(now + MIN_INTERVAL));
    }

    #[test]
    fn one_position_per_user_never_slows_the_ticks() {
        let mut mirror = QueueBook::new();
        let mut feed = PositionFeed::new(500);
        for ticket in 0..20_000 {
            mirror.insert(job(ticket, &format!("u{ticket}")));
            feed.watch(Arc::from(format!("u{ticket}")));
        }
        let now = Instant::now();
        let out = feed.tick(&mirror, &EtaModel::new(1), now, Duration::ZERO);
        assert_eq!(out.len(), 20_000);
        feed.changed();
        assert_eq!(feed.due(now), Some(now + MIN_INTERVAL));
    }

    #[test]
    fn estimates_change_what_is_told() {
        let mut mirror = QueueBook::new();
        mirror.insert(job(1, "a"));
        let mut eta = EtaModel::new(1);
        let mut feed = PositionFeed::new(100);
        let now = Instant::now();
        feed.watch(Arc::from("a"));
        let out = feed.tick(&mirror, &eta, now, Duration::ZERO);
        assert_eq!(out[0].positions[0].eta_s, None);
        eta.record(4.0);
        feed.changed();
        let out = feed.tick(&mirror, &eta, now, Duration::ZERO);
        assert_eq!(out[0].positions[0].eta_s, Some(4));
    }
}
