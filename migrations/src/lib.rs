//! The one place that knows the schema of both databases and applies it.

use platform::read_model::READER_ROLE;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, Executor};
use std::str::FromStr;

/// The write side: event store, outbox, idempotency keys.
pub static WRITE: Migrator = sqlx::migrate!("./write");

/// The read side: query tables, consumer offsets, parked and poison messages.
pub static READ: Migrator = sqlx::migrate!("./read");

/// Creates the database named in `url` if it does not exist yet (connecting to `postgres`).
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .ok_or_else(|| sqlx::Error::Configuration("the database URL names no database".into()))?
        .to_owned();
    let mut admin = options.database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1::text) as "exists!""#,
        &name,
    )
    .fetch_one(&mut admin)
    .await?;
    if !exists {
        // Dynamic: a database named at run time.
        let quoted = name.replace('"', "\"\"");
        match admin
            .execute(format!("create database \"{quoted}\"").as_str())
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

/// Creates a login role for the query API that can only read the read database: a member of
/// the reader role the read migrations create.
pub async fn ensure_reader_login(pool: &PgPool, login: &str) -> Result<(), sqlx::Error> {
    // Dynamic: a role named at run time.
    let quoted = login.replace('"', "\"\"");
    let statement = format!(
        "do $$ begin create role \"{quoted}\" login in role {READER_ROLE}; \
         exception when duplicate_object then null; end $$"
    );
    pool.execute(statement.as_str()).await?;
    Ok(())
}
