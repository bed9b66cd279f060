//! The refs of a message's recent client writes (`client_refs`, a JSON array as text), so a
//! write a client sends again after a lost connection is applied once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Messages {
    Table,
    ClientRefs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Only if missing, so a second process running the same migration changes nothing.
        if manager.has_column("messages", "client_refs").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(text(Messages::ClientRefs).default("[]"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::ClientRefs)
                    .to_owned(),
            )
            .await
    }
}
