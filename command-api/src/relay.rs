//! The message relay: publishes outbox rows to Kafka in outbox order, keyed by delivery id, and
//! marks them published only after the broker acknowledged them (at-least-once: a crash between
//! the two republishes, never loses).
//!
//! One relay publishes at a time: the *leader*, which holds a Postgres advisory lock on a
//! connection of its own. Others are *standbys* that ask for the lock every `STANDBY_POLL`.
//!
//! How it heals, so that `run` returns only on shutdown:
//! - **Database error** (Postgres restarted, the lock connection killed, a query failed): the
//!   relay *steps down*. It drops its lock connection and its listener, which releases the
//!   lock, waits (`Pause`: long enough for a healthy standby to take over first, doubling while
//!   failures repeat, capped), and becomes a standby again. Whoever leads next starts from the
//!   first unpublished row, so order is kept and nothing is skipped.
//! - **A producer that cannot deliver**: librdkafka declared it fatally failed (its idempotent
//!   producer lost track of its sequence numbers and will never deliver again), or a message
//!   timed out (`message.timeout.ms` passed without the broker taking it, whatever the
//!   producer is stuck on: a broker that restarted empty and no longer knows its producer id
//!   makes librdkafka bump its epoch and retry forever). The leader drops that producer, builds
//!   a new one (new connections, a new producer id) and publishes again from the first
//!   unpublished row. Every message of a round was awaited, so none of the old producer's is
//!   still queued behind the new one's.
//! - **Any other broker error** (broker down or restarting, a full local queue): the leader
//!   keeps the lock and its producer and retries the same rows with a capped backoff;
//!   librdkafka reconnects by itself.
//!
//! Its metrics (leader flag, publish latency, failures, the outbox backlog) are in `monitor`.
//!
//! (Just over 400 lines: the leader loop and each way it heals read best side by side.)

pub mod monitor;
mod pipeline;

pub use pipeline::{Pipeline, Settle};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Advisory lock key held by the one active relay ("outbox" in ASCII).
const LEADER_LOCK: i64 = 0x6f75_7462_6f78;
/// How often a standby asks for the leader lock.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to lead, or to publish.
const LONGEST_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub topic: String,
    /// The most outbox rows one read queues to the producer.
    pub batch_size: i64,
    /// The most messages queued and not yet acknowledged (see `pipeline`).
    pub max_in_flight: usize,
    /// How often to look for rows when no notification arrives (a fallback, not the main path).
    pub poll_interval: Duration,
}

/// The producer properties (and librdkafka's aliases of them) that `ProducerSettings::new`
/// sets for order and durability: idempotence keeps each partition's order through retries,
/// `acks=all` waits for every in-sync replica, and the partitioner maps each delivery to the
/// partition other clients expect.
const GUARANTEES: [&str; 4] = [
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "partitioner",
];

/// What the relay builds its producers from: one at start, a new one whenever librdkafka
/// declares the current one fatally failed.
#[derive(Clone)]
pub struct ProducerSettings(ClientConfig);

impl ProducerSettings {
    /// A producer that keeps per-partition order through retries (idempotence), waits for all
    /// in-sync replicas, and maps keys to partitions like Java clients and Debezium.
    pub fn new(brokers: &str) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "1")
            // A broker answers one connection's requests one at a time, so five in flight
            // (librdkafka's default) queue behind each other there: on the default stack at
            // 500 commands/s, accepted -> published p50 went 93 -> 33 ms with two. Two still
            // overlap one request's network round trip with the next one's batching.
            .set("max.in.flight.requests.per.connection", "2");
        Self(config)
    }

    /// These settings with an operator's librdkafka properties over them (`--producer-setting`):
    /// TLS and SASL for a real cluster, or batching tuned to a broker. The properties that
    /// per-delivery order and durability rest on cannot be changed, and asking is an error.
    pub fn with_operator_settings(mut self, settings: &[(String, String)]) -> Result<Self, String> {
        for (key, value) in settings {
            if GUARANTEES.contains(&key.as_str()) {
                return Err(format!(
                    "{key} cannot be set: the relay's per-delivery order and durability rest on it"
                ));
            }
            self.0.set(key, value);
        }
        Ok(self)
    }

    /// The settings as librdkafka properties, to adjust before use.
    pub fn config_mut(&mut self) -> &mut ClientConfig {
        &mut self.0
    }

    pub fn create(&self) -> Result<FutureProducer, KafkaError> {
        self.0.create()
    }
}

