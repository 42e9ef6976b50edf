//! The Kafka side of the projector: a consumer group member that reads batches, applies each
//! in one read-database transaction with its offsets, and only then commits to the broker.

use crate::batch::{self, Applied, Destination, Subscription};
use crate::catalog::Catalog;
use crate::failure::apply_with_retry;
use crate::kafka::{self, ConsumerSettings, Purpose};
use crate::monitor;
use crate::offsets::{self, OffsetsAhead};
use crate::plan::Incoming;
use futures::StreamExt;
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

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub brokers: String,
    /// librdkafka settings over ours (TLS, SASL, tuning).
    pub consumer_settings: ConsumerSettings,
    pub topic: String,
    pub group: String,
    /// Most messages applied in one transaction.
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    OffsetsAhead(#[from] OffsetsAhead),
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

    let mut batches = consumer.stream().ready_chunks(config.batch_size);
    loop {
        let refused = consumer.context().stop.clone();
        let chunk = tokio::select! {
            () = shutdown.cancelled() => break,
            () = refused.cancelled() => {
                let refusal = consumer.context().refused.lock().ok().and_then(|mut r| r.take());
                if let Some(refusal) = refusal {
                    return Err(refusal.into());
                }
                break;
            }
            chunk = batches.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let mut messages = Vec::with_capacity(chunk.len());
        for result in chunk {
            match result {
                Ok(message) => messages.push(incoming(&message)),
                Err(error) => tracing::warn!(%error, "consumer error"),
            }
        }
        if messages.is_empty() {
            continue;
        }
        let started = Instant::now();
        let Some(applied) =
            apply_with_retry(&pool, &destination, &subscription, &messages, &shutdown).await
        else {
            break;
        };
        monitor::batch_applied(messages.len(), started.elapsed(), &applied);
        progress.add(&applied);
        tracing::debug!(?applied, "batch applied");
        commit_to_broker(&consumer, &config.topic, &messages);
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
fn commit_to_broker(consumer: &StreamConsumer<StoredOffsets>, topic: &str, messages: &[Incoming]) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for message in messages {
        let entry = next.entry(message.partition).or_default();
        *entry = (*entry).max(message.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in next {
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
