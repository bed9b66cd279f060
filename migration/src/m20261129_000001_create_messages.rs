//! The `messages` table and the indexes its hot queries need.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone)]
enum Messages {
    Table,
    Id,
    UserId,
    ConversationId,
    Status,
    Progress,
    QueuePosition,
    Ticket,
    Prompt,
    Params,
    ImageUrl,
    Placeholder,
    ErrorCode,
    ErrorMessage,
    Data,
    Version,
    RetryOf,
    Backend,
    IdempotencyKey,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
    ActivityAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(uuid(Messages::Id).primary_key())
                    .col(string_len(Messages::UserId, 255))
                    .col(string_len_null(Messages::ConversationId, 255))
                    .col(string_len(Messages::Status, 16))
                    .col(small_integer(Messages::Progress).default(0))
                    .col(integer_null(Messages::QueuePosition))
                    .col(big_integer_null(Messages::Ticket))
                    .col(text(Messages::Prompt))
                    .col(json_binary(Messages::Params))
                    .col(string_len_null(Messages::ImageUrl, 512))
                    .col(boolean(Messages::Placeholder).default(false))
                    .col(string_len_null(Messages::ErrorCode, 64))
                    .col(text_null(Messages::ErrorMessage))
                    .col(json_binary(Messages::Data))
                    .col(big_integer(Messages::Version).default(0))
                    .col(uuid_null(Messages::RetryOf))
                    .col(string_len_null(Messages::Backend, 512))
                    .col(string_len_null(Messages::IdempotencyKey, 255))
                    .col(timestamp_with_time_zone(Messages::CreatedAt))
                    .col(timestamp_with_time_zone_null(Messages::StartedAt))
                    .col(timestamp_with_time_zone_null(Messages::FinishedAt))
                    .col(timestamp_with_time_zone(Messages::UpdatedAt))
                    .col(timestamp_with_time_zone(Messages::ActivityAt))
                    .to_owned(),
            )
            .await?;

        // The watchdog: pending jobs whose last activity is older than the limit.
        index(
            manager,
            "idx_messages_status_activity",
            &[Messages::Status, Messages::ActivityAt],
        )
        .await?;
        // Reloads and listings: a user's messages by status, newest first.
        index(
            manager,
            "idx_messages_user_status_created",
            &[Messages::UserId, Messages::Status, Messages::CreatedAt],
        )
        .await?;
        index(
            manager,
            "idx_messages_user_created",
            &[Messages::UserId, Messages::CreatedAt],
        )
        .await?;
        // The job deadline: pending jobs by age.
        index(
            manager,
            "idx_messages_status_created",
            &[Messages::Status, Messages::CreatedAt],
        )
        .await?;
        // Rebuilding the queue: queued jobs in ticket order.
        index(
            manager,
            "idx_messages_status_ticket",
            &[Messages::Status, Messages::Ticket],
        )
        .await?;
        // Idempotent create: one message per (user, Idempotency-Key).
        manager
            .create_index(
                Index::create()
                    .name("uq_messages_user_idempotency")
                    .table(Messages::Table)
                    .col(Messages::UserId)
                    .col(Messages::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Messages::Table).to_owned())
            .await
    }
}

async fn index(manager: &SchemaManager<'_>, name: &str, cols: &[Messages]) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(Messages::Table).if_not_exists();
    for col in cols {
        stmt.col(col.clone());
    }
    manager.create_index(stmt.to_owned()).await
}
