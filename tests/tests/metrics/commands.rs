//! The command API counts and times every command by command and outcome.

use crate::serial;
use command_api::metrics::{COMMAND_DURATION, COMMANDS};
use e2e::{DISPATCHER, Fate, Scrape, TestStack, rider_token};
use serde_json::json;
use uuid::Uuid;

/// How much `name{command, outcome}` grew from `before` to `after`.
fn grew(before: &Scrape, after: &Scrape, name: &str, command: &str, outcome: &str) -> f64 {
    let labels = [("command", command), ("outcome", outcome)];
    after.sum(name, &labels) - before.sum(name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_counted_and_timed_by_command_and_outcome() {
    let _alone = serial().await;
    let stack = TestStack::start(1).await;
    let url = stack.command_url("/metrics");
    let before = Scrape::get(&stack.http, &url).await;

    // Three deliveries walked to completion: 3 accepted of each of four commands.
    const WALKED: u128 = 3;
    for n in 1..=WALKED {
        stack.walk(Uuid::from_u128(n), 1, Fate::Completed).await;
    }
    // A stale If-Match: a conflict.
    let stale = stack
        .http
        .post(stack.command_url(&format!("/deliveries/{}/cancel", Uuid::from_u128(1))))
        .bearer_auth(DISPATCHER)
        .header("If-Match", "\"1\"")
        .json(&json!({"reason": "customer asked"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(stale.status(), 409);
    // Rider 2 picking up rider 1's delivery: refused.
    let theirs = Uuid::from_u128(10);
    stack.walk(theirs, 1, Fate::Assigned).await;
    let (status, _) = stack
        .command(
            &format!("/deliveries/{theirs}/pickup"),
            &rider_token(2),
            None,
        )
        .await;
    assert_eq!(status, 403);
    // The same create sent twice with one Idempotency-Key: accepted, then replayed.
    for expected_replay in ["false", "true"] {
        let response = stack
            .http
            .post(stack.command_url("/deliveries"))
            .bearer_auth(DISPATCHER)
            .header("Idempotency-Key", "metrics-create-1")
            .json(&json!({
                "delivery_id": Uuid::from_u128(20),
                "order_ref": "order-20", "customer_id": "customer-1",
                "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
                "dropoff": {"line": "Elm St 9", "lat": 52.51, "lon": 13.39},
            }))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 201);
        let replayed = response.headers().get("idempotency-replayed");
        assert_eq!(
            replayed.map_or("false", |v| v.to_str().unwrap_or("?")),
            expected_replay
        );
    }
    // A body that is not JSON: invalid.
    let (status, _) = stack
        .command(
            &format!("/deliveries/{theirs}/assign"),
            DISPATCHER,
            Some(json!("not an object")),
        )
        .await;
    assert_eq!(status, 422);

    let after = Scrape::get(&stack.http, &url).await;
    let walked = WALKED as f64;
    let expected = [
        ("create", "accepted", walked + 2.0),
        ("assign", "accepted", walked + 1.0),
        ("pickup", "accepted", walked),
        ("complete", "accepted", walked),
        ("cancel", "conflict", 1.0),
        ("pickup", "refused", 1.0),
        ("create", "replayed", 1.0),
        ("assign", "invalid", 1.0),
        ("cancel", "accepted", 0.0),
    ];
    for (command, outcome, count) in expected {
        assert_eq!(
            grew(&before, &after, COMMANDS, command, outcome),
            count,
            "{command} {outcome}"
        );
        let timed = format!("{COMMAND_DURATION}_count");
        assert_eq!(
            grew(&before, &after, &timed, command, outcome),
            count,
            "{command} {outcome} timed"
        );
    }
    // Every command had its line from the start, at 0 if nothing happened.
    assert!(
        after
            .value(COMMANDS, &[("command", "cancel"), ("outcome", "failed")])
            .is_some()
    );
    // No label carries a delivery id.
    for sample in after.matching(COMMANDS, &[]) {
        assert!(
            !sample
                .labels
                .values()
                .any(|v| v.contains('-') && v.len() > 30),
            "{sample:?}"
        );
    }
    stack.shutdown().await;
}
