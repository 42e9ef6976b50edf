//! The projector's metrics.
//!
//! - Per batch, from the consumer loop: its size and duration, and what became of its events
//!   (applied, duplicate, parked, poison, already consumed).
//! - On a timer of its own, from the broker and the read database: the lag of each
//!   partition (its high watermark minus the offset stored with the read model), and the stuck
//!   events (parked, poison, the age of the oldest parked): [`Watcher`]. Read apart from the consumer, so
//!   they stay true when the consumer is stuck, stopped or between rebalances, and any
//!   instance of the group reports every partition.
//! - A rebuild's progress, from `rebuild`'s meter.
//!
//! Labels are bounded: `partition` and `outcome`, never a delivery id.

use crate::batch::{self, Applied, Subscription};
use crate::kafka::{self, ConsumerSettings, Purpose, topic_partitions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages in a partition not yet applied to the read model, by `partition`.
pub const LAG: &str = "projector_lag_messages";
/// Events read, by `outcome`: applied, duplicate, parked, poison, already_consumed.
pub const EVENTS: &str = "projector_events_total";
/// Messages per applied batch.
pub const BATCH_SIZE: &str = "projector_batch_size_messages";
/// Time to apply a batch in its transaction, retries included.
pub const BATCH_DURATION: &str = "projector_batch_duration_seconds";
/// Events parked now, waiting for a missing earlier version of their delivery.
pub const PARKED: &str = "projector_parked_events";
/// Age of the oldest parked event (0 when none is parked).
pub const OLDEST_PARKED: &str = "projector_oldest_parked_age_seconds";
/// Poison messages recorded and not yet retried or skipped.
pub const POISON: &str = "projector_poison_messages";
/// A rebuild's position in the topic, its target (the live projector's position), and the
/// share of the way done (1 once switched live).
pub const REBUILD_POSITION: &str = "projector_rebuild_position_messages";
pub const REBUILD_TARGET: &str = "projector_rebuild_target_messages";
pub const REBUILD_PROGRESS: &str = "projector_rebuild_progress_ratio";

const OUTCOMES: [&str; 5] = [
    "applied",
    "duplicate",
    "parked",
    "poison",
    "already_consumed",
];
/// The longest a broker may take to answer one metadata or watermark request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the process's recorder (once) and describes the projector's metrics.
pub fn register() {
    platform::service::metrics::install();
    metrics::describe_gauge!(LAG, "Messages not yet applied, by partition");
    metrics::describe_counter!(EVENTS, "Events read, by outcome");
    metrics::describe_histogram!(BATCH_SIZE, "Messages per applied batch");
    metrics::describe_histogram!(
        BATCH_DURATION,
        metrics::Unit::Seconds,
        "Time to apply a batch, retries included"
    );
    metrics::describe_gauge!(PARKED, "Events parked behind a missing version");
    metrics::describe_gauge!(
        OLDEST_PARKED,
        metrics::Unit::Seconds,
        "Age of the oldest parked event, 0 when none is"
    );
    metrics::describe_gauge!(POISON, "Poison messages not yet retried or skipped");
    metrics::describe_gauge!(REBUILD_POSITION, "Messages a rebuild has replayed");
    metrics::describe_gauge!(REBUILD_TARGET, "The live position a rebuild is heading for");
    metrics::describe_gauge!(REBUILD_PROGRESS, "Share of a rebuild done, 1 once switched");
    for outcome in OUTCOMES {
        metrics::counter!(EVENTS, "outcome" => outcome).increment(0);
    }
}

/// One applied batch of `messages` messages, which took `took`.
pub(crate) fn batch_applied(messages: usize, took: Duration, applied: &Applied) {
    metrics::histogram!(BATCH_SIZE).record(messages as f64);
    metrics::histogram!(BATCH_DURATION).record(took);
    let counts = [
        applied.applied,
        applied.duplicates,
        applied.parked,
        applied.poison,
        applied.already_consumed,
    ];
    for (outcome, count) in OUTCOMES.into_iter().zip(counts) {
        metrics::counter!(EVENTS, "outcome" => outcome).increment(count as u64);
    }
}

/// A rebuild at `position` of `target` messages; `switched` once its tables are live.
pub(crate) fn rebuild_at(position: u64, target: u64, switched: bool) {
    let target = target.max(position);
    let progress = match (switched, target) {
        (true, _) | (false, 0) => 1.0,
        (false, target) => position as f64 / target as f64,
    };
    metrics::gauge!(REBUILD_POSITION).set(position as f64);
    metrics::gauge!(REBUILD_TARGET).set(target as f64);
    metrics::gauge!(REBUILD_PROGRESS).set(progress);
}

/// Reads the lag and the stuck events on a timer (see the module documentation).
pub struct Watcher {
    pool: PgPool,
    consumer: Arc<BaseConsumer>,
    subscription: Subscription,
    every: Duration,
}

impl Watcher {
    /// A watcher of `subscription` on `brokers`, reading every `every`. Fails only if the
    /// Kafka client cannot be created.
    pub fn new(
        pool: PgPool,
        brokers: &str,
        settings: &ConsumerSettings,
        subscription: Subscription,
        every: Duration,
    ) -> Result<Self, KafkaError> {
        register();
        let consumer = kafka::consumer_config(brokers, Purpose::Monitor, settings).create()?;
        Ok(Self {
            pool,
            consumer: Arc::new(consumer),
            subscription,
            every,
        })
    }

    /// Reads until `shutdown`. A failed read (broker or database down) leaves the last values
    /// and is logged at debug: the consumer's own log says what is down.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = read_lag(&self.pool, &self.consumer, &self.subscription).await {
                tracing::debug!(%error, "reading the projector's lag failed");
            }
            if let Err(error) = read_stuck(&self.pool).await {
                tracing::debug!(%error, "reading the stuck events failed");
            }
        }
    }
}