/// A producer with the relay's settings (see `ProducerSettings::new`).
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ProducerSettings::new(brokers).create()
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the broker did not take the message: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What the relay does after a round that failed with `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Keep leading and publish the same rows again after a backoff.
    Retry,
    /// The producer will not deliver: publish again with a new one.
    ReplaceProducer,
    /// Drop the database connections (and with them the lock), then compete again.
    StepDown,
}

/// Decides how to recover. `fatal` is the producer's fatal error, if it has one
/// (`client().fatal_error()`): once set, every later send fails, so retrying is useless.
pub fn recovery(error: &RelayError, fatal: Option<RDKafkaErrorCode>) -> Recovery {
    match error {
        RelayError::Database(_) => Recovery::StepDown,
        RelayError::Kafka(_) if fatal.is_some() => Recovery::ReplaceProducer,
        RelayError::Kafka(error) => match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::MessageTimedOut) => {
                Recovery::ReplaceProducer
            }
            _ => Recovery::Retry,
        },
    }
}

/// Takes the relay's leader lock on `conn` if no other relay holds it. The lock lives as long
/// as the connection, so a relay that dies releases it.
pub async fn try_become_leader(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select pg_try_advisory_lock($1) as "locked!""#,
        LEADER_LOCK
    )
    .fetch_one(conn)
    .await
}

/// Why a relay stopped leading (or standing by) before shutdown.
enum StepDown {
    Database(sqlx::Error),
    /// A new producer could not be built.
    Kafka(KafkaError),
}

impl From<sqlx::Error> for StepDown {
    fn from(error: sqlx::Error) -> Self {
        StepDown::Database(error)
    }
}

impl From<RelayError> for StepDown {
    fn from(error: RelayError) -> Self {
        match error {
            RelayError::Database(error) => StepDown::Database(error),
            RelayError::Kafka(error) => StepDown::Kafka(error),
        }
    }
}

/// A wait that doubles from `first` up to `LONGEST_WAIT` while failures repeat.
struct Pause {
    first: Duration,
    next: Duration,
}

impl Pause {
    fn new(first: Duration) -> Self {
        Self { first, next: first }
    }

    fn take(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST_WAIT);
        wait
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Sleeps for `wait` unless shutdown comes first; true if it did.
async fn wait_or_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Runs until `shutdown`: stands by until it is the one active relay, then publishes as rows
/// arrive, healing from database and producer failures on its own (see the module
/// documentation). Returns early only if `producers` cannot build a producer at start.
pub async fn run(
    pool: PgPool,
    producers: ProducerSettings,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    monitor::register();
    metrics::gauge!(monitor::LEADER).set(0.0);
    let mut producer = producers.create()?;
    // A relay that stepped down waits longer than a standby's poll: a healthy standby leads next.
    let mut pause = Pause::new(STANDBY_POLL + STANDBY_POLL / 2);
    loop {
        let term = lead(
            &pool,
            &producers,
            &mut producer,
            &config,
            &shutdown,
            &mut pause,
        );
        match term.await {
            Ok(()) => return Ok(()),
            Err(StepDown::Database(error)) => {
                tracing::warn!(%error, "the write database failed: stepping down");
            }
            Err(StepDown::Kafka(error)) => {
                tracing::error!(%error, "Kafka failed: stepping down");
            }
        }
        let wait = pause.take();
        tracing::info!(?wait, "standing by again after a pause");
        if wait_or_shutdown(wait, &shutdown).await {
            return Ok(());
        }
    }
}

/// One term: stand by until the lock is ours, then publish until shutdown (`Ok`) or until a
/// failure that needs stepping down. Dropping the lock connection on return releases the lock.
async fn lead(
    pool: &PgPool,
    producers: &ProducerSettings,
    producer: &mut FutureProducer,
    config: &RelayConfig,
    shutdown: &CancellationToken,
    pause: &mut Pause,
) -> Result<(), StepDown> {
    // Outside the pool: the lock must live exactly as long as this connection.
    let mut leader = PgConnection::connect_with(&pool.connect_options()).await?;
    while !try_become_leader(&mut leader).await? {
        if wait_or_shutdown(STANDBY_POLL, shutdown).await {
            return Ok(());
        }
    }
    tracing::info!(topic = %config.topic, "relay is the active publisher");
    let _leading = monitor::Leading::start();
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(crate::wake::CHANNEL).await?;
    let mut retry = Pause::new(Duration::from_millis(100));
    let mut pipeline = Pipeline::new(config.max_in_flight);
    let term = async {
        while !shutdown.is_cancelled() {
            // Losing the lock connection means another relay may take over: stop publishing.
            leader.ping().await?;
            let error = match step(
                pool,
                producer,
                config,
                &mut pipeline,
                &mut listener,
                shutdown,
            )
            .await
            {
                Ok(()) => {
                    pause.reset();
                    retry.reset();
                    continue;
                }
                Err(error) => error,
            };
            let fatal = producer.client().fatal_error();
            let next = recovery(&error, fatal.as_ref().map(|(code, _)| *code));
            monitor::failed(next);
            match next {
                Recovery::Retry => {
                    let wait = retry.take();
                    tracing::warn!(%error, retry_in = ?wait, "publishing failed; the outbox keeps the rows");
                    wait_or_shutdown(wait, shutdown).await;
                }
                Recovery::ReplaceProducer => {
                    let reason = fatal.map_or_else(|| error.to_string(), |(_, reason)| reason);
                    tracing::warn!(%reason, "the Kafka producer cannot deliver: replacing it");
                    *producer = producers.create().map_err(StepDown::Kafka)?;
                }
                Recovery::StepDown => return Err(error.into()),
            }
        }
        Ok(())
    };
    let ended = term.await;
    // However the term ended, what it queued is awaited (and marked, while the database
    // answers): on shutdown, what was sent is confirmed.
    if let Err(error) = pipeline.settle(pool, Settle::All).await {
        tracing::debug!(%error, "settling the messages in flight at the end of the term failed");
    }
    ended
}

/// One step of a leader: queue what there is room for, then wait for the oldest message's
/// acknowledgement or for new rows, whichever comes first, and mark what was acknowledged.
/// With nothing in flight, it waits for a wake-up, the poll interval, or shutdown. On an
/// error, nothing is left in flight.
async fn step(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &RelayConfig,
    pipeline: &mut Pipeline,
    listener: &mut PgListener,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    if let Err(error) = pipeline.fill(pool, producer, config).await {
        return Err(match pipeline.settle(pool, Settle::All).await {
            // The database failing matters more: the relay steps down for it.
            Err(database @ RelayError::Database(_)) => database,
            _ => error,
        });
    }
    if pipeline.is_empty() {
        tokio::select! {
            () = shutdown.cancelled() => {}
            notified = listener.recv() => { notified?; }
            () = tokio::time::sleep(config.poll_interval) => {}
        }
        return Ok(());
    }
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        () = pipeline.oldest_settled() => {}
        // New rows: queue them beside those in flight.
        notified = listener.recv() => { notified?; }
    }
    pipeline.settle(pool, Settle::Ready).await?;
    Ok(())
}

/// One round, for tests and tools: queues up to a batch of the oldest unpublished rows, waits
/// for every acknowledgement, and marks the acknowledged prefix published; returns how many.
/// Rows after the first failure stay unpublished and are sent again, in order, next round.
pub async fn publish_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &RelayConfig,
) -> Result<usize, RelayError> {
    let mut pipeline = Pipeline::new(config.batch_size.max(1) as usize);
    let filled = pipeline.fill(pool, producer, config).await;
    let settled = pipeline.settle(pool, Settle::All).await;
    filled?;
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(code: RDKafkaErrorCode) -> RelayError {
        RelayError::Kafka(KafkaError::MessageProduction(code))
    }

    fn setting(settings: &ProducerSettings, key: &str) -> Option<String> {
        settings.0.get(key).map(str::to_owned)
    }

    #[test]
    fn an_operators_settings_go_over_the_relays_own() {
        let settings = ProducerSettings::new("broker:9092")
            .with_operator_settings(&[
                ("linger.ms".to_owned(), "5".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ])
            .expect("allowed settings");
        assert_eq!(setting(&settings, "linger.ms").as_deref(), Some("5"));
        assert_eq!(
            setting(&settings, "security.protocol").as_deref(),
            Some("SASL_SSL")
        );
        assert_eq!(
            setting(&settings, "enable.idempotence").as_deref(),
            Some("true")
        );
        assert_eq!(setting(&settings, "acks").as_deref(), Some("all"));
    }

    #[test]
    fn the_settings_order_and_durability_rest_on_cannot_be_changed() {
        for key in GUARANTEES {
            let refused = ProducerSettings::new("broker:9092")
                .with_operator_settings(&[(key.to_owned(), "1".to_owned())]);
            let error = refused
                .err()
                .unwrap_or_else(|| panic!("{key} was accepted"));
            assert!(error.starts_with(key), "{error}");
        }
    }

    #[test]
    fn a_database_error_steps_down() {
        let error = RelayError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(recovery(&error, None), Recovery::StepDown);
    }

    #[test]
    fn a_broker_outage_is_retried_with_the_same_producer() {
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert_eq!(recovery(&kafka(code), None), Recovery::Retry, "{code:?}");
        }
        assert_eq!(
            recovery(&RelayError::Kafka(KafkaError::Canceled), None),
            Recovery::Retry
        );
    }

    #[test]
    fn a_producer_in_a_fatal_state_is_replaced_whatever_the_message_said() {
        let fatal = Some(RDKafkaErrorCode::OutOfOrderSequenceNumber);
        for code in [RDKafkaErrorCode::MessageTimedOut, RDKafkaErrorCode::Fatal] {
            assert_eq!(recovery(&kafka(code), fatal), Recovery::ReplaceProducer);
        }
        // The message's own code says so even before the client reports its fatal error.
        assert_eq!(
            recovery(&kafka(RDKafkaErrorCode::Fatal), None),
            Recovery::ReplaceProducer
        );
    }

    #[test]
    fn a_producer_that_let_a_message_time_out_is_replaced() {
        assert_eq!(
            recovery(&kafka(RDKafkaErrorCode::MessageTimedOut), None),
            Recovery::ReplaceProducer
        );
    }

    #[test]
    fn the_pause_doubles_up_to_a_cap_and_starts_over_after_a_success() {
        let mut pause = Pause::new(Duration::from_secs(1));
        let waits: Vec<_> = (0..6).map(|_| pause.take().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        pause.reset();
        assert_eq!(pause.take(), Duration::from_secs(1));
    }
}
