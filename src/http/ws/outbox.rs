//! A session's bounded outbound buffer, shared by its actor (which fills it) and its socket
//! writer task (which drains it).
//!
//! Bounded twice: at most `capacity` frames and `max_bytes` bytes wait. A frame that would
//! pass either bound makes the client lose its backlog and get one `resync` frame instead (it
//! reloads over REST), so a client that stops reading costs a known amount of memory: the
//! byte bound, plus one frame larger than it (a snapshot is accepted into an empty outbox
//! whatever its size; it leaves for the socket at once).
//!
//! Frames that supersede each other coalesce: a new `job.position(s)` frame of the user
//! replaces the unsent one, and a new `message.updated` of a message replaces that message's
//! unsent one (each carries the whole data). The replacement goes to the end of the queue, so
//! frames still leave in the order their versions were made.
//!
//! A lock is the simplest correct tool here: both sides do a few pointer moves under it.

use crate::events::registry::resync_frame_body;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;
use uuid::Uuid;

/// One frame to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A JSON text frame body without `seq` (the writer splices it in).
    Text(Arc<str>),
    /// A WebSocket ping.
    Ping,
    /// A close frame with a code and a reason; the writer stops after it.
    Close(u16, &'static str),
}

impl Frame {
    fn bytes(&self) -> usize {
        match self {
            Frame::Text(body) => body.len(),
            Frame::Ping => 2,
            Frame::Close(_, reason) => 4 + reason.len(),
        }
    }
}

/// What a frame supersedes, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coalesce {
    /// The user's positions (one key per session: all of its user's queued jobs).
    Positions,
    /// The data of one message.
    Updated(Uuid),
}

#[derive(Default)]
struct Inner {
    /// Frames in order; a superseded frame leaves a hole (`None`).
    frames: VecDeque<Option<Frame>>,
    /// The number of the first slot of `frames`.
    first: u64,
    /// Where the unsent frame of each coalescing key is.
    keyed: HashMap<Coalesce, u64>,
    waiting: usize,
    bytes: usize,
    closed: bool,
    overflows: u64,
}

impl Inner {
    fn take(&mut self, number: u64) -> Option<Frame> {
        let slot = self
            .frames
            .get_mut(number.checked_sub(self.first)? as usize)?;
        let frame = slot.take()?;
        self.waiting -= 1;
        self.bytes -= frame.bytes();
        Some(frame)
    }

    fn append(&mut self, frame: Frame, key: Option<Coalesce>) {
        let number = self.first + self.frames.len() as u64;
        self.waiting += 1;
        self.bytes += frame.bytes();
        self.frames.push_back(Some(frame));
        if let Some(key) = key {
            self.keyed.insert(key, number);
        }
    }

    fn clear(&mut self) {
        self.first += self.frames.len() as u64;
        self.frames.clear();
        self.keyed.clear();
        self.waiting = 0;
        self.bytes = 0;
    }
}

/// Counts kept for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Frames dropped by coalescing or overflow.
    pub dropped: u64,
    /// Times the backlog overflowed and was replaced by `resync`.
    pub overflows: u64,
}

/// A session's outbound buffer.
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
    dropped: AtomicU64,
}

impl Outbox {
    /// A buffer holding at most `capacity` frames and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity: capacity.max(2),
            max_bytes: max_bytes.max(1),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a frame. Returns false once the outbox is closed.
    pub fn push(&self, frame: Frame) -> bool {
        self.push_keyed(frame, None)
    }

    /// Queues a frame that supersedes the unsent frame of the same `key`, if any.
    pub fn push_keyed(&self, frame: Frame, key: Option<Coalesce>) -> bool {
        {
            let mut inner = self.inner.lock();
            if inner.closed {
                return false;
            }
            if let Some(key) = key
                && let Some(number) = inner.keyed.remove(&key)
                && inner.take(number).is_some()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            let is_close = matches!(frame, Frame::Close(..));
            let full = inner.waiting >= self.capacity
                || (inner.waiting > 0 && inner.bytes + frame.bytes() > self.max_bytes);
            if full && !is_close {
                self.dropped
                    .fetch_add(inner.waiting as u64, Ordering::Relaxed);
                inner.clear();
                inner.overflows += 1;
                inner.append(Frame::Text(Arc::from(resync_frame_body())), None);
                if key.is_some() {
                    // The client reloads everything anyway; this frame is in what it reloads.
                    drop(inner);
                    self.notify.notify_one();
                    return true;
                }
            }
            inner.append(frame, key);
            if is_close {
                inner.closed = true;
            }
        }
        self.notify.notify_one();
        true
    }

