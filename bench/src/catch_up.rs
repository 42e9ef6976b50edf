//! `bench catch-up`: produces a backlog of whole delivery lifecycles straight to a topic, reads
//! it once with a bare rdkafka consumer (the broker's raw consume rate), then runs the projector
//! on a fresh read database and times it until every event is applied.

use anyhow::{Context, bail};
use chrono::Utc;
use domain::fixtures::{assigned, completed, details, envelope_of, id, picked_up};
use domain::{Actor, Created, DeliveryEvent, Event, EventEnvelope, OrderRef, Role};
use futures::StreamExt;
use projector::{ConsumerSettings, Progress, ProjectorConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub(crate) brokers: String,
    /// A topic created for the run (it must be empty: the backlog is all it holds).
    #[arg(long, default_value = "bench.catchup")]
    pub(crate) topic: String,
    /// Events in the backlog (whole lifecycles of 4 events).
    #[arg(long, default_value_t = 200_000)]
    pub(crate) events: u64,
    /// A read database to create (dropped first if it exists) and project into.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/delivery_bench_read"
    )]
    pub(crate) read_database_url: String,
    /// Messages applied per read-database transaction.
    #[arg(long, default_value_t = 2000)]
    pub(crate) batch_size: usize,
    /// Batch transactions at once, as `projector run --lanes` (its default, 2).
    #[arg(long, default_value_t = 2)]
    pub(crate) lanes: usize,
    /// A librdkafka setting over the projector's own, KEY=VALUE (repeatable), as
    /// `projector run --consumer-setting` takes it.
    #[arg(long = "consumer-setting", value_parser = platform::service::key_value)]
    pub(crate) consumer_settings: Vec<(String, String)>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let deliveries = config.events / 4;
    let events = deliveries * 4;
    let produced = Instant::now();
    produce(&config.brokers, &config.topic, deliveries).await?;
    let produce_secs = produced.elapsed().as_secs_f64();
    println!(
        "backlog: {events} events ({deliveries} deliveries) produced in {produce_secs:.1}s ({:.0} events/s)",
        events as f64 / produce_secs
    );

    let raw = raw_consume(&config.brokers, &config.topic, events).await?;
    println!(
        "raw rdkafka consume: {events} messages in {raw:.2}s ({:.0} messages/s)",
        events as f64 / raw
    );

    fresh_database(&config.read_database_url).await?;
    let group = format!("bench-catch-up-{}", Uuid::now_v7());
    let (elapsed, batches) = project(&config, &group, events).await?;
    println!(
        "projector catch-up: {events} events in {elapsed:.2}s ({:.0} events/s, {batches} batches, \
         {:.0}% of the raw consume rate)",
        events as f64 / elapsed,
        100.0 * raw / elapsed
    );
    Ok(())
}

/// Migrates the (fresh) read database and runs the projector as consumer group `group` until
/// it has applied `events`. Returns the seconds it took and the batches it used.
pub(crate) async fn project(
    config: &Config,
    group: &str,
    events: u64,
) -> anyhow::Result<(f64, u64)> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(config.lanes).unwrap_or(16).clamp(1, 16) + 2)
        .connect(&config.read_database_url)
        .await
        .context("connecting to the bench read database")?;
    migrations::READ.run(&pool).await?;
    let progress = Arc::new(Progress::default());
    let shutdown = CancellationToken::new();
    let projector_config = ProjectorConfig {
        brokers: config.brokers.clone(),
        consumer_settings: ConsumerSettings::new(config.consumer_settings.iter().cloned()),
        topic: config.topic.clone(),
        group: group.to_owned(),
        batch_size: config.batch_size,
        lanes: config.lanes,
    };
    let started = Instant::now();
    let running = tokio::spawn(projector::run(
        pool.clone(),
        projector_config,
        progress.clone(),
        shutdown.clone(),
    ));
    let deadline = started + Duration::from_secs(1800);
    while progress.applied.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline || running.is_finished() {
            bail!(
                "the projector applied only {} of {events} events",
                progress.applied.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await??;
    pool.close().await;
    Ok((elapsed, progress.batches.load(Ordering::Relaxed)))
}

/// Delivery `n`'s whole lifecycle in the test kit's words (`domain::fixtures`), with its own
/// order and one of 500 riders, stamped now with fresh event ids as the command API would.
fn lifecycle(n: u64) -> Vec<EventEnvelope> {
    let delivery = id(u128::from(n) + 1);
    let rider = format!("rider-{}", n % 500);
    let order_ref = OrderRef::parse(format!("order-{n}")).unwrap_or_else(|_| unreachable!());
    let changes = [
        DeliveryEvent::Created(Created {
            order_ref,
            ..details()
        }),
        assigned(&rider),
        picked_up(&rider),
        completed(&rider),
    ];
    let now = Utc::now();
    changes
        .into_iter()
        .zip(1..)
        .map(|(change, version)| {
            let event = Event {
                delivery_id: delivery,
                occurred_at: now,
                actor: Actor::new(Role::System, "bench"),
                change,
            };
            EventEnvelope {
                event_id: Uuid::now_v7(),
                correlation_id: Uuid::nil(),
                causation_id: Uuid::nil(),
                ..envelope_of(&event, version)
            }
        })
        .collect()
}

pub(crate) async fn produce(brokers: &str, topic: &str, deliveries: u64) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..deliveries {
        for envelope in lifecycle(n) {
            let key = envelope.delivery_id.to_string();
            let payload = envelope.to_json();
            let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    // The local queue is full: wait for an acknowledgement, then try again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), again)) => {
                        record = again;
                        acknowledged(pending.next().await)?;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
        }
    }
    while let Some(result) = pending.next().await {
        acknowledged(Some(result))?;
    }
    Ok(())
}

fn acknowledged(
    result: Option<
        Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    >,
) -> anyhow::Result<()> {
    match result {
        None | Some(Ok(Ok(_))) => Ok(()),
        Some(Ok(Err((error, _)))) => Err(error.into()),
        Some(Err(_)) => bail!("the producer went away"),
    }
}

/// Seconds a bare consumer takes to read `events` messages from the start of the topic.
pub(crate) async fn raw_consume(brokers: &str, topic: &str, events: u64) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-raw-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut stream = consumer.stream();
    let mut read = 0u64;
    while read < events {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Ok(_))) => read += 1,
            Ok(Some(Err(error))) => bail!("raw consumer: {error}"),
            Ok(None) | Err(_) => bail!("raw consumer read only {read} of {events}"),
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) async fn fresh_database(url: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection, Executor};
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .context("the read database URL names no database")?
        .to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    // Dynamic: a database named at run time.
    admin
        .execute(format!("drop database if exists \"{name}\" with (force)").as_str())
        .await?;
    admin
        .execute(format!("create database \"{name}\"").as_str())
        .await?;
    admin.close().await?;
    Ok(())
}
