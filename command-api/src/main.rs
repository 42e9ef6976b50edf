//! `command-api serve`: the HTTP command endpoints. `command-api relay`: the outbox relay.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use command_api::relay::{self, RelayConfig};
use command_api::{AppState, Tokens, app};
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;

/// The delivery command side: HTTP command API and outbox relay.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The write database (event store and outbox).
    #[arg(long, env = "WRITE_DATABASE_URL")]
    database_url: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP command endpoints.
    Serve(ServeConfig),
    /// Publish the outbox to Kafka (one active relay at a time; others wait as standbys).
    Relay(RelayArgs),
}

#[derive(Args)]
struct RelayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic the events go to (created beforehand: the relay creates nothing).
    #[arg(long, env = "KAFKA_TOPIC", default_value = "delivery.events")]
    topic: String,
    /// Outbox rows published per round.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500)]
    batch_size: i64,
    /// Fallback polling interval in milliseconds, for when a notification is missed.
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
}

#[derive(Args)]
struct ServeConfig {
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
    let cli = Cli::parse();
    let pool = PgPoolOptions::new()
        .max_connections(match &cli.command {
            Cmd::Serve(config) => config.db_connections,
            Cmd::Relay(_) => 3,
        })
        .connect(&cli.database_url)
        .await
        .context("connecting to the write database (WRITE_DATABASE_URL)")?;
    match cli.command {
        Cmd::Serve(config) => serve(pool, config).await,
        Cmd::Relay(args) => {
            let producers = relay::ProducerSettings::new(&args.brokers);
            let shutdown = tokio_util::sync::CancellationToken::new();
            let cancel = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                cancel.cancel();
            });
            let config = RelayConfig {
                topic: args.topic,
                batch_size: args.batch_size,
                poll_interval: std::time::Duration::from_millis(args.poll_ms),
            };
            // Returns only on shutdown: database and broker failures are healed inside.
            relay::run(pool, producers, config, shutdown)
                .await
                .context("creating the Kafka producer")
        }
    }
}

async fn serve(pool: sqlx::PgPool, config: ServeConfig) -> anyhow::Result<()> {
    let tokens = Tokens::parse(&config.tokens).context("reading COMMAND_API_TOKENS")?;
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