/// Each partition's high watermark (from the broker) minus its stored next offset (from the
/// read database); a partition never applied counts from its low watermark.
async fn read_lag(
    pool: &PgPool,
    consumer: &Arc<BaseConsumer>,
    subscription: &Subscription,
) -> anyhow::Result<()> {
    // Watermarks first: an offset stored after them can only make the lag look smaller than
    // it was, never report messages that do not exist.
    let asked = (consumer.clone(), subscription.topic.clone());
    let watermarks = tokio::task::spawn_blocking(move || {
        let (consumer, topic) = asked;
        let partitions = topic_partitions(consumer.as_ref(), &topic, BROKER_TIMEOUT)?;
        (partitions.into_iter())
            .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, BROKER_TIMEOUT)?)))
            .collect::<Result<BTreeMap<i32, (i64, i64)>, KafkaError>>()
    })
    .await??;
    let partitions: Vec<i32> = watermarks.keys().copied().collect();
    let mut conn = pool.acquire().await?;
    let stored = batch::stored_offsets(&mut conn, subscription, &partitions).await?;
    for (partition, (low, high)) in watermarks {
        let next = stored.get(&partition).copied().unwrap_or(low);
        let lag = (high - next).max(0);
        metrics::gauge!(LAG, "partition" => partition.to_string()).set(lag as f64);
    }
    Ok(())
}

async fn read_stuck(pool: &PgPool) -> Result<(), sqlx::Error> {
    let stuck = sqlx::query!(
        r#"select (select count(*) from parked_events) as "parked!",
                  (select coalesce(extract(epoch from now() - min(parked_at)), 0)::float8
                   from parked_events) as "oldest!",
                  (select count(*) from poison_messages) as "poison!""#
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!(PARKED).set(stuck.parked as f64);
    metrics::gauge!(OLDEST_PARKED).set(stuck.oldest.max(0.0));
    metrics::gauge!(POISON).set(stuck.poison as f64);
    Ok(())
}