    /// Takes every queued frame, waiting until there is at least one. Returns an empty batch
    /// once the outbox is closed and drained.
    pub async fn next_batch(&self) -> Vec<Frame> {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.inner.lock();
                if inner.waiting > 0 {
                    let batch: Vec<Frame> = inner.frames.drain(..).flatten().collect();
                    inner.clear();
                    return batch;
                }
                if inner.closed {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    /// Closes without a close frame (the socket is gone): pushes fail from now on.
    pub fn abandon(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.clear();
        drop(inner);
        self.notify.notify_one();
    }

    /// Whether the outbox no longer takes frames.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().waiting
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop and overflow counts so far.
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            dropped: self.dropped.load(Ordering::Relaxed),
            overflows: self.inner.lock().overflows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::Text(Arc::from(s))
    }

    fn is_resync(frame: &Frame) -> bool {
        matches!(frame, Frame::Text(body) if body.contains("\"resync\""))
    }

    #[tokio::test]
    async fn frames_come_out_in_order() {
        let outbox = Outbox::new(8, 1024);
        outbox.push(text("a"));
        outbox.push(Frame::Ping);
        outbox.push(text("b"));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("a"), Frame::Ping, text("b")]
        );
    }

    #[tokio::test]
    async fn superseded_frames_coalesce_and_the_newest_goes_last() {
        let outbox = Outbox::new(8, 1024);
        let m1 = Coalesce::Updated(Uuid::from_u128(1));
        outbox.push_keyed(text("p@3"), Some(Coalesce::Positions));
        outbox.push_keyed(text("m1 v2"), Some(m1));
        outbox.push(text("complete v3"));
        outbox.push_keyed(text("p@2"), Some(Coalesce::Positions));
        outbox.push_keyed(text("m1 v4"), Some(m1));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("complete v3"), text("p@2"), text("m1 v4")]
        );
        assert_eq!(outbox.counts().dropped, 2);
        outbox.push_keyed(text("p@1"), Some(Coalesce::Positions));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("p@1")],
            "a sent frame is not replaced"
        );
        assert_eq!(outbox.bytes(), 0);
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_gets_resync_not_memory() {
        let outbox = Outbox::new(4, 1024);
        for n in 0..100 {
            outbox.push(text(&format!("e{n}")));
            assert!(outbox.len() <= 4);
        }
        let batch = outbox.next_batch().await;
        assert!(batch.len() <= 4);
        assert!(is_resync(&batch[0]));
        assert_eq!(
            batch.last(),
            Some(&text("e99")),
            "events after the resync still arrive"
        );
        assert!(outbox.counts().overflows >= 1);
    }

    #[tokio::test]
    async fn bytes_are_bounded_too() {
        let outbox = Outbox::new(1000, 100);
        let big = "x".repeat(40);
        for _ in 0..10 {
            outbox.push(text(&big));
            assert!(outbox.bytes() <= 100, "{}", outbox.bytes());
        }
        assert!(outbox.counts().overflows >= 1);
        let batch = outbox.next_batch().await;
        assert!(is_resync(&batch[0]));
        // A frame larger than the bound still goes through an empty outbox (a big snapshot).
        let huge = "y".repeat(500);
        outbox.push(text(&huge));
        assert_eq!(outbox.next_batch().await, vec![text(&huge)]);
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_the_close_frame() {
        let outbox = Outbox::new(4, 1024);
        outbox.push(text("last"));
        outbox.push(Frame::Close(1000, "bye"));
        assert!(!outbox.push(text("late")));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("last"), Frame::Close(1000, "bye")]
        );
        assert!(outbox.next_batch().await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push() {
        let outbox = Outbox::new(4, 1024);
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next_batch().await })
        };
        tokio::task::yield_now().await;
        outbox.push(text("x"));
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(batch, vec![text("x")]);
    }
}
