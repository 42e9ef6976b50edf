//! The projector crashing, restarting, sharing its partitions and reading duplicates: the read
//! model ends up exactly as the event store says, with nothing lost and nothing applied twice.

use e2e::{Fate, PROJECTOR_GROUP, TOPIC, TestStack};
use projector::Subscription;
use projector::dlq::{self, Action, Skip, StuckKind};
use rdkafka::producer::FutureRecord;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Walks `count` deliveries (ids from `first`) to every fate in turn, 8 at a time.
pub(crate) async fn traffic(stack: &TestStack, first: u128, count: u128) {
    let mut walks = JoinSet::new();
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(8) {
        for &n in chunk {
            let fate = Fate::ALL[(n % 5) as usize];
            let rider = (n % 9) as u32 + 1;
            let client = stack.clone_client();
            walks.spawn(async move { client.walk(Uuid::from_u128(n), rider, fate).await });
        }
        while let Some(result) = walks.join_next().await {
            result.expect("walk");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_restarts_with_no_duplicate_and_no_gap() {
    let mut stack = TestStack::start(4).await;
    let load = traffic(&stack, 1, 60);
    let kill = async {
        // Kill it once it is busy applying: mid-stream, quite possibly mid-batch.
        e2e::eventually(
            Duration::from_secs(60),
            "the projector to apply events",
            || async { (stack.progress.applied.load(Ordering::Relaxed) >= 20).then_some(()) },
        )
        .await;
    };
    tokio::join!(load, kill);
    stack.kill_projectors().await;
    traffic(&stack, 100, 20).await;
    stack.start_projector();
    stack.wait_for_projection(Duration::from_secs(60)).await;
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_and_the_first_leaving_lose_and_repeat_nothing() {
    let mut stack = TestStack::start(4).await;
    traffic(&stack, 1, 30).await;
    stack.start_projector(); // joins: the group rebalances
    traffic(&stack, 100, 30).await;
    stack.stop_first_projector().await; // leaves: the second takes every partition
    traffic(&stack, 200, 30).await;
    stack.wait_for_projection(Duration::from_secs(60)).await;
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_relay_publishes_twice_change_nothing_in_the_read_model() {
    let stack = TestStack::start(2).await;
    traffic(&stack, 1, 20).await;
    stack.wait_for_projection(Duration::from_secs(60)).await;
    let before = stack.read_model().await;
    let consumed = stack.consumed_offsets().await;
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&stack.write)
        .await
        .expect("count");

    // The relay "crashed" between publishing and marking: every row goes out again.
    sqlx::query("update outbox set published_at = null")
        .execute(&stack.write)
        .await
        .expect("unmark");
    e2e::eventually(
        Duration::from_secs(60),
        "the republished events to be consumed",
        || async { (stack.consumed_offsets().await >= consumed + events).then_some(()) },
    )
    .await;
    assert_eq!(stack.read_model().await, before);
    assert!(stack.progress.duplicates.load(Ordering::Relaxed) >= events as u64);
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nothing_can_store_stalls_nobody_and_a_skip_clears_it() {
    let stack = TestStack::start(2).await;
    traffic(&stack, 1, 10).await;
    // On every partition, a message whose key and payload Postgres text cannot hold.
    let producer = stack.broker.producer();
    for partition in 0..2 {
        let record = FutureRecord::to(TOPIC)
            .partition(partition)
            .key(&b"\0\xff"[..])
            .payload(&b"\0 not json"[..]);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("published");
    }
    traffic(&stack, 100, 10).await;
    stack.wait_for_projection(Duration::from_secs(60)).await;

    let stuck = dlq::list(&stack.read, TOPIC, None).await.expect("listed");
    assert_eq!(stuck.len(), 2, "{stuck:?}");
    let subscription = Subscription {
        group: PROJECTOR_GROUP.into(),
        topic: TOPIC.into(),
    };
    let action = Action {
        actor: "e2e".into(),
        reason: "garbage from a test producer".into(),
    };
    for message in stuck {
        assert_eq!(message.kind, StuckKind::Poison);
        let what = Skip::Message {
            partition: message.kafka_partition,
            offset: message.kafka_offset,
        };
        dlq::skip(&stack.read, &subscription, what, &action)
            .await
            .expect("skipped");
    }
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}
