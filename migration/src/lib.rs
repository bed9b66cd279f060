//! sea-orm migrations of forge-gateway. The gateway runs them at start
//! (`Migrator::up(&db, None)`); they are safe to run from several processes in turn.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_create_messages;
mod m20261201_000001_result_fields;
mod m20261202_000001_client_refs;
mod m20261202_000002_job_runs;
mod m20261202_000003_write_probe;
mod m20261202_000004_user_id_index;
mod m20261203_000001_model;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_messages::Migration),
            Box::new(m20261201_000001_result_fields::Migration),
            Box::new(m20261202_000001_client_refs::Migration),
            Box::new(m20261202_000002_job_runs::Migration),
            Box::new(m20261202_000003_write_probe::Migration),
            Box::new(m20261202_000004_user_id_index::Migration),
            Box::new(m20261203_000001_model::Migration),
        ]
    }
}
