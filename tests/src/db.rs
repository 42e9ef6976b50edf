//! Fresh databases on the local Postgres: one per test (or per stack), migrated, removed at
//! the end. `#[sqlx::test]` gives a test one such database; these are for a second one, for a
//! test that drives its own runtime, and for the end-to-end stack.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use std::str::FromStr;
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// The local Postgres, as the superuser the tests create databases with.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// [`admin_url`] as connect options.
pub fn admin_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&admin_url()).expect("DATABASE_URL is a valid Postgres URL")
}

/// Serializes database creation, migration and role creation within a test process: the read
/// migrations create a cluster-wide role, and concurrent `create role` races in Postgres.
static SETUP: Mutex<()> = Mutex::const_new(());

/// Holds off every other database or role set-up of this process while it is kept.
pub async fn setup_lock() -> MutexGuard<'static, ()> {
    SETUP.lock().await
}

/// A fresh, migrated database of one test; [`FreshDatabase::remove`] drops it.
pub struct FreshDatabase {
    pub pool: PgPool,
    pub name: String,
}

impl FreshDatabase {
    /// Creates the database `<prefix>_<unique suffix>` and runs `migrator` on it.
    pub async fn create(prefix: &str, migrator: &Migrator) -> FreshDatabase {
        let name = format!("{prefix}_{}", Uuid::now_v7().simple());
        let _setup = setup_lock().await;
        let mut admin = admin_options().connect().await.expect("connect as admin");
        admin
            .execute(format!("create database {name}").as_str())
            .await
            .expect("create database");
        let _ = admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin_options().database(&name))
            .await
            .expect("connect to the fresh database");
        migrator.run(&pool).await.expect("migrate");
        FreshDatabase { pool, name }
    }

    /// Options that connect to this database (as the admin; change the user as needed).
    pub fn options(&self) -> PgConnectOptions {
        admin_options().database(&self.name)
    }

    /// Closes the pool and drops the database, ending whatever sessions it still has.
    pub async fn remove(self) {
        self.pool.close().await;
        let mut admin = admin_options().connect().await.expect("connect as admin");
        admin
            .execute(format!("drop database if exists {} with (force)", self.name).as_str())
            .await
            .expect("drop database");
        let _ = admin.close().await;
    }
}

/// Changes the event store of `write` as someone with the owner's privileges could: the
/// immutability trigger is switched off for `statement` and back on, in one transaction.
pub async fn tamper(write: &PgPool, statement: &str) {
    let mut tx = write.begin().await.expect("begin");
    for sql in [
        "alter table events disable trigger events_are_immutable",
        statement,
        "alter table events enable trigger events_are_immutable",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.expect("commit");
}

/// Holds every insert into `events` of `write` until the returned transaction ends (reads go
/// on): commands then wait inside their statement for as long as a test wants, with no timing
/// involved.
pub async fn hold_appends(write: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = write.begin().await.expect("transaction");
    sqlx::query("lock table events in exclusive mode")
        .execute(&mut *lock)
        .await
        .expect("lock");
    lock
}
