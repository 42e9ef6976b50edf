//! The `projector` command line: its arguments (clap) and what each command runs. `main` only
//! sets up logging and calls [`run`].

use crate::audit::AuditConfig;
use crate::catalog;
use crate::rebuild::RebuildConfig;
use crate::{ConsumerSettings, Progress, ProjectorConfig, Subscription, monitor};
mod dlq;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use domain::DeliveryId;
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The read side's projector: Kafka `delivery.events` -> query tables in the read database.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// The read database (query tables and the stored consumer offsets).
    #[arg(long, env = "READ_DATABASE_URL")]
    pub database_url: String,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Consume the topic as a member of the consumer group and keep the query tables current.
    Run(RunArgs),
    /// Replay the topic from its first event into new versions of projections' tables while
    /// the live projector goes on, then switch them live atomically once they reach its
    /// position. Resumes an interrupted rebuild of the same projections.
    Rebuild(RebuildArgs),
    /// Check the event store, the topic and the read model against each other.
    Audit(AuditArgs),
    /// Stuck events: poison messages and the events parked behind them. List them, apply
    /// them again (after a fix), or skip one so its delivery moves on. Every retry and skip
    /// is recorded in `dlq_actions` with who, when and why.
    Dlq(dlq::DlqArgs),
}

#[derive(Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    kafka: TopicArgs,
    /// The live projector's consumer group, whose stored position the rebuild catches up to.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "delivery-projector")]
    group: String,
    /// A projection to rebuild (repeat for several; all when omitted): deliveries, history or
    /// counts. One the read database does not have yet is built from the first event.
    #[arg(long = "projection", value_parser = projection_name)]
    projections: Vec<&'static dyn catalog::Projection>,
    /// Keep the replaced tables in a `retired_...` schema instead of dropping them.
    #[arg(long)]
    keep_old: bool,
    /// Discard an interrupted rebuild of the same projections instead of resuming it.
    #[arg(long)]
    from_scratch: bool,
    /// Most messages applied in one transaction.
    #[arg(long, default_value_t = 2500)]
    batch_size: usize,
    /// Transactions applied at once, each with partitions of its own (and a connection).
    #[arg(long, default_value_t = 2)]
    lanes: usize,
    /// No progress bar (one is drawn only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Rebuild even though the topic no longer starts at offset 0 (retention deleted its
    /// first events): the rebuilt tables then lack those events' deliveries and history.
    /// Without it such a rebuild is refused.
    #[arg(long)]
    allow_truncated_history: bool,
    /// Serve GET /metrics (the rebuild's progress) and GET /health on this address while the
    /// rebuild runs; no listener when omitted.
    #[arg(long, env = "PROJECTOR_REBUILD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
}

fn projection_name(name: &str) -> Result<&'static dyn catalog::Projection, String> {
    catalog::by_name(name).ok_or_else(|| {
        let known: Vec<String> = catalog::ALL
            .iter()
            .map(|p| format!("{} ({})", p.name(), p.about()))
            .collect();
        format!("unknown projection; known: {}", known.join("; "))
    })
}

#[derive(Args)]
pub struct TopicArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The event topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "delivery.events")]
    topic: String,
    /// A librdkafka consumer property, KEY=VALUE, set over the projector's own on every
    /// consumer it makes (repeat it, or give several comma separated in the variable): TLS
    /// and SASL for a real cluster (security.protocol, sasl.mechanism, ...), or fetch tuning.
    #[arg(long = "consumer-setting", env = "KAFKA_CONSUMER_SETTINGS", value_delimiter = ',',
          value_parser = platform::service::key_value, hide_env_values = true)]
    consumer_settings: Vec<(String, String)>,
}

impl TopicArgs {
    fn consumer_settings(&self) -> ConsumerSettings {
        ConsumerSettings::new(self.consumer_settings.iter().cloned())
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    kafka: TopicArgs,
    /// The consumer group; instances of one group share the partitions.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "delivery-projector")]
    group: String,
    /// Most messages applied in one read-database transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 2000)]
    batch_size: usize,
    /// Batch transactions applied at once, each on partitions of its own (and a connection):
    /// a delivery's events stay in order, other partitions' deliveries apply beside them.
    #[arg(long, env = "PROJECTOR_LANES", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    lanes: u16,
    /// Address of the projector's HTTP listener: GET /metrics (Prometheus) and GET /health.
    #[arg(long, env = "PROJECTOR_HTTP_LISTEN", default_value = "127.0.0.1:8083")]
    http_listen: SocketAddr,
}

/// How often `projector run` reads its lag and the stuck events for its metrics.
const MONITOR_EVERY: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCmd,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Compare every delivery (or one) event by event across the event store, the topic and
    /// `delivery_history`, verify the stored hash chains, and check each `deliveries` row against
    /// the state folded from the stored events. Prints one line per problem and a summary;
    /// exits with 1 when anything disagrees.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The write database holding the event store (read only).
    #[arg(long, env = "WRITE_DATABASE_URL")]
    write_database_url: String,
    #[command(flatten)]
    kafka: TopicArgs,
    /// Audit only this delivery (a UUID).
    #[arg(long, value_parser = DeliveryId::parse)]
    delivery: Option<DeliveryId>,
    /// Give up when the topic yields nothing for this many seconds before its end.
    #[arg(long, default_value_t = 30)]
    stall_timeout_secs: u64,
}

