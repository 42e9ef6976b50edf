//! `projector rebuild`: builds projections anew from the first event of the topic, in a schema
//! of their own beside the live tables, while the live projector keeps the live ones current.
//!
//! The replay never passes the live projector's stored position: a message at or beyond it is
//! held (and its partition not read further) until the live projector has applied it too.
//! Once the replay is at the live position, the switch takes the live projector's partition locks
//! (pausing it between two batches), applies what is left up to the position it now holds
//! still, and in that one transaction moves the new tables into `public` in place of the old.
//! The query API sees the old tables or the new, never a mix. Both are exact at the same
//! offsets, so the live projector goes on from its stored offsets without missing or
//! repeating an event.
//!
//! Each batch commits with the replay's offsets in its schema, so an interrupted rebuild goes
//! on where it stopped. A session lock per projection refuses a second rebuild of the same one.

mod meter;
mod replay;
mod staging;
mod switch;

pub use replay::{Truncated, truncated};

use crate::batch::{Destination, Subscription};
use crate::catalog::{Catalog, Projection};
use crate::kafka::{self, ConsumerSettings, Purpose};
use futures::StreamExt;
use meter::Meter;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use replay::{Reader, Replay, describe_truncation, position_of};
use sqlx::PgPool;
use staging::{
    build_indexes, indexes_built, live_offsets, lock_projections, prepare_staging,
    release_projections, staged_offsets,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switch::{Switch, Switched};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub brokers: String,
    /// librdkafka settings over ours (TLS, SASL, tuning).
    pub consumer_settings: ConsumerSettings,
    pub topic: String,
    /// The live projector's consumer group: its stored offsets are the position to reach.
    pub live_group: String,
    /// The projections to rebuild (at least one).
    pub projections: Vec<&'static dyn Projection>,
    /// Keep the replaced tables in a `retired_...` schema instead of dropping them.
    pub keep_old: bool,
    /// Discard an interrupted rebuild of the same projections instead of resuming it.
    pub from_scratch: bool,
    /// Most messages applied in one transaction.
    pub batch_size: usize,
    /// Transactions applied at once, each with partitions of its own; up to two batches per
    /// lane are read ahead.
    pub lanes: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress_bar: bool,
    /// Longest the live projector is held for the last stretch before the switch; past it the
    /// switch is given up, the live projector released, and tried again later.
    pub switch_timeout: Duration,
    /// Rebuild even when the topic's first events are gone (retention deleted them): the
    /// rebuilt tables then lack them. Refused otherwise.
    pub allow_truncated_history: bool,
}

impl RebuildConfig {
    /// The live projector's offsets, the position the rebuild catches up to.
    fn live_subscription(&self) -> Subscription {
        Subscription {
            group: self.live_group.clone(),
            topic: self.topic.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of projection `{0}` is already running")]
    AlreadyRunning(&'static str),
    #[error(
        "schema {schema} holds a rebuild of topic {topic}; rerun with --from-scratch to discard it"
    )]
    ForeignStaging { schema: String, topic: String },
    #[error("topic {0} has no partitions (does it exist?)")]
    NoPartitions(String),
    #[error(
        "partition {partition}: the rebuild has applied up to offset {rebuilt} but the live \
         projector only up to {live}; the live offsets went back, so no exact switch is possible"
    )]
    AheadOfLive {
        partition: i32,
        rebuilt: i64,
        live: i64,
    },
    #[error(
        "topic {topic} no longer holds its first events ({}): a rebuild would swap in tables \
         without them. Rerun with --allow-truncated-history to accept that loss",
        describe_truncation(.partitions)
    )]
    TruncatedHistory {
        topic: String,
        partitions: Vec<Truncated>,
    },
    #[error(
        "topic {topic} went from {before} to {now} partitions during the rebuild; nothing was \
         switched. Run the rebuild again: it resumes and reads the new partitions too"
    )]
    PartitionsChanged {
        topic: String,
        before: usize,
        now: usize,
    },
    #[error("a transaction of the replay failed: {0}")]
    Lane(String),
    #[error("read database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// What a rebuild run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub projections: Vec<&'static str>,
    /// The schema the projections were built in.
    pub schema: String,
    /// Messages an interrupted run had already applied when this one resumed.
    pub resumed_at: u64,
    /// Messages this run applied.
    pub applied: u64,
    /// Transactions they were applied in.
    pub batches: u64,
    pub elapsed: Duration,
    /// False when interrupted before the switch: run again to resume.
    pub switched: bool,
    /// Where the replaced tables were kept (`--keep-old`).
    pub kept_in: Option<String>,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "rebuild of {}: {} events applied in {secs:.2}s ({:.0} events/s, {} transactions)",
            self.projections.join(", "),
            self.applied,
            self.applied as f64 / secs.max(1e-9),
            self.batches
        )?;
        if self.resumed_at > 0 {
            write!(f, ", resumed after {} events", self.resumed_at)?;
        }
        match (self.switched, &self.kept_in) {
            (false, _) => write!(
                f,
                "; interrupted, {} kept: run again to resume",
                self.schema
            ),
            (true, Some(kept)) => write!(f, "; switched live, old tables kept in {kept}"),
            (true, None) => write!(f, "; switched live, old tables dropped"),
        }
    }
}

