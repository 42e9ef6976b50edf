//! `command-api serve`: the HTTP command endpoints. `command-api relay`: the outbox relay.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use command_api::relay::{self, RelayConfig};
use command_api::serve::ServeConfig;
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;
use std::time::Duration;

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
    /// The most outbox rows one read queues to the producer.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500)]
    batch_size: i64,
    /// The most messages queued to the broker and not yet acknowledged: the relay reads and
    /// queues new rows while earlier ones await their acknowledgement.
    #[arg(long, env = "RELAY_MAX_IN_FLIGHT", default_value_t = 2000)]
    max_in_flight: usize,
    /// Fallback polling interval in milliseconds, for when a notification is missed.
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
    /// A librdkafka producer property, KEY=VALUE, set over the relay's own (repeat it, or give
    /// several comma separated in the variable): TLS and SASL for a real cluster
    /// (security.protocol, sasl.mechanism, ...), or batching (linger.ms). Idempotence, acks
    /// and the partitioner are the relay's guarantees and cannot be set.
    #[arg(long = "producer-setting", env = "KAFKA_PRODUCER_SETTINGS", value_delimiter = ',',
          value_parser = platform::service::key_value, hide_env_values = true)]
    producer_settings: Vec<(String, String)>,
    /// Address of the relay's HTTP listener: GET /metrics (Prometheus) and GET /health.
    #[arg(long, env = "RELAY_HTTP_LISTEN", default_value = "127.0.0.1:8082")]
    http_listen: SocketAddr,
}

/// How often the relay reads the outbox backlog for its metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::Tracing::from_env_or("info,tower_http=info").init();
    // First: metrics recorded before the recorder exists are lost.
    platform::service::metrics::install();
    let cli = Cli::parse();
    match cli.command {
        // Serve builds its own pool, with its timeouts (see `command_api::serve`).
        Cmd::Serve(config) => command_api::serve::run(&cli.database_url, config).await,
        Cmd::Relay(args) => {
            // Lazy: the relay heals database outages itself, at start-up too (it stands by
            // and retries), so it need not exit when Postgres is not up yet.
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&cli.database_url)
                .context("parsing the write database URL (WRITE_DATABASE_URL)")?;
            let producers = relay::ProducerSettings::new(&args.brokers)
                .with_operator_settings(&args.producer_settings)
                .map_err(anyhow::Error::msg)
                .context("KAFKA_PRODUCER_SETTINGS")?;
            // On Ctrl-C or SIGTERM the relay stops reading; what it sent is still confirmed.
            let shutdown = platform::service::cancel_on_shutdown();
            let config = RelayConfig {
                topic: args.topic,
                batch_size: args.batch_size,
                max_in_flight: args.max_in_flight,
                poll_interval: Duration::from_millis(args.poll_ms),
            };
            platform::service::metrics::serve_operations(
                args.http_listen,
                "relay",
                shutdown.clone(),
            )
            .await?;
            let backlog =
                relay::monitor::watch_backlog(pool.clone(), BACKLOG_EVERY, shutdown.clone());
            tokio::spawn(backlog);
            // Returns only on shutdown: database and broker failures are healed inside.
            relay::run(pool, producers, config, shutdown)
                .await
                .context("relaying the outbox")
        }
    }
}
