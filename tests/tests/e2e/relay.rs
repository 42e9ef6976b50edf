//! The outbox relay against real Postgres (a fresh write database per test) and a real
//! Kafka-protocol broker.

use command_api::relay::{self, ProducerSettings, RelayConfig};
use command_api::store::{self, Causation};
use domain::fixtures::{id, lifecycle, t};
use domain::{Delivery, DeliveryId, EventEnvelope};
use e2e::{Broker, TOPIC};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Appends a whole lifecycle (4 events) for `deliveries` deliveries, interleaved.
pub(crate) async fn record_lifecycles(pool: &PgPool, deliveries: u128) -> Vec<DeliveryId> {
    record_lifecycles_of(pool, 1..=deliveries).await
}

/// Appends a whole lifecycle (4 events) for the deliveries numbered `numbers`, interleaved.
pub(crate) async fn record_lifecycles_of(
    pool: &PgPool,
    numbers: impl IntoIterator<Item = u128>,
) -> Vec<DeliveryId> {
    let ids: Vec<_> = numbers.into_iter().map(id).collect();
    let mut states: HashMap<DeliveryId, Delivery> = HashMap::new();
    for step in 0..4 {
        for id in &ids {
            let (command, actor) = lifecycle(*id)[step].clone();
            let delivery = states.remove(id).unwrap_or_default();
            let events = delivery.decide(command, &actor, t(0)).expect("allowed");
            let mut tx = pool.begin().await.expect("begin");
            let causation = Causation {
                correlation_id: Uuid::from_u128(1),
                causation_id: Uuid::from_u128(2),
            };
            store::append(&mut tx, delivery.version, &events, causation)
                .await
                .expect("append");
            tx.commit().await.expect("commit");
            let next = events
                .iter()
                .try_fold(delivery, |d, e| d.evolve(e))
                .expect("valid");
            states.insert(*id, next);
        }
    }
    ids
}

pub(crate) fn consumer(broker: &Broker) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", format!("test-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    consumer
}

/// Reads until `count` messages arrived (or fails after a deadline).
pub(crate) async fn consume(
    consumer: &StreamConsumer,
    count: usize,
) -> Vec<(String, i32, EventEnvelope, HashMap<String, String>)> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", received.len()))
            .expect("message");
        let key = String::from_utf8(message.key().expect("keyed").to_vec()).expect("utf8 key");
        let envelope =
            EventEnvelope::from_json(message.payload().expect("payload")).expect("envelope");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        received.push((key, message.partition(), envelope, headers));
    }
    received
}

