//! A one-row table readiness writes to after writes failed (a full disk), to prove they land
//! again before the process says it is ready (see the gateway's `domain::health`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WriteProbe {
    Table,
    Id,
    WrittenAt,
    Pad,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WriteProbe::Table)
                    .if_not_exists()
                    .col(integer(WriteProbe::Id).primary_key())
                    .col(timestamp_with_time_zone(WriteProbe::WrittenAt))
                    .col(text(WriteProbe::Pad))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WriteProbe::Table).to_owned())
            .await
    }
}
