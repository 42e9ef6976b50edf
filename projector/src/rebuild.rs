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

use crate::catalog::{self, Projection, Writes};
use crate::consumer::incoming;
use crate::failure::apply_with_retry;
use crate::projection::Incoming;
use crate::store::{self, Applied, Subscription, Target};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use platform::read_model::READER_ROLE;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, MessageStream, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{Acquire, Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub brokers: String,
    pub topic: String,
    /// The live projector's consumer group: its stored offsets are the position to reach.
    pub live_group: String,
    /// The projections to rebuild (at least one).
    pub projections: Vec<&'static Projection>,
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

/// A partition whose events before `first_offset` are gone while the replay needs them from
/// `needed_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub partition: i32,
    pub first_offset: i64,
    pub needed_from: i64,
}

fn describe_truncation(partitions: &[Truncated]) -> String {
    partitions
        .iter()
        .map(|t| {
            format!(
                "partition {} starts at offset {}, the replay needs it from {}",
                t.partition, t.first_offset, t.needed_from
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The partitions whose first offset (`first`, the low watermarks) is past where the replay
/// must read from: offset 0 for a fresh rebuild, its staged offset for a resumed one.
pub fn truncated(first: &Offsets, staged: &Offsets) -> Vec<Truncated> {
    first
        .iter()
        .filter_map(|(&partition, &first_offset)| {
            let needed_from = staged.get(&partition).copied().unwrap_or(0);
            (first_offset > needed_from).then_some(Truncated {
                partition,
                first_offset,
                needed_from,
            })
        })
        .collect()
}

/// Rebuilds `config.projections` and switches them live, or stops early (resumably) when
/// `shutdown` fires.
pub async fn rebuild(
    pool: &PgPool,
    config: &RebuildConfig,
    shutdown: &CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let mut names: Vec<&'static str> = config.projections.iter().map(|p| p.name).collect();
    names.sort_unstable();
    names.dedup();
    // Held until this function returns; closing it releases the locks, as would our death.
    let lock = lock_projections(pool, &names).await?;
    let schema = format!("rebuild_{}", names.join("_"));
    if config.from_scratch {
        sqlx::raw_sql(&format!("drop schema if exists {schema} cascade"))
            .execute(pool)
            .await?;
    }
    prepare_staging(pool, &schema, &names, &config.topic).await?;

    let consumer = Arc::new(replay_consumer(config)?);
    let partitions = partitions_of(&consumer, &config.topic)?;
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
    let mut replay = Replay {
        pool: pool.clone(),
        target: Target::Staging {
            schema: schema.clone(),
            writes: Writes::of(names.iter().copied()),
        },
        subscription: Subscription {
            group: format!("rebuild/{schema}"),
            topic: config.topic.clone(),
        },
        staged: staged_offsets(pool, &schema, &config.topic).await?,
        pending: BTreeMap::new(),
        running: FuturesUnordered::new(),
        busy: BTreeSet::new(),
        lanes: config.lanes.max(1),
        batch_size: config.batch_size.max(1),
        applied: 0,
        batches: 0,
    };
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
            build_indexes(pool, &schema, &names, &built).await?;
            indexed = true;
            continue;
        }
        if replay.gap(&live) <= config.batch_size as i64 {
            let switch = Switch {
                config,
                consumer: &consumer,
                partitions: &partitions,
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
    let switched = outcome?;
    finished?;
    meter.finish();
    drop(readers);
    drop(events);
    lock.close().await?;
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

const WATERMARKS: Duration = Duration::from_secs(10);
/// How long one step waits for messages before looking at the live position again.
const POLL: Duration = Duration::from_millis(200);
/// How often the replay reads the live projector's position.
const LIVE_REFRESH: Duration = Duration::from_millis(100);

/// One partition's queue of the replay consumer.
struct Reader<'a> {
    partition: i32,
    stream: MessageStream<'a, DefaultConsumerContext>,
}

/// A transaction of the replay.
type Lane = AbortOnDropHandle<LaneDone>;

/// What an ended transaction covered, and what it applied (`None`: shut down first).
struct LaneDone {
    /// Per partition, the offset after its last message.
    next: Offsets,
    messages: usize,
    applied: Option<Applied>,
}

/// The replay's state between steps.
struct Replay {
    pool: PgPool,
    target: Target,
    subscription: Subscription,
    /// Next offset per partition, as committed in the staging schema.
    staged: Offsets,
    /// Messages read and not yet applied, per partition in offset order. Those at or past the
    /// live position wait here until the live projector has applied them too; their partition
    /// is not read meanwhile, so this holds at most a fetch's worth of them.
    pending: BTreeMap<i32, VecDeque<Incoming>>,
    /// Transactions in flight, at most `lanes`.
    running: FuturesUnordered<Lane>,
    /// Partitions with a transaction in flight: a partition's batches apply one after the
    /// other, in offset order.
    busy: BTreeSet<i32>,
    lanes: usize,
    batch_size: usize,
    applied: u64,
    batches: u64,
}

/// What a step woke up for.
enum Woke {
    Finished(Result<LaneDone, tokio::task::JoinError>),
    Arrived(Incoming),
    ConsumerError(KafkaError),
    Nothing,
}

impl Replay {
    /// Messages the live projector has applied and the replay has not.
    fn gap(&self, live: &Offsets) -> i64 {
        live.iter()
            .map(|(p, next)| (next - self.staged.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    /// Messages replayed so far, counted from each partition's first offset.
    fn position(&self, first: &Offsets) -> u64 {
        position_of(&self.staged, first)
    }

    fn check_not_ahead(&self, live: &Offsets) -> Result<(), RebuildError> {
        for (&partition, &rebuilt) in &self.staged {
            let live = live.get(&partition).copied().unwrap_or(0);
            if rebuilt > live {
                return Err(RebuildError::AheadOfLive {
                    partition,
                    rebuilt,
                    live,
                });
            }
        }
        Ok(())
    }

    /// Whether to read more of `partition`: not while a message of it waits for the live
    /// projector, nor once two batches of it are waiting.
    fn wants(&self, partition: i32, limit: &Offsets) -> bool {
        let below = limit.get(&partition).copied().unwrap_or(0);
        self.pending.get(&partition).is_none_or(|pending| {
            pending.len() < 2 * self.batch_size && pending.back().is_none_or(|m| m.offset < below)
        })
    }

    /// Messages waiting below the live position, ready to apply.
    fn ready(&self, limit: &Offsets) -> usize {
        self.pending
            .iter()
            .map(|(&partition, pending)| ready_in(partition, pending, limit))
            .sum()
    }

    /// Starts transactions while lanes are free and messages below `limit` wait, each with
    /// partitions no running transaction has, the fullest first.
    fn launch(&mut self, limit: &Offsets, shutdown: &CancellationToken) {
        while self.running.len() < self.lanes {
            let mut candidates: Vec<(usize, i32)> = self
                .pending
                .iter()
                .filter(|(partition, _)| !self.busy.contains(partition))
                .map(|(&partition, pending)| (ready_in(partition, pending, limit), partition))
                .filter(|(ready, _)| *ready > 0)
                .collect();
            if candidates.is_empty() {
                return;
            }
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let mut batch = Vec::with_capacity(self.batch_size);
            for (ready, partition) in candidates {
                if batch.len() >= self.batch_size {
                    break;
                }
                let take = ready.min(self.batch_size - batch.len());
                if let Some(pending) = self.pending.get_mut(&partition) {
                    batch.extend(pending.drain(..take));
                }
                self.busy.insert(partition);
            }
            let (pool, target, subscription, shutdown) = (
                self.pool.clone(),
                self.target.clone(),
                self.subscription.clone(),
                shutdown.clone(),
            );
            self.running
                .push(AbortOnDropHandle::new(tokio::spawn(async move {
                    let applied =
                        apply_with_retry(&pool, &target, &subscription, &batch, &shutdown).await;
                    let mut next = Offsets::new();
                    for message in &batch {
                        next.insert(message.partition, message.offset + 1);
                    }
                    LaneDone {
                        next,
                        messages: batch.len(),
                        applied,
                    }
                })));
        }
    }

    /// Starts what can start, waits up to `wait` for a transaction to end or a message to
    /// arrive, then takes in everything else that is ready without waiting.
    async fn step(
        &mut self,
        readers: &mut [Reader<'_>],
        limit: &Offsets,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), RebuildError> {
        self.launch(limit, shutdown);
        let reading = self.ready(limit) < self.read_ahead();
        let wanted: Vec<bool> = readers
            .iter()
            .map(|r| reading && self.wants(r.partition, limit))
            .collect();
        let woke = {
            let arrival = std::future::poll_fn(|cx| {
                for (reader, _) in readers.iter_mut().zip(&wanted).filter(|(_, w)| **w) {
                    if let Poll::Ready(Some(message)) = reader.stream.poll_next_unpin(cx) {
                        return Poll::Ready(message.map(|m| incoming(&m)));
                    }
                }
                Poll::Pending
            });
            let finished = async {
                match self.running.next().await {
                    Some(done) => done,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => Woke::Nothing,
                done = finished => Woke::Finished(done),
                message = arrival => match message {
                    Ok(message) => Woke::Arrived(message),
                    Err(error) => Woke::ConsumerError(error),
                },
                () = tokio::time::sleep(wait) => Woke::Nothing,
            }
        };
        match woke {
            Woke::Finished(done) => self.finished(done)?,
            Woke::Arrived(message) => self.take(message),
            Woke::ConsumerError(error) => tracing::warn!(%error, "consumer error"),
            Woke::Nothing => {}
        }
        while let Some(Some(done)) = self.running.next().now_or_never() {
            self.finished(done)?;
        }
        // Always in the same order, on purpose: reading a few partitions deep gives batches of
        // one partition each, which leaves the other partitions free for the other lanes.
        // Reading them in turn spread batches over more partitions, and measured slower with
        // a higher RSS. No partition waits for ever: the first ones run dry or reach the live
        // position, and then the next are read.
        let mut ready = self.ready(limit);
        for reader in readers.iter_mut() {
            while ready < self.read_ahead() && self.wants(reader.partition, limit) {
                match reader.stream.next().now_or_never() {
                    Some(Some(Ok(message))) => {
                        ready += 1;
                        self.take(incoming(&message));
                    }
                    Some(Some(Err(error))) => tracing::warn!(%error, "consumer error"),
                    _ => break,
                }
            }
        }
        self.launch(limit, shutdown);
        Ok(())
    }

    /// Most messages ready to apply that are read ahead: two batches per lane.
    fn read_ahead(&self) -> usize {
        2 * self.batch_size * self.lanes
    }

    fn take(&mut self, message: Incoming) {
        self.pending
            .entry(message.partition)
            .or_default()
            .push_back(message);
    }

    /// Records an ended transaction. A lane that died would leave a hole behind the offsets
    /// read past it: the replay stops instead.
    fn finished(
        &mut self,
        done: Result<LaneDone, tokio::task::JoinError>,
    ) -> Result<(), RebuildError> {
        let done = done.map_err(|e| RebuildError::Lane(e.to_string()))?;
        for partition in done.next.keys() {
            self.busy.remove(partition);
        }
        let Some(applied) = done.applied else {
            return Ok(()); // shut down: read again on resumption
        };
        for (partition, next) in done.next {
            let staged = self.staged.entry(partition).or_insert(0);
            *staged = (*staged).max(next);
        }
        self.applied += (done.messages - applied.already_consumed) as u64;
        self.batches += 1;
        Ok(())
    }

    /// Waits for the transactions in flight (after a shutdown they end without retrying).
    async fn finish_running(&mut self) -> Result<(), RebuildError> {
        let mut outcome = Ok(());
        while let Some(done) = self.running.next().await {
            if let Err(error) = self.finished(done) {
                outcome = Err(error);
            }
        }
        outcome
    }
}

/// The messages at the head of `partition`'s pending queue that are below the live position.
fn ready_in(partition: i32, pending: &VecDeque<Incoming>, limit: &Offsets) -> usize {
    let below = limit.get(&partition).copied().unwrap_or(0);
    pending.iter().take_while(|m| m.offset < below).count()
}

/// The last stretch and the swap, with the live projector held between two batches.
struct Switch<'a> {
    config: &'a RebuildConfig,
    /// Asked for the partition count once more before the swap.
    consumer: &'a StreamConsumer,
    partitions: &'a [i32],
    names: &'a [&'static str],
    schema: &'a str,
}

enum Switched {
    /// Switched; the old tables kept in this schema, if asked to.
    Done(Option<String>),
    /// The live projector could not be held, or the last stretch took too long: try later.
    NotYet,
    Interrupted,
}

impl Switch<'_> {
    async fn run(
        &self,
        readers: &mut [Reader<'_>],
        replay: &mut Replay,
        shutdown: &CancellationToken,
    ) -> Result<Switched, RebuildError> {
        let live_subscription = self.config.live_subscription();
        let mut conn = replay.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Neither a long live batch nor a long query on an old table may stall us (and the
        // readers queued behind our table locks) for long: give up and try again instead.
        sqlx::query("set local lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let locked = store::lock_partitions(&mut tx, &live_subscription, self.partitions).await;
        if lock_timed_out(&locked) {
            return Ok(Switched::NotYet);
        }
        locked?;
        let live = store::stored_offsets(&mut tx, &live_subscription, self.partitions).await?;
        replay.check_not_ahead(&live)?;
        let deadline = Instant::now() + self.config.switch_timeout;
        while replay.gap(&live) > 0 {
            if shutdown.is_cancelled() {
                return Ok(Switched::Interrupted);
            }
            if Instant::now() > deadline {
                tracing::info!(
                    gap = replay.gap(&live),
                    "last stretch too slow; switching later"
                );
                return Ok(Switched::NotYet);
            }
            replay
                .step(readers, &live, Duration::from_millis(50), shutdown)
                .await?;
        }
        // Partitions added since the start were never replayed (and the live projector reads
        // them from their first event): switching now would lose their events.
        let now = partitions_of(self.consumer, &self.config.topic)?;
        if now.len() != self.partitions.len() {
            return Err(RebuildError::PartitionsChanged {
                topic: self.config.topic.clone(),
                before: self.partitions.len(),
                now: now.len(),
            });
        }
        if !self.take_tables(&mut tx, deadline).await? {
            tracing::info!("the old tables stayed busy; switching later");
            return Ok(Switched::NotYet);
        }
        let swapped = self.swap(&mut tx).await;
        if lock_timed_out(&swapped) {
            return Ok(Switched::NotYet);
        }
        let kept = swapped?;
        tx.commit().await?;
        Ok(Switched::Done(kept))
    }

    /// Locks every old table the swap replaces, all or none, without ever waiting while
    /// holding one. A reader holds one table and then asks for another (a stats query reads
    /// several); a switch that waited for the first while holding the second would deadlock
    /// with it, and the deadlock detector might pick the reader. So each try takes them with
    /// NOWAIT, and a busy table undoes the try; false when `deadline` passes first.
    async fn take_tables(
        &self,
        tx: &mut PgConnection,
        deadline: Instant,
    ) -> Result<bool, sqlx::Error> {
        let mut tables = Vec::new();
        for projection in self.names.iter().filter_map(|name| catalog::by_name(name)) {
            for table in projection.tables {
                let existing: bool = sqlx::query_scalar("select to_regclass($1) is not null")
                    .bind(format!("public.{table}"))
                    .fetch_one(&mut *tx)
                    .await?;
                if existing {
                    tables.push(format!("public.{table}"));
                }
            }
        }
        if tables.is_empty() {
            return Ok(true);
        }
        let lock = format!(
            "lock table {} in access exclusive mode nowait",
            tables.join(", ")
        );
        loop {
            sqlx::raw_sql("savepoint take_tables")
                .execute(&mut *tx)
                .await?;
            let taken = sqlx::raw_sql(&lock).execute(&mut *tx).await;
            if !lock_timed_out(&taken) {
                taken?;
                return Ok(true);
            }
            sqlx::raw_sql("rollback to savepoint take_tables")
                .execute(&mut *tx)
                .await?;
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Moves the rebuilt tables into `public` in place of the old ones (dropped, or moved to a
    /// `retired_...` schema), marks the projections live, and drops the staging schema with the
    /// working tables left in it. One transaction: readers see all of it or none.
    async fn swap(&self, tx: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        let kept = self.config.keep_old.then(|| {
            format!(
                "retired_{}_{}",
                self.names.join("_"),
                chrono::Utc::now().format("%Y%m%d_%H%M%S")
            )
        });
        if let Some(kept) = &kept {
            sqlx::raw_sql(&format!("create schema {kept}"))
                .execute(&mut *tx)
                .await?;
        }
        let reader_role: bool =
            sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
                .bind(READER_ROLE)
                .fetch_one(&mut *tx)
                .await?;
        for name in self.names {
            let Some(projection) = catalog::by_name(name) else {
                continue;
            };
            for table in projection.tables {
                let existing: bool = sqlx::query_scalar("select to_regclass($1) is not null")
                    .bind(format!("public.{table}"))
                    .fetch_one(&mut *tx)
                    .await?;
                let mut statements = Vec::new();
                if existing {
                    statements.push(match &kept {
                        Some(kept) => format!("alter table public.{table} set schema {kept}"),
                        None => format!("drop table public.{table}"),
                    });
                }
                statements.push(format!(
                    "alter table {}.{table} set schema public",
                    self.schema
                ));
                if reader_role {
                    statements.push(format!("grant select on public.{table} to {READER_ROLE}"));
                }
                sqlx::raw_sql(&statements.join(";\n"))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "insert into projections (name, rebuilt_at) values ($1, now()) \
                 on conflict (name) do update set rebuilt_at = excluded.rebuilt_at",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::raw_sql(&format!("drop schema {} cascade", self.schema))
            .execute(&mut *tx)
            .await?;
        Ok(kept)
    }
}

fn lock_timed_out<T>(result: &Result<T, sqlx::Error>) -> bool {
    matches!(result, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03"))
}

/// Takes one session lock per projection on a connection of its own, or refuses.
async fn lock_projections(
    pool: &PgPool,
    names: &[&'static str],
) -> Result<PgConnection, RebuildError> {
    let mut conn = pool.acquire().await?.detach();
    for &name in names {
        let locked: bool = sqlx::query_scalar(
            "select pg_try_advisory_lock(hashtextextended('projector rebuild/' || $1, 0))",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        if !locked {
            conn.close().await?;
            return Err(RebuildError::AlreadyRunning(name));
        }
    }
    Ok(conn)
}

/// Creates the staging schema with the chosen projections' tables, plus the `deliveries` ones
/// they are computed from and the replay's own offsets; or finds it left by an interrupted run.
async fn prepare_staging(
    pool: &PgPool,
    schema: &str,
    names: &[&'static str],
    topic: &str,
) -> Result<(), RebuildError> {
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_namespace where nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await?;
    if exists {
        let recorded: String =
            sqlx::query_scalar(&format!("select topic from {schema}.rebuild_info"))
                .fetch_one(pool)
                .await?;
        if recorded != topic {
            return Err(RebuildError::ForeignStaging {
                schema: schema.to_owned(),
                topic: recorded,
            });
        }
        tracing::info!(%schema, "resuming an interrupted rebuild");
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(&format!(
        "create schema {schema}; set local search_path = {schema}"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(catalog::DELIVERIES.ddl)
        .execute(&mut *tx)
        .await?;
    for projection in names.iter().filter_map(|name| catalog::by_name(name)) {
        if *projection != catalog::DELIVERIES {
            sqlx::raw_sql(projection.ddl).execute(&mut *tx).await?;
        }
    }
    sqlx::raw_sql(
        "create table consumer_offsets (like public.consumer_offsets including all);
         create table rebuild_info (
             topic text not null,
             projections text[] not null,
             started_at timestamptz not null default now(),
             -- the projections whose indexes (built once the replay caught up) exist
             indexed text[] not null default '{}'
         )",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("insert into rebuild_info (topic, projections) values ($1, $2)")
        .bind(topic)
        .bind(names)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The projections whose indexes the staging schema has.
async fn indexes_built(pool: &PgPool, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!("select indexed from {schema}.rebuild_info"))
        .fetch_one(pool)
        .await
}

/// Creates the chosen projections' indexes in the staging schema: a transaction per
/// projection, all at once (each index build is one backend's sort), each with the mark that
/// its indexes exist. The working copy of `deliveries` (when it is not rebuilt) is dropped at
/// the switch and needs none.
async fn build_indexes(
    pool: &PgPool,
    schema: &str,
    names: &[&'static str],
    built: &[String],
) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let builds = names
        .iter()
        .filter(|name| !built.iter().any(|b| b == *name))
        .filter_map(|name| catalog::by_name(name))
        .map(|projection| async move {
            let mut tx = pool.begin().await?;
            sqlx::raw_sql(&format!("set local search_path = {schema}"))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(projection.indexes).execute(&mut *tx).await?;
            sqlx::query("update rebuild_info set indexed = array_append(indexed, $1)")
                .bind(projection.name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        });
    futures::future::try_join_all(builds).await?;
    tracing::info!(elapsed = ?started.elapsed(), "indexes built");
    Ok(())
}

async fn staged_offsets(pool: &PgPool, schema: &str, topic: &str) -> Result<Offsets, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "select kafka_partition, next_offset from {schema}.consumer_offsets where topic = $1"
    ))
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn live_offsets(
    pool: &PgPool,
    config: &RebuildConfig,
    partitions: &[i32],
) -> Result<Offsets, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store::stored_offsets(&mut conn, &config.live_subscription(), partitions).await
}

/// A consumer of assigned partitions: it joins no group and commits nothing; its position
/// lives in the staging schema.
fn replay_consumer(config: &RebuildConfig) -> Result<StreamConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", "projector-rebuild")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "50")
        // A partition whose queue was full is fetched again this soon once it has room
        // (librdkafka's default waits 1 s: the lanes starved for a third of a replay).
        .set("fetch.queue.backoff.ms", "5")
        // Bounds prefetched messages (per partition, as each has its queue; librdkafka's
        // default is 64 MiB) and the size of a fetch: memory stays flat however long the topic.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "1048576")
        .create()
}

fn partitions_of(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, RebuildError> {
    let metadata = consumer.fetch_metadata(Some(topic), WATERMARKS)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(RebuildError::NoPartitions(topic.to_owned()));
    }
    Ok(partitions)
}

/// Messages before `next` per partition, counted from each partition's first offset.
fn position_of(next: &Offsets, first: &Offsets) -> u64 {
    first
        .iter()
        .map(|(p, low)| (next.get(p).copied().unwrap_or(*low) - low).max(0) as u64)
        .sum()
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Meter {
    bar: ProgressBar,
    started: Instant,
    first: u64,
    logged: Instant,
}

impl Meter {
    fn new(draw: bool, names: &[&str], at: u64) -> Meter {
        let target = if draw {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        let style = ProgressStyle::with_template(
            "rebuilding {msg} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(names.join(", "));
        bar.set_position(at);
        bar.reset_eta();
        Meter {
            bar,
            started: Instant::now(),
            first: at,
            logged: Instant::now(),
        }
    }

    /// `position` of `end`: the live projector's position is where the rebuild is heading.
    fn show(&mut self, position: u64, end: u64) {
        self.bar.set_length(end.max(position));
        self.bar.set_position(position);
        if self.bar.is_hidden() && self.logged.elapsed() >= Duration::from_secs(5) {
            let rate = (position - self.first.min(position)) as f64
                / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta_secs = (end.saturating_sub(position) as f64 / rate.max(1.0)).round();
            tracing::info!(
                position,
                end,
                events_per_sec = rate.round(),
                eta_secs,
                "rebuilding"
            );
            self.logged = Instant::now();
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_no_longer_starts_where_the_replay_needs_it_is_truncated() {
        let first = Offsets::from([(0, 0), (1, 2), (2, 5), (3, 7)]);
        // Partition 2 resumes at 5 (it was replayed that far), partition 3 at 6: one lost.
        let staged = Offsets::from([(2, 5), (3, 6)]);
        assert_eq!(
            truncated(&first, &staged),
            [
                Truncated {
                    partition: 1,
                    first_offset: 2,
                    needed_from: 0
                },
                Truncated {
                    partition: 3,
                    first_offset: 7,
                    needed_from: 6
                }
            ]
        );
        assert!(truncated(&Offsets::from([(0, 0)]), &Offsets::new()).is_empty());
    }
}