/// Per partition, the next offset to read.
type Offsets = BTreeMap<i32, i64>;

/// Rebuilds `config.projections` and switches them live, or stops early (resumably) when
/// `shutdown` fires.
pub async fn rebuild(
    pool: &PgPool,
    config: &RebuildConfig,
    shutdown: &CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    rebuild_with(Catalog::BUILT_IN, pool, config, shutdown).await
}

/// `rebuild` of projections of `catalog`, which names the projections every batch writes
/// (a working copy of them is built beside the chosen ones).
pub async fn rebuild_with(
    catalog: Catalog,
    pool: &PgPool,
    config: &RebuildConfig,
    shutdown: &CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let mut chosen = config.projections.clone();
    chosen.sort_unstable_by_key(|p| p.name());
    chosen.dedup_by_key(|p| p.name());
    let names: Vec<&'static str> = chosen.iter().map(|p| p.name()).collect();
    // What the replay writes: the chosen projections and those always written.
    let staged = catalog.with_always_written(&chosen);
    // Held until the rebuild ends; our death would release the locks too.
    let lock = lock_projections(pool, &names).await?;
    let outcome = rebuild_locked(pool, config, shutdown, started, chosen, names, staged).await;
    release_projections(lock).await?;
    outcome
}

/// The rebuild itself, once the projections' locks are held.
async fn rebuild_locked(
    pool: &PgPool,
    config: &RebuildConfig,
    shutdown: &CancellationToken,
    started: Instant,
    chosen: Vec<&'static dyn Projection>,
    names: Vec<&'static str>,
    staged: Vec<&'static dyn Projection>,
) -> Result<RebuildReport, RebuildError> {
    let schema = format!("rebuild_{}", names.join("_"));
    if config.from_scratch {
        // Dynamic: the staging schema, named at run time.
        sqlx::raw_sql(&format!("drop schema if exists {schema} cascade"))
            .execute(pool)
            .await?;
    }
    prepare_staging(pool, &schema, &staged, &names, &config.topic).await?;

    let consumer = Arc::new(replay_consumer(config)?);
    let partitions = replay_partitions(&consumer, &config.topic)?;
    // A queue per partition: the replay reads only the partitions it has room for, so one
    // partition's burst (a fetch often holds thousands of one partition's messages) never
    // stops the others, and an unread queue stops its own fetching once full.
    let queues: Vec<(i32, StreamPartitionQueue<DefaultConsumerContext>)> = partitions
        .iter()
        .filter_map(|&p| Some((p, consumer.split_partition_queue(&config.topic, p)?)))
        .collect();
    if queues.len() != partitions.len() {
        return Err(RebuildError::NoPartitions(config.topic.clone()));
    }
    // The main queue still serves librdkafka's events (errors, statistics).
    let events = {
        let consumer = consumer.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::warn!(%error, "consumer error");
                }
            }
        }))
    };
    let mut replay = Replay::new(
        pool.clone(),
        Destination::Staging {
            schema: schema.clone(),
            projections: staged,
        },
        Subscription {
            group: format!("rebuild/{schema}"),
            topic: config.topic.clone(),
        },
        staged_offsets(pool, &schema, &config.topic).await?,
        config.lanes,
        config.batch_size,
    );
    let mut start = TopicPartitionList::new();
    let mut first = Offsets::new();
    for &partition in &partitions {
        let at = replay
            .staged
            .get(&partition)
            .map_or(Offset::Beginning, |next| Offset::Offset(*next));
        start.add_partition_offset(&config.topic, partition, at)?;
        let (low, _) = consumer.fetch_watermarks(&config.topic, partition, WATERMARKS)?;
        first.insert(partition, low);
    }
    let lost = truncated(&first, &replay.staged);
    if !lost.is_empty() {
        if !config.allow_truncated_history {
            return Err(RebuildError::TruncatedHistory {
                topic: config.topic.clone(),
                partitions: lost,
            });
        }
        tracing::warn!(
            "rebuilding without the topic's first events, as allowed: {}",
            describe_truncation(&lost)
        );
    }
    consumer.assign(&start)?;
    let resumed_at = replay.position(&first);
    let mut meter = Meter::new(config.progress_bar, &names, resumed_at);
    tracing::info!(%schema, resumed_at, "rebuilding {}", names.join(", "));

    let mut readers: Vec<Reader<'_>> = queues
        .iter()
        .map(|(partition, queue)| Reader {
            partition: *partition,
            stream: queue.stream(),
        })
        .collect();
    let mut kept_in = None;
    let mut indexed = indexes_built(pool, &schema).await?.len() == names.len();
    let mut live = live_offsets(pool, config, &partitions).await?;
    let mut live_read_at = Instant::now();
    let outcome = loop {
        if shutdown.is_cancelled() {
            break Ok(false);
        }
        // The live position only moves forward, so a slightly old one is a safe limit.
        if live_read_at.elapsed() >= LIVE_REFRESH {
            live = live_offsets(pool, config, &partitions).await?;
            live_read_at = Instant::now();
        }
        if let Err(error) = replay.check_not_ahead(&live) {
            break Err(error);
        }
        meter.show(replay.position(&first), position_of(&live, &first));
        if replay.gap(&live) <= config.batch_size as i64 && !indexed {
            if let Err(error) = replay.finish_running().await {
                break Err(error);
            }
            let built = indexes_built(pool, &schema).await?;
            build_indexes(pool, &schema, &chosen, &built).await?;
            indexed = true;
            continue;
        }
        if replay.gap(&live) <= config.batch_size as i64 {
            let switch = Switch {
                config,
                consumer: &consumer,
                partitions: &partitions,
                chosen: &chosen,
                names: &names,
                schema: &schema,
            };
            match switch.run(&mut readers, &mut replay, shutdown).await {
                Ok(Switched::Done(kept)) => {
                    kept_in = kept;
                    break Ok(true);
                }
                Ok(Switched::Interrupted) => break Ok(false),
                Ok(Switched::NotYet) => {}
                Err(error) => break Err(error),
            }
            live = live_offsets(pool, config, &partitions).await?;
            live_read_at = Instant::now();
        }
        if let Err(error) = replay.step(&mut readers, &live, POLL, shutdown).await {
            break Err(error);
        }
    };
    // Transactions still running commit or roll back whole; let them end before we report.
    let finished = replay.finish_running().await;
    // The consumer goes last, once nothing else holds it, and on a thread of its own.
    drop(readers);
    drop(queues);
    events.abort();
    let _aborted = events.await;
    kafka::drop_detached(consumer);
    let switched = outcome?;
    finished?;
    meter.finish(switched);
    let report = RebuildReport {
        projections: names,
        schema,
        resumed_at,
        applied: replay.applied,
        batches: replay.batches,
        elapsed: started.elapsed(),
        switched,
        kept_in,
    };
    tracing::info!("{report}");
    Ok(report)
}

/// How long a metadata or watermark request to the broker may take.
const WATERMARKS: Duration = Duration::from_secs(10);
/// How long one step waits for messages before looking at the live position again.
const POLL: Duration = Duration::from_millis(200);
/// How often the replay reads the live projector's position.
const LIVE_REFRESH: Duration = Duration::from_millis(100);

/// A consumer of assigned partitions: it joins no group and commits nothing; its position
/// lives in the staging schema.
fn replay_consumer(config: &RebuildConfig) -> Result<StreamConsumer, KafkaError> {
    kafka::consumer_config(&config.brokers, Purpose::Replay, &config.consumer_settings).create()
}

/// The topic's partitions; none is an error (the topic does not exist).
fn replay_partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, RebuildError> {
    let partitions = kafka::topic_partitions(consumer, topic, WATERMARKS)?;
    if partitions.is_empty() {
        return Err(RebuildError::NoPartitions(topic.to_owned()));
    }
    Ok(partitions)
}
