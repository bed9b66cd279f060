//! The gateway's use cases, shared by the REST handlers and the WebSocket sessions:
//! submit, read with live positions, patch client data, cancel, retry.
//!
//! Reads go straight to the database (the record) and the queue (live positions); every write
//! goes through the store actor.

pub mod leases;
mod read;
pub mod retention;
pub mod watchdog;

pub use read::{Page, Snapshot};

use crate::actors::forge::ForgePool;
use crate::actors::queue::QueueHandle;
use crate::actors::store::{StoreError, StoreHandle};
use crate::db::{Database, DbError};
use crate::domain::catalogue::{ApiError, Invalid, StateConflict};
use crate::domain::change::{Change, Refusal, Transition};
use crate::domain::message::{ChatMessage, MessageView};
use crate::domain::models::{ModelCatalogue, ModelListing};
use crate::domain::outages::Outages;
use crate::domain::params::{CreateRequest, data_error};

use crate::queue::QueueError;
use chrono::Utc;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// Settings the use cases need.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// `MAX_PENDING_PER_USER`.
    pub max_pending_per_user: u32,
    /// `LIST_MAX_BYTES`: a listing page ends once its messages hold about this many bytes.
    pub list_max_bytes: usize,
    /// `LIST_CONCURRENCY`: listings read and decoded at once in this process.
    pub list_concurrency: usize,
    /// `DEFAULT_MODEL`: the checkpoint of a create that names none, while some backend
    /// offers it.
    pub default_model: Option<String>,
}

struct Inner {
    db: Database,
    store: StoreHandle,
    queue: QueueHandle,
    outages: Arc<Outages>,
    /// This process's backends: a job ended here stops running on them.
    forge: ForgePool,
    /// One permit per listing being read (see `read`).
    listings: tokio::sync::Semaphore,
    settings: GatewaySettings,
}

/// The use cases. Cloning shares them.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

