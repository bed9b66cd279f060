//! Listings page a user's messages newest first by id (UUIDv7, ordered by when each was
//! made), with the id as the cursor: an index on `(user_id, id)` serves them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    UserId,
    Id,
}

const NAME: &str = "idx_messages_user_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Messages::Table)
                    .col(Messages::UserId)
                    .col(Messages::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table(Messages::Table).to_owned())
            .await
    }
}
