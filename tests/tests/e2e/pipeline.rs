//! Commands over HTTP -> events in Kafka, in order per delivery -> visible in the query API.

use e2e::{Fate, TOPIC, TestStack, redact};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Reads the whole topic from the start: per delivery (key), the versions in arrival order.
async fn versions_in_kafka(broker: &str, expected: usize) -> BTreeMap<String, Vec<i64>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("e2e-reader-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for _ in 0..expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("every event reaches Kafka")
            .expect("message");
        let key = String::from_utf8_lossy(message.key().expect("keyed")).into_owned();
        let envelope = domain::EventEnvelope::from_json(message.payload().expect("payload"))
            .expect("an envelope");
        assert_eq!(key, envelope.delivery_id.to_string(), "key = delivery id");
        per_key.entry(key).or_default().push(envelope.version);
    }
    per_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_kafka_in_order_and_show_in_the_query_api() {
    let stack = TestStack::start(3).await;
    let completed = Uuid::from_u128(0x1001);
    let cancelled = Uuid::from_u128(0x1002);
    let waiting = Uuid::from_u128(0x1003);
    let last = stack.walk(completed, 1, Fate::Completed).await;
    stack
        .walk(cancelled, 2, Fate::CancelledAfterAssignment)
        .await;
    stack.walk(waiting, 1, Fate::Assigned).await;

    let in_kafka = versions_in_kafka(&stack.broker.address, 4 + 3 + 2).await;
    assert_eq!(in_kafka[&completed.to_string()], [1, 2, 3, 4]);
    assert_eq!(in_kafka[&cancelled.to_string()], [1, 2, 3]);
    assert_eq!(in_kafka[&waiting.to_string()], [1, 2]);

    // Read-your-writes: the version the command API returned is waited for, not guessed.
    let (status, mut delivery) = stack
        .query(&format!("/deliveries/{completed}?min_version={last}"))
        .await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["version"], last);
    stack.wait_for_projection(Duration::from_secs(30)).await;

    let (_, mut history) = stack
        .query(&format!("/deliveries/{completed}/history"))
        .await;
    let (_, mut rider) = stack.query("/riders/rider-1/deliveries").await;
    let (_, mut listing) = stack.query("/deliveries?status=cancelled").await;
    let (_, mut stats) = stack.query("/stats").await;
    for value in [
        &mut delivery,
        &mut history,
        &mut rider,
        &mut listing,
        &mut stats,
    ] {
        redact(value);
    }
    insta::assert_json_snapshot!("completed_delivery", delivery);
    insta::assert_json_snapshot!("completed_history", history);
    insta::assert_json_snapshot!("rider_deliveries", rider);
    insta::assert_json_snapshot!("cancelled_listing", listing);
    insta::assert_json_snapshot!("stats", stats);
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_version_that_is_not_projected_gets_a_clear_not_yet() {
    let mut stack = TestStack::start(1).await;
    let id = Uuid::from_u128(0x2001);
    stack.walk(id, 1, Fate::Created).await;
    stack.wait_for_projection(Duration::from_secs(30)).await;
    stack.stop_projectors().await;
    let (status, assigned) = stack
        .command(
            &format!("/deliveries/{id}/assign"),
            e2e::DISPATCHER,
            Some(serde_json::json!({"rider_id": "rider-1"})),
        )
        .await;
    assert_eq!(status, 200, "{assigned}");
    let version = assigned["version"].as_i64().expect("a version");

    let (status, problem) = stack
        .query(&format!(
            "/deliveries/{id}?min_version={version}&wait_ms=300"
        ))
        .await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "not-yet-projected");
    // Without the position the client gets what is projected, which is the older version.
    let (status, stale) = stack.query(&format!("/deliveries/{id}")).await;
    assert_eq!((status, stale["version"].as_i64()), (200, Some(1)));

    stack.start_projector();
    let (status, fresh) = stack
        .query(&format!("/deliveries/{id}?min_version={version}"))
        .await;
    assert_eq!((status, fresh["version"].as_i64()), (200, Some(version)));
    stack.shutdown().await;
}