impl Gateway {
    /// Wires the use cases to the actors.
    pub fn new(
        db: Database,
        store: StoreHandle,
        queue: QueueHandle,
        outages: Arc<Outages>,
        forge: ForgePool,
        settings: GatewaySettings,
    ) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                db,
                store,
                queue,
                outages,
                forge,
                listings: tokio::sync::Semaphore::new(settings.list_concurrency.max(1)),
                settings,
            }),
        }
    }

    /// What the backends offer (`GET /api/v1/models`), as they last answered.
    pub fn models(&self) -> ModelListing {
        self.inner.forge.models().read(ModelCatalogue::listing)
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    /// The queue.
    pub fn queue(&self) -> &QueueHandle {
        &self.inner.queue
    }

    /// The store.
    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    /// Queues a new message for `user`. With an idempotency key, a second call returns the
    /// message the first one created.
    pub async fn submit(
        &self,
        user: &str,
        mut request: CreateRequest,
        idempotency_key: Option<String>,
        retry_of: Option<Uuid>,
    ) -> Result<MessageView, ApiError> {
        if let Some(key) = &idempotency_key
            && let Some(existing) = self.earlier_answer(user, key).await?
        {
            return Ok(existing);
        }
        self.check_choice(&mut request)?;
        let id = Uuid::now_v7();
        let enqueued = self
            .inner
            .queue
            .enqueue(
                id,
                user,
                request.model.as_deref(),
                self.inner.settings.max_pending_per_user,
            )
            .await
            .map_err(|err| match err {
                QueueError::TooManyPending { limit } => ApiError::TooManyPending { limit },
                other => {
                    // Its outcome may be unknown (a reply that timed out): a 503 must mean
                    // "not queued", so the enqueue is undone, now or whenever it lands.
                    tracing::error!(error = %other, "enqueue failed");
                    self.inner.queue.abort_enqueue(id, user);
                    ApiError::Unavailable
                }
            })?;
        let mut message = ChatMessage::queued(id, user, request, Utc::now());
        message.queue_position = Some(enqueued.position);
        message.ticket = Some(enqueued.ticket);
        message.retry_of = retry_of;
        message.idempotency_key = idempotency_key.clone();
        match self
            .inner
            .store
            .apply(id, Change::Create(Box::new(message)))
            .await
        {
            // The position is the one the enqueue computed, not read again: a page made it
            // when it sent the request, and shows a newer position frame over it (client.js
            // `applyRead`), so it never goes back.
            Ok(message) => Ok(self.view_at_enqueue(message, enqueued.position)),
            Err(err) => {
                // Nothing was written: take the job out of the queue and free its slot (in
                // the background, retried: the queue store may be what is slow).
                self.inner.queue.abort_enqueue(id, user);
                match (err, idempotency_key) {
                    // A concurrent request with the same key won the race.
                    (StoreError::Refused(Refusal::AlreadyExists), Some(key)) => self
                        .earlier_answer(user, &key)
                        .await?
                        .ok_or(ApiError::Unavailable),
                    (err, _) => {
                        tracing::error!(error = %err, "could not record a new message");
                        Err(ApiError::Unavailable)
                    }
                }
            }
        }
    }

    /// Checks the checkpoint and the sampler against what the backends offer, and names the
    /// checkpoint as they list it (a title becomes its name; none becomes `DEFAULT_MODEL`
    /// while some backend offers it). While no backend has answered nothing is checked:
    /// an outage is not a validation error.
    fn check_choice(&self, request: &mut CreateRequest) -> Result<(), ApiError> {
        let default = self.inner.settings.default_model.as_deref();
        self.inner.forge.models().read(|catalogue| {
            if catalogue.is_empty() {
                return Ok(());
            }
            match &request.model {
                Some(asked) => match catalogue.model_named(asked) {
                    Some(name) => request.model = Some(name),
                    None => return Err(not_offered("model", asked)),
                },
                None => request.model = default.and_then(|name| catalogue.model_named(name)),
            }
            if catalogue.lists_samplers() && !catalogue.has_sampler(&request.params.sampler_name) {
                return Err(not_offered("sampler_name", &request.params.sampler_name));
            }
            Ok(())
        })
    }

    /// The message an earlier submit with this `Idempotency-Key` made, if any; the key is
    /// checked first.
    async fn earlier_answer(&self, user: &str, key: &str) -> Result<Option<MessageView>, ApiError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.contains('\0') {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                Invalid::Chars {
                    min: 1,
                    max: MAX_IDEMPOTENCY_KEY,
                },
            ));
        }
        match self
            .inner
            .db
            .find_by_idempotency_key(user, key)
            .await
            .map_err(db_error)?
        {
            Some(existing) => Ok(Some(self.view(existing).await)),
            None => Ok(None),
        }
    }

    /// Deep-merges a client patch into the message's data. The store checks the owner in the
    /// same read-modify-write (no read of its own: a hot message takes many patches a second).
    pub async fn patch(&self, user: &str, id: Uuid, patch: Value) -> Result<MessageView, ApiError> {
        self.patch_once(user, id, patch, None)
            .await
            .map(|written| written.view)
    }

    /// [`patch`](Self::patch) with the client's ref of the write: a ref the message remembers
    /// is not applied again, and answers the message as it is ([`Written::again`]).
    pub async fn patch_once(
        &self,
        user: &str,
        id: Uuid,
        patch: Value,
        client_ref: Option<String>,
    ) -> Result<Written, ApiError> {
        let change = Change::ClientPatch {
            owner: user.to_owned(),
            patch,
            client_ref,
        };
        match self.inner.store.apply(id, change).await {
            Ok(message) => Ok(Written::now(self.view(message).await)),
            Err(StoreError::Refused(Refusal::AlreadyApplied)) => self.again(user, id).await,
            Err(StoreError::Refused(Refusal::Patch(err))) => Err(data_error("data", &err)),
            Err(StoreError::Refused(Refusal::NotFound)) => Err(ApiError::NotFound),
            Err(err) => {
                tracing::error!(message_id = %id, error = %err, "patch failed");
                Err(store_error(&err))
            }
        }
    }

    /// Cancels a pending message: out of the queue, or interrupted on its backend.
    pub async fn cancel(&self, user: &str, id: Uuid) -> Result<MessageView, ApiError> {
        self.cancel_once(user, id, None)
            .await
            .map(|written| written.view)
    }

    /// [`cancel`](Self::cancel) with the client's ref of the command: the same ref again
    /// answers the cancelled message ([`Written::again`]) instead of a conflict.
    pub async fn cancel_once(
        &self,
        user: &str,
        id: Uuid,
        client_ref: Option<String>,
    ) -> Result<Written, ApiError> {
        self.owned(user, id).await?;
        match self
            .inner
            .store
            .apply(id, Change::Transition(Transition::Cancel { client_ref }))
            .await
        {
            Ok(message) => {
                self.after_terminal(&message).await;
                Ok(Written::now(self.view(message).await))
            }
            Err(StoreError::Refused(Refusal::AlreadyApplied)) => self.again(user, id).await,
            Err(StoreError::Refused(Refusal::IllegalTransition { from, .. })) => {
                Err(ApiError::Conflict(StateConflict::AlreadyFinished {
                    status: from,
                }))
            }
            Err(StoreError::Refused(Refusal::NotFound)) => Err(ApiError::NotFound),
            Err(err) => {
                tracing::error!(message_id = %id, error = %err, "cancel failed");
                Err(ApiError::Unavailable)
            }
        }
    }

    /// Creates a new message with the same prompt and parameters (R5.4); with `reuse_seed`,
    /// with the seed Forge used for the original, so the same image comes again. The options
    /// are checked only once the message is known to be the caller's: another user's id
    /// answers 404 whatever else the request holds.
    pub async fn retry(
        &self,
        user: &str,
        id: Uuid,
        idempotency_key: Option<String>,
        reuse_seed: bool,
    ) -> Result<MessageView, ApiError> {
        let original = self.owned(user, id).await?;
        if original.status.is_pending() {
            return Err(ApiError::Conflict(StateConflict::StillPending));
        }
        let mut params = original.params;
        if reuse_seed && let Some(seed) = original.seed {
            params.seed = seed;
        }
        let request = CreateRequest {
            prompt: original.prompt,
            params,
            conversation_id: original.conversation_id,
            model: original.model,
            data: Value::Object(Default::default()),
        };
        self.submit(user, request, idempotency_key, Some(id)).await
    }

    /// Frees what a job held once it is terminal: its run, its queue entry and its cap slot.
    pub async fn after_terminal(&self, message: &ChatMessage) {
        // A run of it on this process's backends stops now; a run elsewhere stops when that
        // process's event bus hands it the `job.error`/`job.cancelled` (`EventBus::on_job_ended`).
        self.inner.forge.abandon(message.id);
        let _ = self.inner.queue.remove(message.id).await;
        if let Err(err) = self.inner.queue.release(&message.user_id, message.id).await {
            tracing::warn!(message_id = %message.id, error = %err, "could not free the pending slot; it heals at the next cap check");
        }
    }

    /// Whether the database and the queue store answer, each with why not.
    pub async fn readiness(&self) -> Readiness {
        let (database, queue) = tokio::join!(self.inner.db.ping(), self.inner.queue.ping());
        Readiness {
            database: database.map_err(|err| err.to_string()),
            queue: queue.map_err(|err| err.to_string()),
        }
    }

    /// A write whose ref the message remembers: the message as it is now.
    async fn again(&self, user: &str, id: Uuid) -> Result<Written, ApiError> {
        let message = self.owned(user, id).await?;
        Ok(Written {
            view: self.view(message).await,
            again: true,
        })
    }

    async fn owned(&self, user: &str, id: Uuid) -> Result<ChatMessage, ApiError> {
        self.inner
            .db
            .get_for_user(user, id)
            .await
            .map_err(db_error)?
            .ok_or(ApiError::NotFound)
    }
}

