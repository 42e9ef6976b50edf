//! `migrate`: creates the databases if needed and applies the write and read migrations.

use anyhow::Context;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(about = "Apply the write and read database migrations")]
struct Config {
    /// The write database (event store and outbox).
    #[arg(long, env = "WRITE_DATABASE_URL")]
    write_database_url: String,
    /// The read database (query tables).
    #[arg(long, env = "READ_DATABASE_URL")]
    read_database_url: String,
    /// A login role the query API connects as; it is given read-only access.
    #[arg(long, env = "QUERY_API_DB_USER", default_value = "query_api")]
    reader_login: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::Tracing::from_env_lossy().init();
    let config = Config::parse();
    for (name, url, migrator) in [
        ("write", &config.write_database_url, &migrations::WRITE),
        ("read", &config.read_database_url, &migrations::READ),
    ] {
        migrations::create_database_if_missing(url)
            .await
            .with_context(|| format!("creating the {name} database"))?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .with_context(|| format!("connecting to the {name} database"))?;
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("migrating the {name} database"))?;
        if name == "read" {
            migrations::ensure_reader_login(&pool, &config.reader_login)
                .await
                .context("creating the query API's read-only login")?;
        }
        println!("{name} database migrated");
    }
    Ok(())
}