/// Runs what `cli` asks for; stdout is the command's report, logs go to stderr.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A rebuild holds one connection per lane, one for its lock and one for the switch.
    let connections = match &cli.command {
        Cmd::Rebuild(args) => args.lanes.clamp(1, 16) as u32 + 3,
        // One per lane, one for the metrics' watcher and one to spare.
        Cmd::Run(args) => u32::from(args.lanes) + 2,
        _ => 4,
    };
    let options = PgPoolOptions::new().max_connections(connections);
    let pool = match &cli.command {
        // A long-running projector waits for a database that is not up yet, as it rides out
        // one that restarts later: it connects when it first needs to, and retries.
        Cmd::Run(_) => options
            .connect_lazy(&cli.database_url)
            .context("the read database URL (READ_DATABASE_URL)")?,
        _ => options
            .connect(&cli.database_url)
            .await
            .context("connecting to the read database (READ_DATABASE_URL)")?,
    };
    match cli.command {
        Cmd::Run(args) => {
            // On Ctrl-C or SIGTERM the batch being written still commits; only reading stops.
            let shutdown = platform::service::cancel_on_shutdown();
            let config = ProjectorConfig {
                consumer_settings: args.kafka.consumer_settings(),
                brokers: args.kafka.brokers,
                topic: args.kafka.topic,
                group: args.group,
                batch_size: args.batch_size.max(1),
                lanes: usize::from(args.lanes),
            };
            platform::service::metrics::serve_operations(
                args.http_listen,
                "projector",
                shutdown.clone(),
            )
            .await?;
            let subscription = Subscription {
                group: config.group.clone(),
                topic: config.topic.clone(),
            };
            let watcher = monitor::Watcher::new(
                pool.clone(),
                &config.brokers,
                &config.consumer_settings,
                subscription,
                MONITOR_EVERY,
            )
            .context("creating the metrics' Kafka client")?;
            tokio::spawn(watcher.run(shutdown.clone()));
            crate::run(pool, config, Arc::new(Progress::default()), shutdown)
                .await
                .context("projecting the event topic")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rebuild(args) => {
            // On Ctrl-C or SIGTERM the batch being written still commits; only reading stops.
            let shutdown = platform::service::cancel_on_shutdown();
            if let Some(address) = args.http_listen {
                let name = "rebuild";
                platform::service::metrics::serve_operations(address, name, shutdown.clone())
                    .await?;
            }
            let projections = if args.projections.is_empty() {
                catalog::ALL.to_vec()
            } else {
                args.projections
            };
            let config = RebuildConfig {
                consumer_settings: args.kafka.consumer_settings(),
                brokers: args.kafka.brokers,
                topic: args.kafka.topic,
                live_group: args.group,
                projections,
                keep_old: args.keep_old,
                from_scratch: args.from_scratch,
                batch_size: args.batch_size.max(1),
                lanes: args.lanes.clamp(1, 16),
                progress_bar: !args.no_progress,
                allow_truncated_history: args.allow_truncated_history,
                switch_timeout: Duration::from_secs(10),
            };
            let report = crate::rebuild::rebuild(&pool, &config, &shutdown)
                .await
                .context("rebuilding")?;
            match peak_memory_kib() {
                Some(kib) => println!("{report}; peak RSS {:.1} MiB", kib as f64 / 1024.0),
                None => println!("{report}"),
            }
            Ok(if report.switched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(130)
            })
        }
        Cmd::Audit(AuditArgs {
            command: AuditCmd::Verify(args),
        }) => {
            let write = PgPoolOptions::new()
                .max_connections(2)
                .connect(&args.write_database_url)
                .await
                .context("connecting to the write database (WRITE_DATABASE_URL)")?;
            let config = AuditConfig {
                consumer_settings: args.kafka.consumer_settings(),
                brokers: args.kafka.brokers,
                topic: args.kafka.topic,
                delivery: args.delivery,
                stall_timeout: Duration::from_secs(args.stall_timeout_secs),
            };
            let report = crate::audit::verify(&write, &pool, &config)
                .await
                .context("auditing")?;
            print!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Dlq(args) => dlq::run(&pool, args).await,
    }
}

/// The process's peak resident memory (Linux), for the rebuild's report.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
