//! The read side of the use cases: one message, a page of a user's messages, and the snapshot
//! of a new WebSocket session, each with live positions.
//!
//! A listing is bounded in what it holds, not only in rows: its rows are read, decoded and made
//! into views [`LIST_CHUNK`] at a time (a message's data is a tree of values only while its
//! view is made, then it is text), and the page ends once its messages hold about
//! `LIST_MAX_BYTES` (`next` says where the following page starts). At most `LIST_CONCURRENCY`
//! chunks are decoded at once per process (reading them is bounded by the database pool), so
//! listings take turns chunk by chunk and a small one never waits for a large one to finish. Decoding runs on the blocking pool, off the
//! threads that serve everyone else.

use super::{Gateway, db_error};
use crate::db::{ListFilter, StoredPage};
use crate::domain::catalogue::ApiError;
use crate::domain::eta::EtaModel;
use crate::domain::message::{ChatMessage, LivePosition, MessageView};
use chrono::Utc;
use std::collections::HashMap;
use uuid::Uuid;

/// Rows a listing reads, decodes and turns into views at a time.
const LIST_CHUNK: u64 = 16;
/// What a view holds besides its prompt and data, as serialized (ids, times, params, …).
const VIEW_OVERHEAD_BYTES: usize = 600;

/// A page of a listing.
#[derive(Clone, Debug)]
pub struct Page {
    /// The messages, newest first.
    pub views: Vec<MessageView>,
    /// When the page ended before the user's last message (its row limit, or its byte bound):
    /// the `before` of the next page.
    pub next: Option<Uuid>,
    /// About how many bytes its messages take serialized.
    pub bytes: usize,
}

/// What a new WebSocket session shows first.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The user's pending messages, oldest first.
    pub views: Vec<MessageView>,
    /// The version of the queue mirror the positions were read at.
    pub positions_version: u64,
    /// The positions of the user's queued messages in the mirror.
    pub positions: Vec<(Uuid, u32)>,
}

impl Gateway {
    /// One of `user`'s messages with its live position.
    pub async fn get(&self, user: &str, id: Uuid) -> Result<MessageView, ApiError> {
        let message = self.owned(user, id).await?;
        Ok(self.view(message).await)
    }

    /// A page of `user`'s messages, newest first, with live positions: at most `filter.limit`
    /// messages, fewer once they hold about `LIST_MAX_BYTES`.
    pub async fn list(&self, user: &str, filter: &ListFilter) -> Result<Page, ApiError> {
        let max_bytes = self.inner.settings.list_max_bytes;
        let (mut views, mut bytes) = (Vec::new(), 0usize);
        let mut before = filter.before;
        loop {
            let want = (filter.limit - views.len() as u64).min(LIST_CHUNK);
            let chunk = ListFilter {
                limit: want,
                before,
                ..filter.clone()
            };
            let stored = self
                .inner
                .db
                .list_stored(user, &chunk)
                .await
                .map_err(db_error)?;
            let (read, last) = (stored.len() as u64, stored.last_id());
            let turn = self
                .inner
                .listings
                .acquire()
                .await
                .map_err(|_| ApiError::Unavailable)?;
            let chunk_views = self.views_of(stored).await?;
            drop(turn);
            for view in chunk_views {
                bytes += view.prompt.len() + view.data.json().len() + VIEW_OVERHEAD_BYTES;
                let id = view.id;
                views.push(view);
                if bytes >= max_bytes && (views.len() as u64) < filter.limit {
                    return Ok(Page {
                        views,
                        next: Some(id),
                        bytes,
                    });
                }
            }
            if read < want {
                return Ok(Page {
                    views,
                    next: None,
                    bytes,
                });
            }
            if views.len() as u64 >= filter.limit {
                return Ok(Page {
                    next: last,
                    views,
                    bytes,
                });
            }
            before = last;
        }
    }

    /// `user`'s pending messages, oldest first, for a new WebSocket session: their positions
    /// are read from this process's queue mirror (with its version), the source of every
    /// position the session sends later.
    pub async fn snapshot(&self, user: &str) -> Result<Snapshot, ApiError> {
        let stored = self.inner.db.pending_stored(user).await.map_err(db_error)?;
        let (positions_version, positions) = self
            .inner
            .queue
            .mirror_positions(user)
            .await
            .ok_or(ApiError::Unavailable)?;
        let live = LivePositions {
            positions: Some(positions.iter().copied().collect()),
            eta: self.inner.queue.eta(),
        };
        let views = decode_views(stored, live).await?;
        Ok(Snapshot {
            views,
            positions_version,
            positions,
        })
    }

    /// One message's view.
    pub(super) async fn view(&self, message: ChatMessage) -> MessageView {
        let queued = (message.status == crate::domain::status::JobStatus::Queued)
            .then_some(message.id)
            .into_iter()
            .collect();
        let live = self.live_positions(queued).await;
        message.view(live.of(&message), Utc::now())
    }

    /// The view of a message just queued at `position`: the position its enqueue computed,
    /// not read again (a client shows the newer of a read and a frame by when each was
    /// made: docs/api.md, "Positions").
    pub(super) fn view_at_enqueue(&self, message: ChatMessage, position: u32) -> MessageView {
        let live = LivePosition::Queued {
            position,
            eta_s: self.inner.queue.eta().for_position(position),
        };
        message.view(live, Utc::now())
    }

    /// The views of stored messages, with their live positions.
    async fn views_of(&self, stored: StoredPage) -> Result<Vec<MessageView>, ApiError> {
        let live = self.live_positions(stored.queued_ids()).await;
        decode_views(stored, live).await
    }

    /// The live positions of the `queued` messages, read in one round trip. While the queue
    /// store cannot be read they are unavailable rather than the read failing: the messages
    /// are in the database, and positions come back with the store.
    async fn live_positions(&self, queued: Vec<Uuid>) -> LivePositions {
        let positions = if queued.is_empty() {
            Some(HashMap::new())
        } else {
            match self.inner.queue.positions(&queued).await {
                Ok(positions) => Some(
                    queued
                        .into_iter()
                        .zip(positions)
                        .filter_map(|(id, position)| Some((id, position?)))
                        .collect(),
                ),
                Err(err) => {
                    self.inner.outages.queue_failed(Utc::now());
                    tracing::warn!(error = %err, "live positions unavailable; showing messages without them");
                    None
                }
            }
        };
        LivePositions {
            positions,
            eta: self.inner.queue.eta(),
        }
    }
}

/// Decodes stored messages one at a time into views, on the blocking pool.
async fn decode_views(
    stored: StoredPage,
    live: LivePositions,
) -> Result<Vec<MessageView>, ApiError> {
    let now = Utc::now();
    tokio::task::spawn_blocking(move || {
        stored.decode_each(|message| message.view(live.of(&message), now))
    })
    .await
    .map_err(|err| {
        tracing::error!(error = %err, "decoding a listing failed");
        ApiError::Internal
    })
}

/// Live positions of some messages (`None`: the queue store could not be read).
struct LivePositions {
    positions: Option<HashMap<Uuid, u32>>,
    eta: EtaModel,
}

impl LivePositions {
    fn of(&self, message: &ChatMessage) -> LivePosition {
        match &self.positions {
            None => LivePosition::Unavailable,
            Some(positions) => match positions.get(&message.id) {
                Some(&position) => LivePosition::Queued {
                    position,
                    eta_s: self.eta.for_position(position),
                },
                None => LivePosition::NotQueued,
            },
        }
    }
}