/// The answer to a client write with a ref.
#[derive(Clone, Debug)]
pub struct Written {
    /// The message after the write.
    pub view: MessageView,
    /// The write was applied before (its ref was remembered), not now: nobody else heard of
    /// it this time, so its sender must be told here.
    pub again: bool,
}

impl Written {
    fn now(view: MessageView) -> Written {
        Written { view, again: false }
    }
}

/// Whether each dependency answers (`Err` holds why not, for the log and the admin).
#[derive(Clone, Debug)]
pub struct Readiness {
    /// The database.
    pub database: Result<(), String>,
    /// The queue store.
    pub queue: Result<(), String>,
}

impl Readiness {
    /// Whether everything answers.
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.queue.is_ok()
    }
}

/// The answer to a write the store could not make: a message whose record cannot be read is
/// a 500 (a damaged row: trying again will not help); anything else may pass, so 503.
fn store_error(err: &StoreError) -> ApiError {
    match err {
        StoreError::Row(DbError::Corrupt { .. }) | StoreError::Refused(Refusal::Unreadable) => {
            ApiError::Internal
        }
        _ => ApiError::Unavailable,
    }
}

fn db_error(err: DbError) -> ApiError {
    tracing::error!(error = %err, "database read failed");
    match err {
        DbError::Corrupt { .. } => ApiError::Internal,
        _ => ApiError::Unavailable,
    }
}

/// `field` names what no backend offers.
fn not_offered(field: &str, asked: &str) -> ApiError {
    ApiError::invalid(
        field,
        Invalid::NotOffered {
            name: asked.chars().take(64).collect(),
        },
    )
}
