//! `projector rebuild`: builds projections anew from the first event of the topic, in a schema
//! of their own beside the live tables, while the live projector keeps the live ones current.
//!
//! The replay never passes the live projector's stored position: a message at or beyond it is
//! held (and its partition paused) until the live projector has applied it too. Once the
//! replay is at the live position, the switch takes the live projector's partition locks
//! (pausing it between two batches), applies what is left up to the position it now holds
//! still, and in that one transaction moves the new tables into `public` in place of the old.
//! The query API sees the old tables or the new, never a mix. Both are exact at the same
//! offsets, so the live projector goes on from its stored offsets without missing or
//! repeating an event.
//!
//! Each batch commits with the replay's offsets in its schema, so an interrupted rebuild goes
//! on where it stopped. A session lock per projection refuses a second rebuild of the same one.

use crate::catalog::{self, Projection, Writes};
use crate::consumer::{apply_with_retry, incoming};
use crate::projection::Incoming;
use crate::store::{self, Subscription, Target};
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, MessageStream, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{Acquire, Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
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
    /// Transactions applied at once, each with partitions of its own; a step reads up to
    /// `batch_size * lanes` messages.
    pub lanes: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress_bar: bool,
    /// Longest the live projector is held for the last stretch before the switch; past it the
    /// switch is given up, the live projector released, and tried again later.
    pub switch_timeout: Duration,
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
    // A queue per partition, read in turn: a broker's fetch often holds thousands of one
    // partition's messages, and the lanes need several partitions in a step to work at once.
    let queues: Vec<StreamPartitionQueue<DefaultConsumerContext>> = partitions
        .iter()
        .filter_map(|&p| consumer.split_partition_queue(&config.topic, p))
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
        held: BTreeMap::new(),
        paused: BTreeSet::new(),
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
    consumer.assign(&start)?;
    let resumed_at = replay.position(&first);
    let mut meter = Meter::new(config.progress_bar, &names, resumed_at);
    tracing::info!(%schema, resumed_at, "rebuilding {}", names.join(", "));

    let mut batches = futures::stream::select_all(queues.iter().map(|q| q.stream()))
        .ready_chunks(config.batch_size.max(1));
    let mut kept_in = None;
    let switched = loop {
        if shutdown.is_cancelled() {
            break false;
        }
        let live = live_offsets(pool, config, &partitions).await?;
        replay.check_not_ahead(&live)?;
        meter.show(replay.position(&first), position_of(&live, &first));
        if replay.gap(&live) <= config.batch_size as i64 {
            let switch = Switch {
                config,
                partitions: &partitions,
                names: &names,
                schema: &schema,
            };
            match switch
                .run(&consumer, &mut batches, &mut replay, shutdown)
                .await?
            {
                Switched::Done(kept) => {
                    kept_in = kept;
                    break true;
                }
                Switched::Interrupted => break false,
                Switched::NotYet => {}
            }
        }
        replay
            .step(&consumer, &mut batches, &live, POLL, shutdown)
            .await?;
    };
    meter.finish();
    drop(batches);
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

type Batches<'a> = futures::stream::ReadyChunks<
    futures::stream::SelectAll<MessageStream<'a, DefaultConsumerContext>>,
>;

/// The replay's state between steps.
struct Replay {
    pool: PgPool,
    target: Target,
    subscription: Subscription,
    /// Next offset per partition, as committed in the staging schema.
    staged: Offsets,
    /// Messages read at or past the live position, waiting for the live projector to pass
    /// them. Their partition is paused meanwhile, so this holds at most a fetch's worth.
    held: BTreeMap<i32, VecDeque<Incoming>>,
    paused: BTreeSet<i32>,
    /// Transactions applied at once, each with its own partitions.
    lanes: usize,
    batch_size: usize,
    applied: u64,
    batches: u64,
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

    /// Applies held messages now below `limit`, reads what arrives within `wait`, applies the
    /// part below `limit` and holds the rest.
    async fn step(
        &mut self,
        consumer: &StreamConsumer,
        batches: &mut Batches<'_>,
        limit: &Offsets,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), RebuildError> {
        let mut ready = Vec::new();
        for (partition, held) in &mut self.held {
            let below = limit.get(partition).copied().unwrap_or(0);
            while held.front().is_some_and(|m| m.offset < below) {
                ready.extend(held.pop_front());
            }
        }
        if !ready.is_empty() {
            self.apply(ready, shutdown).await?;
        }
        let released: Vec<i32> = self
            .paused
            .iter()
            .copied()
            .filter(|p| self.held.get(p).is_none_or(VecDeque::is_empty))
            .collect();
        if !released.is_empty() {
            consumer.resume(&self.list(&released)?)?;
            self.paused.retain(|p| !released.contains(p));
        }

        let chunk = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            chunk = tokio::time::timeout(wait, batches.next()) => chunk,
        };
        let Ok(Some(mut chunk)) = chunk else {
            return Ok(());
        };
        // Fill every lane: take what else is ready now.
        while chunk.len() < self.batch_size * self.lanes {
            match batches.next().now_or_never() {
                Some(Some(more)) => chunk.extend(more),
                _ => break,
            }
        }
        let mut ready = Vec::with_capacity(chunk.len());
        for result in chunk {
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    continue;
                }
            };
            let incoming = incoming(&message);
            let below = limit.get(&incoming.partition).copied().unwrap_or(0);
            let held = self.held.entry(incoming.partition).or_default();
            if held.is_empty() && incoming.offset < below {
                ready.push(incoming);
            } else {
                held.push_back(incoming);
            }
        }
        let newly_held: Vec<i32> = self
            .held
            .iter()
            .filter(|(p, held)| !held.is_empty() && !self.paused.contains(p))
            .map(|(p, _)| *p)
            .collect();
        if !newly_held.is_empty() {
            consumer.pause(&self.list(&newly_held)?)?;
            self.paused.extend(newly_held);
        }
        if !ready.is_empty() {
            self.apply(ready, shutdown).await?;
        }
        Ok(())
    }

    /// Applies messages to the staging schema, retrying database errors until shut down (a
    /// batch not applied is read again on resumption). Partitions are split over `lanes`
    /// transactions that run at once: they share no delivery (a delivery's events share a
    /// partition), only the counter rows, which each holds for a moment before its commit.
    async fn apply(
        &mut self,
        messages: Vec<Incoming>,
        shutdown: &CancellationToken,
    ) -> Result<(), RebuildError> {
        // Each partition whole to one lane, the biggest first to the emptiest lane.
        let mut by_partition: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
        for message in messages {
            by_partition
                .entry(message.partition)
                .or_default()
                .push(message);
        }
        let mut partitions: Vec<Vec<Incoming>> = by_partition.into_values().collect();
        partitions.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut lanes: Vec<Vec<Incoming>> = vec![Vec::new(); self.lanes.max(1)];
        for partition in partitions {
            if let Some(lane) = lanes.iter_mut().min_by_key(|lane| lane.len()) {
                lane.extend(partition);
            }
        }
        let mut running = Vec::new();
        for lane in lanes.into_iter().filter(|lane| !lane.is_empty()) {
            let (pool, target, subscription, shutdown) = (
                self.pool.clone(),
                self.target.clone(),
                self.subscription.clone(),
                shutdown.clone(),
            );
            running.push(tokio::spawn(async move {
                let applied =
                    apply_with_retry(&pool, &target, &subscription, &lane, &shutdown).await;
                (lane, applied)
            }));
        }
        for lane in running {
            // A lane that died would leave a hole behind offsets read past: stop instead.
            let (messages, applied) = lane.await.map_err(|e| RebuildError::Lane(e.to_string()))?;
            let Some(applied) = applied else {
                continue; // shut down: read again on resumption
            };
            for message in &messages {
                let next = self.staged.entry(message.partition).or_insert(0);
                *next = (*next).max(message.offset + 1);
            }
            self.applied += (messages.len() - applied.already_consumed) as u64;
            self.batches += 1;
        }
        Ok(())
    }

    fn list(&self, partitions: &[i32]) -> Result<TopicPartitionList, KafkaError> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition_offset(&self.subscription.topic, partition, Offset::Invalid)?;
        }
        Ok(list)
    }
}

/// The last stretch and the swap, with the live projector held between two batches.
struct Switch<'a> {
    config: &'a RebuildConfig,
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
        consumer: &StreamConsumer,
        batches: &mut Batches<'_>,
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
                .step(
                    consumer,
                    batches,
                    &live,
                    Duration::from_millis(50),
                    shutdown,
                )
                .await?;
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

/// The role the query API's logins read through (see the read migrations).
const READER_ROLE: &str = "delivery_reader";

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
             started_at timestamptz not null default now()
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
