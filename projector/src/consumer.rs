//! The Kafka side of the projector: a consumer group member that reads batches, applies each
//! in one read-database transaction with its offsets, and only then commits to the broker.

use crate::batch::{self, Applied, Destination, Subscription};
use crate::catalog::Catalog;
use crate::failure::apply_with_retry;
use crate::kafka::{self, ConsumerSettings, Purpose};
use crate::lanes::{self, Lanes};
use crate::monitor;
use crate::offsets::{self, OffsetsAhead};
use crate::plan::Incoming;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub brokers: String,
    /// librdkafka settings over ours (TLS, SASL, tuning).
    pub consumer_settings: ConsumerSettings,
    pub topic: String,
    pub group: String,
    /// Most messages applied in one transaction.
    pub batch_size: usize,
    /// Batch transactions running at once, each on partitions of its own (`lanes`).
    pub lanes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    OffsetsAhead(#[from] OffsetsAhead),
    /// A batch's task died: its messages are not applied while later ones of its partitions
    /// could be, so the projector stops rather than leave a hole behind its offsets.
    #[error("a projector lane failed: {0}")]
    Lane(String),
}

/// Running totals, readable while the projector runs (benchmarks, logs).
#[derive(Debug, Default)]
pub struct Progress {
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub already_consumed: AtomicU64,
    pub parked: AtomicU64,
    pub poison: AtomicU64,
    pub batches: AtomicU64,
}

impl Progress {
    fn add(&self, applied: &Applied) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.applied, applied.applied);
        add(&self.duplicates, applied.duplicates);
        add(&self.already_consumed, applied.already_consumed);
        add(&self.parked, applied.parked);
        add(&self.poison, applied.poison);
        add(&self.batches, 1);
    }
}

/// Positions newly assigned partitions at the offsets stored in the read database, so the
/// consumer resumes where the read model is, not where the broker's group offset says.
struct StoredOffsets {
    database: PgConnectOptions,
    subscription: Subscription,
    /// Set when an assignment found stored offsets past a partition's end; `stop` fires then.
    refused: std::sync::Mutex<Option<OffsetsAhead>>,
    stop: CancellationToken,
}

impl ClientContext for StoredOffsets {}

impl ConsumerContext for StoredOffsets {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        assignment: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.position(assignment);
                let partitions: Vec<i32> = stored.keys().copied().collect();
                let high =
                    offsets::high_watermarks(consumer, &self.subscription.topic, &partitions);
                let ahead = offsets::ahead(&stored, &high);
                if !ahead.is_empty() {
                    let refusal = OffsetsAhead {
                        group: self.subscription.group.clone(),
                        topic: self.subscription.topic.clone(),
                        partitions: ahead,
                    };
                    tracing::error!(%refusal, "not consuming");
                    if let Ok(mut slot) = self.refused.lock() {
                        *slot = Some(refusal);
                    }
                    self.stop.cancel();
                    let _ = consumer.unassign();
                    return;
                }
                tracing::info!(partitions = ?assigned_partitions(assignment), "partitions assigned");
                if let Err(error) = consumer.assign(assignment) {
                    tracing::error!(%error, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?assigned_partitions(assignment), "partitions revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

impl StoredOffsets {
    /// Sets each assigned partition's start to its stored offset, or to the beginning for a
    /// partition never read. The broker's group offsets are never trusted: they are committed
    /// after the database, which may lose its last commits in a crash (the projector commits
    /// asynchronously), so they can be ahead of what the read model holds. librdkafka calls
    /// this from its poll, which cannot await: the lookup runs on a thread of its own with its
    /// own connection. If it fails, the partitions start from the beginning: slow, never wrong,
    /// since the batch transaction skips whatever was already applied.
    fn position(&self, assignment: &mut TopicPartitionList) -> BTreeMap<i32, i64> {
        let partitions: Vec<i32> = assigned_partitions(assignment);
        let database = self.database.clone();
        let subscription = self.subscription.clone();
        let lookup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let lookup = async {
                    let mut conn = database.connect().await?;
                    batch::stored_offsets(&mut conn, &subscription, &partitions).await
                };
                tokio::time::timeout(Duration::from_secs(10), lookup)
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
                    .map_err(std::io::Error::other)
            })
        });
        let stored = match lookup.join() {
            Ok(Ok(stored)) => stored,
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading stored offsets failed; starting from the beginning");
                BTreeMap::new()
            }
            Err(_) => BTreeMap::new(),
        };
        let topic = self.subscription.topic.clone();
        for partition in assigned_partitions(assignment) {
            let start = stored
                .get(&partition)
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(error) = assignment.set_partition_offset(&topic, partition, start) {
                tracing::warn!(%error, partition, "cannot position partition");
            }
        }
        stored
    }
}

fn assigned_partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Consumes until `shutdown`. A batch that fails on the database is retried with backoff and
/// its offsets are not committed; on shutdown, only the read is abandoned, never a write.
pub async fn run(
    pool: PgPool,
    config: ProjectorConfig,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    run_with(Catalog::BUILT_IN, pool, config, progress, shutdown).await
}

