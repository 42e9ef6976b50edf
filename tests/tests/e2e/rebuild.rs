//! `projector rebuild` on the running stack: the query API keeps answering, correctly, while a
//! damaged read model is rebuilt under live traffic, and the switched-in tables are exact.

use crate::projector_failures::traffic;
use e2e::{TOPIC, TestStack};
use projector::catalog;
use projector::rebuild::{RebuildConfig, rebuild};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_keep_answering_while_a_damaged_read_model_is_rebuilt_under_traffic() {
    let stack = TestStack::start(4).await;
    traffic(&stack, 1, 60).await;
    stack.wait_for_projection(Duration::from_secs(60)).await;
    // Delivery 4 (cancelled) is read throughout; delivery 1 (assigned) is deleted by the damage.
    let (status, watched) = stack
        .query(&format!("/deliveries/{}", Uuid::from_u128(4)))
        .await;
    assert_eq!(status, 200, "{watched}");
    sqlx::raw_sql(&format!(
        "delete from deliveries where delivery_id = '{}';
         update status_counts set deliveries = deliveries + 5;
         delete from delivery_history where version > 3;",
        Uuid::from_u128(1)
    ))
    .execute(&stack.read)
    .await
    .expect("damage");

    let done = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let readers = async {
        while !done.load(Ordering::Relaxed) {
            for path in [
                format!("/deliveries/{}", Uuid::from_u128(4)),
                format!("/deliveries/{}/history", Uuid::from_u128(4)),
                "/stats".to_owned(),
                "/deliveries?limit=20".to_owned(),
            ] {
                let (status, body) = stack.query(&path).await;
                assert_eq!(status, 200, "{path}: {body}");
                if path.ends_with(&Uuid::from_u128(4).to_string()) {
                    assert_eq!(body, watched, "{path}");
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let config = RebuildConfig {
        brokers: stack.broker.address.clone(),
        consumer_settings: Default::default(),
        topic: TOPIC.into(),
        live_group: e2e::PROJECTOR_GROUP.into(),
        projections: catalog::ALL.to_vec(),
        keep_old: false,
        from_scratch: false,
        batch_size: 20,
        lanes: 2,
        progress_bar: false,
        switch_timeout: Duration::from_secs(10),
        allow_truncated_history: false,
    };
    let never = CancellationToken::new();
    let rebuilding = async {
        let (report, ()) = tokio::join!(
            rebuild(&stack.read, &config, &never),
            traffic(&stack, 100, 30),
        );
        done.store(true, Ordering::Relaxed);
        report
    };
    let (report, ()) = tokio::join!(rebuilding, readers);
    let report = report.expect("the rebuild runs");
    assert!(report.switched, "{report}");
    assert!(answered.load(Ordering::Relaxed) > 0);

    // The query API's open connections read the switched-in tables: the deleted row is back.
    let (status, restored) = stack
        .query(&format!("/deliveries/{}", Uuid::from_u128(1)))
        .await;
    assert_eq!(
        (status, restored["status"].as_str()),
        (200, Some("rider_assigned"))
    );
    stack.wait_for_projection(Duration::from_secs(60)).await;
    stack.assert_read_model_matches_event_store().await;
    stack.shutdown().await;
}
