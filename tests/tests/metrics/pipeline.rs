//! The relay's and the projector's listeners: their gauges follow the outbox backlog, the
//! leader lock, the projector's lag and the stuck events, as the parts are stopped and started.

use crate::{scrape_until, serial};
use command_api::relay::monitor::{LEADER, OLDEST_UNPUBLISHED, PUBLISHED, UNPUBLISHED};
use domain::fixtures::{assigned, chained, created, id};
use e2e::{Fate, Scrape, TOPIC, TestStack};
use projector::monitor::{EVENTS, LAG, OLDEST_PARKED, PARKED, POISON};
use std::time::Duration;
use uuid::Uuid;

fn lag(scrape: &Scrape, partition: &str) -> Option<f64> {
    scrape.value(LAG, &[("partition", partition)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_and_the_lag_grow_while_their_part_is_stopped_and_drain_after() {
    let _alone = serial().await;
    let mut stack = TestStack::start(2).await;
    let monitors = stack.start_monitors().await;
    for url in [&monitors.relay_url, &monitors.projector_url] {
        let health = stack.http.get(format!("{url}/health")).send().await;
        let health = health.expect("answers").text().await.expect("a body");
        assert_eq!(health, "ok");
    }
    let relay = format!("{}/metrics", monitors.relay_url);
    let projector = format!("{}/metrics", monitors.projector_url);
    let published_before = Scrape::get(&stack.http, &relay).await.sum(PUBLISHED, &[]);

    // Work flows: everything is published and applied, and the gauges say so.
    for n in 1..=2 {
        stack.walk(Uuid::from_u128(n), 1, Fate::Completed).await;
    }
    stack.wait_for_projection(crate::PATIENCE).await;
    scrape_until(
        &stack.http,
        &relay,
        "the relay to lead, nothing left",
        |s| s.value(LEADER, &[]) == Some(1.0) && s.value(UNPUBLISHED, &[]) == Some(0.0),
    )
    .await;
    scrape_until(&stack.http, &projector, "no lag on either partition", |s| {
        lag(s, "0") == Some(0.0) && lag(s, "1") == Some(0.0)
    })
    .await;

    // The relay stopped: three new rows wait in the outbox, and age.
    stack.stop_relay().await;
    for n in 11..=13 {
        stack.walk(Uuid::from_u128(n), 1, Fate::Created).await;
    }
    let waiting = scrape_until(&stack.http, &relay, "3 unpublished rows", |s| {
        s.value(UNPUBLISHED, &[]) == Some(3.0)
            && s.value(OLDEST_UNPUBLISHED, &[])
                .is_some_and(|age| age > 0.0)
    })
    .await;
    assert_eq!(
        waiting.value(LEADER, &[]),
        Some(0.0),
        "a stopped relay does not lead"
    );

    // The projector stopped, the relay back: the rows are published, and become lag.
    stack.stop_projectors().await;
    stack.start_relay();
    scrape_until(&stack.http, &relay, "the outbox drained by a leader", |s| {
        s.value(UNPUBLISHED, &[]) == Some(0.0)
            && s.value(OLDEST_UNPUBLISHED, &[]) == Some(0.0)
            && s.value(LEADER, &[]) == Some(1.0)
    })
    .await;
    let lagging = scrape_until(&stack.http, &projector, "a lag of 3", |s| {
        s.sum(LAG, &[]) == 3.0
    })
    .await;
    assert!(lagging.value(LAG, &[("partition", "0")]).is_some());

    // The projector back: it catches up and the lag is 0 again.
    stack.start_projector();
    scrape_until(&stack.http, &projector, "the lag back to 0", |s| {
        lag(s, "0") == Some(0.0) && lag(s, "1") == Some(0.0)
    })
    .await;
    // Every stored event was published once: 2 x 4 + 3.
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&stack.write)
        .await
        .expect("count");
    assert_eq!(events, 11);
    let published = Scrape::get(&stack.http, &relay).await.sum(PUBLISHED, &[]);
    assert_eq!(published - published_before, events as f64);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_and_poison_gauges_follow_stuck_events() {
    let _alone = serial().await;
    let mut stack = TestStack::start(1).await;
    let monitors = stack.start_monitors().await;
    let projector = format!("{}/metrics", monitors.projector_url);
    let before = Scrape::get(&stack.http, &projector).await;
    let counted = |scrape: &Scrape, outcome: &str| {
        scrape.sum(EVENTS, &[("outcome", outcome)]) - before.sum(EVENTS, &[("outcome", outcome)])
    };

    // Version 2 of a delivery before its version 1: parked.
    let events = chained(id(77), vec![created(), assigned("rider-1")]);
    let publisher = stack.broker.publisher(TOPIC);
    publisher.publish(&events[1..]).await;
    let parked = scrape_until(&stack.http, &projector, "one parked event", |s| {
        s.value(PARKED, &[]) == Some(1.0)
            && s.value(OLDEST_PARKED, &[]).is_some_and(|age| age > 0.0)
    })
    .await;
    assert_eq!(counted(&parked, "parked"), 1.0);

    // Its version 1 arrives: both apply, nothing is parked any more.
    publisher.publish(&events[..1]).await;
    let moved = scrape_until(&stack.http, &projector, "nothing parked", |s| {
        s.value(PARKED, &[]) == Some(0.0) && s.value(OLDEST_PARKED, &[]) == Some(0.0)
    })
    .await;
    assert_eq!(moved.value(POISON, &[]), Some(0.0));

    // A message that is not an event: poison, counted and shown until dealt with.
    publisher.send("not-a-delivery", b"not json").await;
    let poisoned = scrape_until(&stack.http, &projector, "one poison message", |s| {
        s.value(POISON, &[]) == Some(1.0)
    })
    .await;
    assert_eq!(counted(&poisoned, "poison"), 1.0);
    let applied = e2e::eventually(Duration::from_secs(10), "applied counted", || async {
        let s = Scrape::get(&stack.http, &projector).await;
        (counted(&s, "applied") >= 2.0).then_some(counted(&s, "applied"))
    })
    .await;
    assert_eq!(applied, 2.0, "the parked event and the one it waited for");
    stack.shutdown().await;
}
