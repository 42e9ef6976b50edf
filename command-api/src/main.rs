//! `command-api`: serves the HTTP command endpoints.

use anyhow::Context;
use clap::Parser;
use command_api::{AppState, Tokens, app};
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;

/// The delivery command API.
#[derive(Parser)]
#[command(version, about)]
struct Config {
    /// The write database (event store and outbox).
    #[arg(long, env = "WRITE_DATABASE_URL")]
    database_url: String,
    /// Address to listen on.
    #[arg(long, env = "COMMAND_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer tokens and their actors: TOKEN=ROLE:ID, comma separated
    /// (roles: dispatcher, rider, customer, admin, system).
    #[arg(long, env = "COMMAND_API_TOKENS", hide_env_values = true)]
    tokens: String,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "COMMAND_API_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    max_body_bytes: usize,
    /// Connections in the database pool.
    #[arg(long, env = "COMMAND_API_DB_CONNECTIONS", default_value_t = 16)]
    db_connections: u32,
    /// Apply the write database's migrations before serving (for a single-instance dev stack).
    #[arg(long, env = "COMMAND_API_MIGRATE")]
    migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    let config = Config::parse();
    let tokens = Tokens::parse(&config.tokens).context("reading COMMAND_API_TOKENS")?;
    let pool = PgPoolOptions::new()
        .max_connections(config.db_connections)
        .connect(&config.database_url)
        .await
        .context("connecting to the write database")?;
    if config.migrate {
        migrations::WRITE
            .run(&pool)
            .await
            .context("migrating the write database")?;
    }
    let state = AppState {
        pool,
        tokens,
        max_body_bytes: config.max_body_bytes,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, "command API listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")
}

/// Resolves on Ctrl-C or SIGTERM, so in-flight commands finish before the process exits.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
