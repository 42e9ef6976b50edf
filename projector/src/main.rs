//! `projector run`: builds the query tables from the event topic until stopped.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use projector::{Progress, ProjectorConfig};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The read side's projector: Kafka `delivery.events` -> query tables in the read database.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The read database (query tables and the stored consumer offsets).
    #[arg(long, env = "READ_DATABASE_URL")]
    database_url: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume the topic as a member of the consumer group and keep the query tables current.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The event topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "delivery.events")]
    topic: String,
    /// The consumer group; instances of one group share the partitions.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "delivery-projector")]
    group: String,
    /// Most messages applied in one read-database transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 2000)]
    batch_size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cli.database_url)
        .await
        .context("connecting to the read database (READ_DATABASE_URL)")?;
    match cli.command {
        Cmd::Run(args) => {
            let shutdown = CancellationToken::new();
            let cancel = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                cancel.cancel();
            });
            let config = ProjectorConfig {
                brokers: args.brokers,
                topic: args.topic,
                group: args.group,
                batch_size: args.batch_size.max(1),
            };
            projector::run(pool, config, Arc::new(Progress::default()), shutdown)
                .await
                .context("projecting the event topic")
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM. The batch being written still commits; only reading stops.
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