pub(crate) fn relay_config() -> RelayConfig {
    RelayConfig {
        topic: TOPIC.into(),
        batch_size: 7,
        max_in_flight: 21,
        poll_interval: Duration::from_millis(200),
    }
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_relay_publishes_every_event_keyed_by_delivery_in_order_and_marks_it(pool: PgPool) {
    let broker = Broker::start(3).await;
    let ids = record_lifecycles(&pool, 6).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay::run(
        pool.clone(),
        ProducerSettings::new(&broker.address),
        relay_config(),
        shutdown.clone(),
    ));

    let received = consume(&consumer(&broker), 24).await;
    let mut per_delivery: HashMap<String, Vec<i64>> = HashMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for (key, partition, envelope, headers) in &received {
        assert_eq!(key, &envelope.delivery_id.to_string());
        assert_eq!(headers["event_type"], envelope.event_type);
        assert_eq!(headers["version"], envelope.version.to_string());
        assert_eq!(headers["event_id"], envelope.event_id.to_string());
        assert_eq!(
            headers["actor"],
            format!("{}:{}", envelope.actor.role, envelope.actor.id)
        );
        assert!(envelope.decode().is_ok());
        per_delivery
            .entry(key.clone())
            .or_default()
            .push(envelope.version);
        // One delivery, one partition.
        assert_eq!(
            *partitions.entry(key.clone()).or_insert(*partition),
            *partition
        );
    }
    assert_eq!(per_delivery.len(), ids.len());
    for versions in per_delivery.values() {
        assert_eq!(
            versions,
            &vec![1, 2, 3, 4],
            "in order, no gap, no duplicate"
        );
    }

    // Marked published only after the broker took them: poll until all are marked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let unpublished: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&pool)
                .await
                .expect("count");
        if unpublished == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unpublished} rows never marked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.expect("joins").expect("relay ends cleanly");
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn while_the_broker_is_down_the_outbox_keeps_everything_and_drains_in_order_later(
    pool: PgPool,
) {
    // No broker on this address yet: rows stay unpublished, nothing is lost.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let unreachable = relay::producer(&format!("127.0.0.1:{port}")).expect("producer");
    record_lifecycles(&pool, 2).await;
    let config = RelayConfig {
        topic: TOPIC.into(),
        batch_size: 100,
        max_in_flight: 400,
        poll_interval: Duration::from_millis(100),
    };
    let attempt = tokio::time::timeout(
        Duration::from_secs(2),
        relay::publish_batch(&pool, &unreachable, &config),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(n)) if n > 0),
        "nothing can be acknowledged"
    );
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(unpublished, 8);

    // The broker comes back: the backlog drains, in order per delivery.
    let broker = Broker::start(2).await;
    let shutdown = CancellationToken::new();
    let producers = ProducerSettings::new(&broker.address);
    let running = tokio::spawn(relay::run(
        pool.clone(),
        producers,
        config,
        shutdown.clone(),
    ));
    let received = consume(&consumer(&broker), 8).await;
    let mut per_delivery: HashMap<String, Vec<i64>> = HashMap::new();
    for (key, _, envelope, _) in received {
        per_delivery.entry(key).or_default().push(envelope.version);
    }
    assert!(
        per_delivery.values().all(|v| v == &vec![1, 2, 3, 4]),
        "{per_delivery:?}"
    );
    shutdown.cancel();
    running.await.expect("joins").expect("relay ends cleanly");
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn only_one_relay_at_a_time_holds_the_leader_lock(pool: PgPool) {
    let mut first = pool.acquire().await.expect("connection").detach();
    let mut second = pool.acquire().await.expect("connection").detach();
    assert!(relay::try_become_leader(&mut first).await.expect("lock"));
    assert!(!relay::try_become_leader(&mut second).await.expect("lock"));
    drop(first); // the active relay dies: its lock goes with its connection
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !relay::try_become_leader(&mut second).await.expect("lock") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_crash_between_publish_and_mark_republishes_in_order_and_loses_nothing(pool: PgPool) {
    let broker = Broker::start(2).await;
    record_lifecycles(&pool, 3).await;
    let producer = relay::producer(&broker.address).expect("producer");
    let config = RelayConfig {
        topic: TOPIC.into(),
        batch_size: 100,
        max_in_flight: 400,
        poll_interval: Duration::from_millis(100),
    };
    assert_eq!(
        relay::publish_batch(&pool, &producer, &config)
            .await
            .expect("publishes"),
        12
    );
    // The relay "crashed" after the broker took the messages but before the marks committed.
    sqlx::query("update outbox set published_at = null")
        .execute(&pool)
        .await
        .expect("unmark");
    assert_eq!(
        relay::publish_batch(&pool, &producer, &config)
            .await
            .expect("publishes again"),
        12
    );

    let mut per_delivery: HashMap<String, Vec<i64>> = HashMap::new();
    for (key, _, envelope, _) in consume(&consumer(&broker), 24).await {
        per_delivery.entry(key).or_default().push(envelope.version);
    }
    assert_eq!(per_delivery.len(), 3);
    for versions in per_delivery.values() {
        // Each delivery's history arrives whole, twice, each copy in order: duplicates, no loss.
        assert_eq!(versions, &vec![1, 2, 3, 4, 1, 2, 3, 4]);
    }
}

/// Appends the first event (created) of delivery `number` in a transaction left open.
async fn create_uncommitted(
    pool: &PgPool,
    number: u128,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let (command, actor) = lifecycle(id(number))[0].clone();
    let events = Delivery::default()
        .decide(command, &actor, t(0))
        .expect("allowed");
    let mut tx = pool.begin().await.expect("begin");
    let causation = Causation {
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
    };
    store::append(&mut tx, 0, &events, causation)
        .await
        .expect("append");
    tx
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn rows_are_queued_while_earlier_ones_are_in_flight_and_a_late_commit_below_them_is_not_skipped(
    pool: PgPool,
) {
    let broker = Broker::start(2).await;
    let producer = relay::producer(&broker.address).expect("producer");
    let config = RelayConfig {
        topic: TOPIC.into(),
        batch_size: 4,
        max_in_flight: 12,
        poll_interval: Duration::from_millis(100),
    };
    // Delivery 1's first event takes the lowest position but commits last.
    let late = create_uncommitted(&pool, 1).await;
    record_lifecycles_of(&pool, 2..=3).await;
    let mut pipeline = relay::Pipeline::new(config.max_in_flight);
    // Two reads, nothing settled in between: the second queues the next rows, not the same.
    assert_eq!(
        pipeline
            .fill(&pool, &producer, &config)
            .await
            .expect("fill"),
        4
    );
    assert_eq!(
        pipeline
            .fill(&pool, &producer, &config)
            .await
            .expect("fill"),
        4
    );
    late.commit().await.expect("commit");
    assert_eq!(
        pipeline
            .fill(&pool, &producer, &config)
            .await
            .expect("fill"),
        1
    );
    assert_eq!(
        pipeline
            .settle(&pool, relay::Settle::All)
            .await
            .expect("settled"),
        9
    );
    assert!(pipeline.is_empty());
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(unpublished, 0);

    let mut per_delivery: HashMap<String, Vec<i64>> = HashMap::new();
    for (key, _, envelope, _) in consume(&consumer(&broker), 9).await {
        per_delivery.entry(key).or_default().push(envelope.version);
    }
    // Each message once, each delivery's in order, the late one included.
    assert_eq!(per_delivery.remove(&id(1).to_string()), Some(vec![1]));
    assert!(
        per_delivery.values().all(|v| v == &vec![1, 2, 3, 4]),
        "{per_delivery:?}"
    );
    assert_eq!(per_delivery.len(), 2);
}
