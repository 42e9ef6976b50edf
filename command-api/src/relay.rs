//! The message relay: publishes outbox rows to Kafka in outbox order, keyed by delivery id, and
//! marks them published only after the broker acknowledged them (at-least-once: a crash between
//! the two republishes, never loses).

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Advisory lock key held by the one active relay ("outbox" in ASCII).
const LEADER_LOCK: i64 = 0x6f75_7462_6f78;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub topic: String,
    /// Outbox rows read and published per round.
    pub batch_size: i64,
    /// How often to look for rows when no notification arrives (a fallback, not the main path).
    pub poll_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the broker did not take the message: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A producer that keeps per-partition order through retries (idempotence), waits for all
/// in-sync replicas, and maps keys to partitions like Java clients and Debezium.
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "1")
        .create()
}

/// Takes the relay's leader lock on `conn` if no other relay holds it. The lock lives as long
/// as the connection, so a relay that dies releases it.
pub async fn try_become_leader(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(conn)
        .await
}

/// Runs until `shutdown`: waits to be the one active relay, then publishes as rows arrive.
pub async fn run(
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let mut leader = pool.acquire().await?.detach();
    while !try_become_leader(&mut leader).await? {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(topic = %config.topic, "relay is the active publisher");
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen("outbox").await?;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        // Losing the lock connection means another relay may take over: stop publishing.
        leader.ping().await?;
        match publish_batch(&pool, &producer, &config).await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = listener.recv() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "publishing failed; the outbox keeps the rows");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    Ok(())
}

/// Publishes the oldest unpublished rows, in order, and marks the acknowledged prefix.
/// Rows after the first failure stay unpublished and are sent again, in order, next round.
pub async fn publish_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &RelayConfig,
) -> Result<usize, RelayError> {
    let rows: Vec<(i64, String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "select position, aggregateid, payload, headers from outbox \
         where published_at is null order by position limit $1",
    )
    .bind(config.batch_size)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Queue the whole batch first (librdkafka pipelines it), then await acknowledgements in order.
    let mut deliveries = Vec::with_capacity(rows.len());
    for (position, key, payload, headers) in &rows {
        let payload = payload.to_string();
        let mut kafka_headers = OwnedHeaders::new();
        if let Some(headers) = headers.as_object() {
            for (name, value) in headers {
                kafka_headers = kafka_headers.insert(Header {
                    key: name,
                    value: value.as_str(),
                });
            }
        }
        let record = FutureRecord::to(&config.topic)
            .key(key)
            .payload(&payload)
            .headers(kafka_headers);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push((*position, delivery)),
            // The local queue is full: publish what is queued, the rest next round.
            Err((KafkaError::MessageProduction(_), _)) if !deliveries.is_empty() => break,
            Err((error, _)) => return Err(error.into()),
        }
    }
    let mut acknowledged = Vec::with_capacity(deliveries.len());
    let mut failure = None;
    for (position, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(_)) if failure.is_none() => acknowledged.push(position),
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => {
                failure.get_or_insert(RelayError::Kafka(error));
            }
            Err(_canceled) => {
                failure.get_or_insert(RelayError::Kafka(KafkaError::Canceled));
            }
        }
    }
    if !acknowledged.is_empty() {
        // A mark lost in a database crash only means the row is published again (a duplicate,
        // which consumers skip by version): the next round need not wait for the WAL flush.
        let mut tx = pool.begin().await?;
        sqlx::query("set local synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query("update outbox set published_at = now() where position = any($1)")
            .bind(&acknowledged)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(acknowledged.len()),
    }
}
