//! Job leases: how many times a backend has taken the job (`runs`, the fencing token of the
//! current run: a write of an older run is refused) and when its process last renewed its
//! lease (`lease_at`; the start of the run counts as the first renewal).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Messages {
    Table,
    Runs,
    LeaseAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement (SQLite adds one at a time), each only if missing, so a
        // second process running the same migration meanwhile changes nothing.
        let columns = [
            (
                Messages::Runs,
                big_integer(Messages::Runs).default(0).to_owned(),
            ),
            (
                Messages::LeaseAt,
                timestamp_with_time_zone_null(Messages::LeaseAt),
            ),
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
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [Messages::Runs, Messages::LeaseAt] {
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