/// `run`, writing the projections of `catalog` (those the `projections` table lists).
pub async fn run_with(
    catalog: Catalog,
    pool: PgPool,
    config: ProjectorConfig,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    monitor::register();
    let destination = Destination::Live(catalog);
    let subscription = Subscription {
        group: config.group.clone(),
        topic: config.topic.clone(),
    };
    let context = StoredOffsets {
        database: (*pool.connect_options()).clone(),
        subscription: subscription.clone(),
        refused: std::sync::Mutex::new(None),
        stop: CancellationToken::new(),
    };
    let consumer: StreamConsumer<StoredOffsets> = kafka::consumer_config(
        &config.brokers,
        Purpose::Live {
            group: &config.group,
        },
        &config.consumer_settings,
    )
    .create_with_context(context)?;
    offsets::check_at_start(&consumer, &pool, &subscription, &shutdown).await?;
    consumer.subscribe(&[&config.topic])?;
    tracing::info!(topic = %config.topic, group = %config.group, "projector consuming");

    let mut stream = consumer.stream();
    let mut lanes = Lanes::new(config.lanes, config.batch_size);
    let mut running = FuturesUnordered::new();
    let lane = Lane {
        pool,
        destination,
        subscription,
        shutdown: shutdown.clone(),
    };
    let refused = consumer.context().stop.clone();
    let outcome = loop {
        for batch in lanes.launch() {
            running.push(AbortOnDropHandle::new(tokio::spawn(
                lane.clone().apply(batch),
            )));
        }
        let woke = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = refused.cancelled() => {
                let refusal = consumer.context().refused.lock().ok().and_then(|mut r| r.take());
                match refusal {
                    Some(refusal) => break Err(refusal.into()),
                    None => break Ok(()),
                }
            }
            Some(done) = running.next(), if lanes.running() > 0 => Woke::Ended(done),
            message = stream.next(), if lanes.wants_more() => {
                Woke::Read(message.map(|read| read.map(|m| incoming(&m))))
            }
        };
        match woke {
            Woke::Ended(done) => {
                if let Err(error) = ended(&mut lanes, &consumer, &config.topic, &progress, done) {
                    break Err(error);
                }
            }
            Woke::Read(None) => break Ok(()),
            Woke::Read(Some(message)) => read(&mut lanes, message),
        }
        // Whatever else is ready, without waiting: a fetch's worth of messages at once.
        while lanes.wants_more() {
            match stream.next().now_or_never() {
                Some(Some(message)) => read(&mut lanes, message.map(|m| incoming(&m))),
                _ => break,
            }
        }
    };
    // The batches being written still commit (or give up on shutdown between retries); only
    // what was read and not started is abandoned, to be read again from the stored offsets.
    drop(stream);
    while let Some(done) = running.next().await {
        ended(&mut lanes, &consumer, &config.topic, &progress, done)?;
    }
    outcome
}

enum Woke {
    Ended(Result<Ended, tokio::task::JoinError>),
    Read(Option<Result<Incoming, KafkaError>>),
}

fn read(lanes: &mut Lanes, message: Result<Incoming, KafkaError>) {
    match message {
        Ok(message) => lanes.take(message),
        Err(error) => tracing::warn!(%error, "consumer error"),
    }
}

/// What one lane needs to apply a batch.
#[derive(Clone)]
struct Lane {
    pool: PgPool,
    destination: Destination,
    subscription: Subscription,
    shutdown: CancellationToken,
}

/// A batch that ended: where its partitions go on from, and what it applied (`None`: shut
/// down before it committed).
struct Ended {
    next: BTreeMap<i32, i64>,
    messages: usize,
    took: Duration,
    applied: Option<Applied>,
}

impl Lane {
    async fn apply(self, batch: Vec<Incoming>) -> Ended {
        let started = Instant::now();
        let applied = apply_with_retry(
            &self.pool,
            &self.destination,
            &self.subscription,
            &batch,
            &self.shutdown,
        )
        .await;
        Ended {
            next: lanes::next_offsets(&batch),
            messages: batch.len(),
            took: started.elapsed(),
            applied,
        }
    }
}

/// Frees an ended batch's partitions and, once it committed, counts it and tells the broker.
fn ended(
    lanes: &mut Lanes,
    consumer: &StreamConsumer<StoredOffsets>,
    topic: &str,
    progress: &Progress,
    done: Result<Ended, tokio::task::JoinError>,
) -> Result<(), ProjectorError> {
    let done = done.map_err(|error| ProjectorError::Lane(error.to_string()))?;
    lanes.finished(done.next.keys().copied());
    if let Some(applied) = done.applied {
        monitor::batch_applied(done.messages, done.took, &applied);
        progress.add(&applied);
        tracing::debug!(?applied, "batch applied");
        commit_to_broker(consumer, topic, &done.next);
    }
    Ok(())
}

/// A message as the projection reads it, copied out of librdkafka's buffer.
pub(crate) fn incoming(message: &impl Message) -> Incoming {
    Incoming {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

/// Tells the broker how far the group got, after the read database committed it. Only a
/// courtesy for lag monitoring: the stored offsets decide where a partition starts.
fn commit_to_broker(
    consumer: &StreamConsumer<StoredOffsets>,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) {
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in next {
        if list
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .is_err()
        {
            return;
        }
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(%error, "broker offset commit failed (the stored offsets still hold)");
    }
}
