//! A session's bounded outbound buffer, shared by its actor (which fills it) and its socket
//! writer task (which drains it).
//!
//! A lock is the simplest correct tool here: both sides do a few pointer moves under it.
//! `job.position` frames for the same message coalesce (only the newest matters), and a
//! client that still falls behind loses its backlog and gets one `resync` frame instead of
//! growing memory without bound.

use crate::domain::event::control_frame_body;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// One frame to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A JSON text frame body without `seq` (the writer splices it in).
    Text(Arc<str>),
    /// A WebSocket ping.
    Ping,
    /// A close frame with a reason; the writer stops after it.
    Close(&'static str),
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<(u64, Frame)>,
    /// Message id → number of its unsent `job.position` frame.
    positions: HashMap<Uuid, u64>,
    next_number: u64,
    closed: bool,
    overflows: u64,
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
    dropped: std::sync::atomic::AtomicU64,
}

impl Outbox {
    /// A buffer holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity: capacity.max(2),
            dropped: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Queues a frame. Returns false once the outbox is closed.
    pub fn push(&self, frame: Frame) -> bool {
        self.push_inner(frame, None)
    }

    /// Queues a `job.position` frame for `message`, replacing an unsent one for the same message.
    pub fn push_position(&self, message: Uuid, body: Arc<str>) -> bool {
        self.push_inner(Frame::Text(body), Some(message))
    }

    fn push_inner(&self, frame: Frame, position_of: Option<Uuid>) -> bool {
        {
            let mut inner = self.inner.lock();
            if inner.closed {
                return false;
            }
            if let Some(message) = position_of
                && let Some(number) = inner.positions.get(&message).copied()
            {
                let first = inner.frames.front().map_or(number, |(n, _)| *n);
                if let Some(slot) = inner.frames.get_mut((number - first) as usize) {
                    slot.1 = frame;
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return true;
                }
            }
            let is_close = matches!(frame, Frame::Close(_));
            if inner.frames.len() >= self.capacity && !is_close {
                let lost = inner.frames.len() as u64;
                self.dropped
                    .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
                inner.frames.clear();
                inner.positions.clear();
                inner.overflows += 1;
                let number = inner.next_number;
                inner.next_number += 1;
                let resync = control_frame_body("resync", serde_json::Map::new());
                inner
                    .frames
                    .push_back((number, Frame::Text(Arc::from(resync))));
                if position_of.is_some() {
                    // The client reloads everything anyway; this position is in what it reloads.
                    drop(inner);
                    self.notify.notify_one();
                    return true;
                }
            }
            let number = inner.next_number;
            inner.next_number += 1;
            if let Some(message) = position_of {
                inner.positions.insert(message, number);
            }
            inner.frames.push_back((number, frame));
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
                if !inner.frames.is_empty() {
                    inner.positions.clear();
                    return inner.frames.drain(..).map(|(_, frame)| frame).collect();
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
        inner.frames.clear();
        inner.positions.clear();
        drop(inner);
        self.notify.notify_one();
    }

    /// Whether the outbox no longer takes frames.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().frames.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop and overflow counts so far.
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            dropped: self.dropped.load(std::sync::atomic::Ordering::Relaxed),
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

    #[tokio::test]
    async fn frames_come_out_in_order() {
        let outbox = Outbox::new(8);
        outbox.push(text("a"));
        outbox.push(Frame::Ping);
        outbox.push(text("b"));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("a"), Frame::Ping, text("b")]
        );
    }

    #[tokio::test]
    async fn positions_of_one_message_coalesce_in_place() {
        let outbox = Outbox::new(8);
        let (m1, m2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        outbox.push_position(m1, Arc::from("m1@3"));
        outbox.push(text("other"));
        outbox.push_position(m2, Arc::from("m2@4"));
        outbox.push_position(m1, Arc::from("m1@2"));
        outbox.push_position(m1, Arc::from("m1@1"));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("m1@1"), text("other"), text("m2@4")]
        );
        assert_eq!(outbox.counts().dropped, 2);
        outbox.push_position(m1, Arc::from("m1@0"));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("m1@0")],
            "a sent position is not replaced"
        );
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_gets_resync_not_memory() {
        let outbox = Outbox::new(4);
        for n in 0..100 {
            outbox.push(text(&format!("e{n}")));
            assert!(outbox.len() <= 4);
        }
        let batch = outbox.next_batch().await;
        assert!(batch.len() <= 4);
        assert!(matches!(&batch[0], Frame::Text(body) if body.contains("\"resync\"")));
        assert_eq!(
            batch.last(),
            Some(&text("e99")),
            "events after the resync still arrive"
        );
        assert!(outbox.counts().overflows >= 1);
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_the_close_frame() {
        let outbox = Outbox::new(4);
        outbox.push(text("last"));
        outbox.push(Frame::Close("bye"));
        assert!(!outbox.push(text("late")));
        assert_eq!(
            outbox.next_batch().await,
            vec![text("last"), Frame::Close("bye")]
        );
        assert!(outbox.next_batch().await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push() {
        let outbox = Outbox::new(4);
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
