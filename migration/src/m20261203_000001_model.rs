//! The checkpoint a message asks for, and once complete the one Forge says it used
//! (`model`, issue 25).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Messages {
    Table,
    Model,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Only if missing, so a second process running the same migration changes nothing.
        if manager.has_column("messages", "model").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(string_len_null(Messages::Model, 255))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::Model)
                    .to_owned(),
            )
            .await
    }
}
