//! The two sides fail independently: reads survive the write database, writes survive the
//! read side, and the read side catches up with nothing lost and nothing applied twice.

use e2e::{Fate, TestStack};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_keeps_serving_while_the_write_database_is_unreachable() {
    let mut stack = TestStack::start(2).await;
    let id = Uuid::from_u128(0x3001);
    stack.walk(id, 1, Fate::PickedUp).await;
    stack.wait_for_projection(Duration::from_secs(30)).await;

    stack.block_write_database(true).await;
    let (status, _) = stack
        .command(
            &format!("/deliveries/{id}/complete"),
            &e2e::rider_token(1),
            None,
        )
        .await;
    assert_eq!(status, 500, "the command side is really down");
    for path in [
        format!("/deliveries/{id}"),
        format!("/deliveries/{id}/history"),
        "/deliveries?status=picked_up".to_owned(),
        "/riders/rider-1/deliveries".to_owned(),
        "/stats".to_owned(),
    ] {
        let (status, body) = stack.query(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, delivery) = stack.query(&format!("/deliveries/{id}")).await;
    assert_eq!(delivery["status"], "picked_up");

    stack.block_write_database(false).await;
    // The relay lost its leader connection and exited, as a supervisor would see it; restart it.
    stack.stop_relay().await;
    stack.start_relay();
    let (status, body) = stack
        .command(
            &format!("/deliveries/{id}/complete"),
            &e2e::rider_token(1),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    stack.wait_for_projection(Duration::from_secs(30)).await;
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_accepted_while_the_read_side_is_down_and_it_catches_up_after() {
    let mut stack = TestStack::start(3).await;
    stack
        .walk(Uuid::from_u128(0x4000), 1, Fate::Completed)
        .await;
    stack.wait_for_projection(Duration::from_secs(30)).await;
    stack.stop_projectors().await;
    stack.stop_query_api().await;

    for n in 1..=25u128 {
        let fate = Fate::ALL[(n % 5) as usize];
        stack
            .walk(Uuid::from_u128(0x4000 + n), (n % 9) as u32 + 1, fate)
            .await;
    }
    let unprojected: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&stack.write)
        .await
        .expect("count");
    assert!(
        unprojected > 50,
        "the commands were all accepted and stored"
    );

    stack.start_projector();
    stack.start_query_api().await;
    stack.wait_for_projection(Duration::from_secs(60)).await;
    stack.assert_read_model_matches_event_store().await;
    let (status, stats) = stack.query("/stats").await;
    assert_eq!(status, 200);
    let total: i64 = stats["deliveries_by_status"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(serde_json::Value::as_i64)
        .sum();
    assert_eq!(total, 26);
    stack.shutdown().await;
}
