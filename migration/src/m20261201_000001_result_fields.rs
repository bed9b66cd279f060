//! What the WebSocket shows about a running or finished job must be readable over REST after
//! a reload: Forge's estimate of the seconds left (`eta_s`), the live preview's URL
//! (`preview_url`) and the seed Forge really used (`seed`). Also the index retention deletes by:
//! finished rows by status and last change.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Messages {
    Table,
    Status,
    UpdatedAt,
    EtaS,
    PreviewUrl,
    Seed,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement (SQLite adds one at a time), each only if missing, so a
        // second process running the same migration meanwhile changes nothing.
        let columns = [
            (Messages::EtaS, integer_null(Messages::EtaS)),
            (
                Messages::PreviewUrl,
                string_len_null(Messages::PreviewUrl, 512),
            ),
            (Messages::Seed, big_integer_null(Messages::Seed)),
        ];
        for (name, mut column) in columns {
            if manager.has_column("messages", &name.to_string()).await? {
                continue;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // Retention: finished messages by status and last change, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_status_updated")
                    .table(Messages::Table)
                    .col(Messages::Status)
                    .col(Messages::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_messages_status_updated")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await?;
        for name in [Messages::EtaS, Messages::PreviewUrl, Messages::Seed] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .drop_column(name)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
