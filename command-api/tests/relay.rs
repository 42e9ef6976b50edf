//! The relay against a producer that fails for good. librdkafka's mock cluster injects the
//! error (an idempotent producer whose head-of-line Produce request comes back
//! OUT_OF_ORDER_SEQUENCE_NUMBER can no longer reason about its messages and raises a fatal
//! error); the outbox is a real Postgres database, fresh per test.

use command_api::relay::{self, ProducerSettings, Recovery, RelayConfig, RelayError};
use command_api::store::{self, Causation};
use domain::fixtures::{assign, create, dispatcher, id, t};
use domain::{Delivery, EventEnvelope};
use e2e::eventually;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "delivery.events";
const FATAL: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;

/// The relay's own producer settings, pointed at the mock cluster.
fn settings(cluster: &MockCluster<'static, DefaultProducerContext>) -> ProducerSettings {
    let mut settings = ProducerSettings::new(&cluster.bootstrap_servers());
    // A bounded wait for messages the mock cluster never answers.
    settings.config_mut().set("message.timeout.ms", "10000");
    settings
}

#[tokio::test]
async fn an_out_of_order_sequence_at_the_head_makes_the_idempotent_producer_fatal() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let producer = settings(&cluster).create().expect("producer");
    cluster.request_errors(RDKafkaApiKey::Produce, &[FATAL]);

    let delivery = producer
        .send_result(FutureRecord::to(TOPIC).key("k").payload("v"))
        .map_err(|(error, _)| error)
        .expect("queued");
    let (error, _) = delivery
        .await
        .expect("answered")
        .expect_err("the broker refused it");
    let fatal = producer.client().fatal_error();
    assert!(fatal.is_some(), "librdkafka raised a fatal error ({error})");
    // What the relay decides from this very error and state.
    assert_eq!(
        relay::recovery(&RelayError::Kafka(error), fatal.map(|(code, _)| code)),
        Recovery::ReplaceProducer
    );
    // And rightly so: the same producer will never deliver again.
    let again = producer.send_result(FutureRecord::to(TOPIC).key("k").payload("v"));
    let delivered = match again {
        Ok(delivery) => matches!(delivery.await, Ok(Ok(_))),
        Err(_) => false,
    };
    assert!(!delivered, "a fatal producer delivered a message");
}

/// Appends create + assign for `count` deliveries: 2 outbox rows each, interleaved.
async fn record(pool: &PgPool, count: u128) {
    let causation = Causation {
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
    };
    let mut deliveries = Vec::new();
    for n in 1..=count {
        let events = Delivery::default()
            .decide(create(id(n)), &dispatcher(), t(0))
            .expect("allowed");
        let mut tx = pool.begin().await.expect("begin");
        store::append(&mut tx, 0, &events, causation)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        deliveries.push(Delivery::replay(&events).expect("valid"));
    }
    for delivery in deliveries {
        let events = delivery
            .decide(assign("rider-1"), &dispatcher(), t(0))
            .expect("allowed");
        let mut tx = pool.begin().await.expect("begin");
        store::append(&mut tx, delivery.version, &events, causation)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
}

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_relay_whose_producer_fails_for_good_builds_a_new_one_and_publishes_in_order(
    pool: PgPool,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 2, 1).expect("topic");
    record(&pool, 10).await;
    // The first Produce request fails at the head of the line: the producer turns fatal.
    cluster.request_errors(RDKafkaApiKey::Produce, &[FATAL]);

    let shutdown = CancellationToken::new();
    let config = RelayConfig {
        topic: TOPIC.into(),
        batch_size: 5,
        max_in_flight: 20,
        poll_interval: Duration::from_millis(100),
    };
    let running = tokio::spawn(relay::run(
        pool.clone(),
        settings(&cluster),
        config,
        shutdown.clone(),
    ));
    // With the fatal producer kept, the rows would stay unpublished.
    let wait = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + wait;
    let what = "the outbox to drain (it never does if the relay keeps its broken producer)";
    eventually(wait, what, || async {
        if unpublished(&pool).await == 0 {
            return Some(());
        }
        assert!(!running.is_finished(), "the relay gave up");
        None
    })
    .await;

    // Every event arrived, each delivery's in order: copies before the failure may repeat,
    // but no version comes before the one it follows.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "relay-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen: HashMap<String, i64> = HashMap::new();
    while seen.len() < 10 || seen.values().any(|version| *version < 2) {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("every event arrives")
            .expect("message");
        let key = String::from_utf8(message.key().expect("keyed").to_vec()).expect("utf8");
        let envelope = EventEnvelope::from_json(message.payload().expect("payload")).expect("ok");
        let last = seen.entry(key.clone()).or_insert(0);
        assert!(
            envelope.version <= *last + 1,
            "{key}: version {} after {last}",
            envelope.version
        );
        *last = (*last).max(envelope.version);
    }
    shutdown.cancel();
    running.await.expect("joins").expect("ends cleanly");
}
