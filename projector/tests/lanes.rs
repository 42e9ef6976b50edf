//! The live projector's lanes (`projector::consumer`, `lanes`) against a real broker: batches
//! of different partitions apply at once, so a partition whose batch waits holds up no other,
//! while a delivery's own events still apply one after the other, in order.

mod common;

use common::*;
use domain::DeliveryId;
use e2e::{Publisher, eventually};
use projector::{Progress, ProjectorConfig};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "delivery.events";
const GROUP: &str = "laned-projector";
const WAIT: Duration = Duration::from_secs(60);

async fn version_of(pool: &PgPool, delivery: DeliveryId) -> Option<i64> {
    sqlx::query_scalar("select version from deliveries where delivery_id = $1")
        .bind(delivery.as_uuid())
        .fetch_optional(pool)
        .await
        .expect("deliveries")
}

/// Creates deliveries until each of `partitions` partitions has one; returns one per partition.
async fn one_delivery_per_partition(
    publisher: &Publisher,
    partitions: usize,
) -> BTreeMap<i32, DeliveryId> {
    let mut on = BTreeMap::new();
    for n in 1..=256 {
        let partition = publisher.publish_one(&envelope(id(n), 1, created())).await;
        on.entry(partition).or_insert(id(n));
        if on.len() == partitions {
            return on;
        }
    }
    panic!("256 keys did not cover {partitions} partitions");
}

/// Whether a session of this database waits for a row lock: the projector's batch does.
async fn a_batch_waits_for_a_lock(pool: &PgPool) -> Option<()> {
    let waiting: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_stat_activity \
         where datname = current_database() and wait_event_type = 'Lock')",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    waiting.then_some(())
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_partition_whose_batch_waits_holds_up_no_other_and_keeps_its_order(pool: PgPool) {
    let (broker, publisher, pool) = on_broker(&pool, TOPIC, 2, 6).await;
    let on = one_delivery_per_partition(&publisher, 2).await;
    let (blocked, free) = (on[&0], on[&1]);
    let shutdown = CancellationToken::new();
    let config = ProjectorConfig {
        brokers: broker.address.clone(),
        consumer_settings: Default::default(),
        topic: TOPIC.into(),
        group: GROUP.into(),
        batch_size: 50,
        lanes: 2,
    };
    let running = tokio::spawn(projector::run(
        pool.clone(),
        config,
        Arc::new(Progress::default()),
        shutdown.clone(),
    ));
    for delivery in [blocked, free] {
        eventually(WAIT, "both deliveries projected", || async {
            version_of(&pool, delivery).await.map(|_| ())
        })
        .await;
    }

    // Hold the row of one delivery: the next batch of its partition waits for it.
    let mut hold = pool.begin().await.expect("transaction");
    sqlx::query("select 1 from deliveries where delivery_id = $1 for update")
        .bind(blocked.as_uuid())
        .execute(&mut *hold)
        .await
        .expect("row lock");
    publisher
        .publish(&[
            envelope(blocked, 2, assigned("rider-1")),
            envelope(blocked, 3, picked_up("rider-1")),
        ])
        .await;
    eventually(WAIT, "the blocked partition's batch waits", || {
        a_batch_waits_for_a_lock(&pool)
    })
    .await;

    // The other partition's delivery goes on meanwhile: with one lane it would wait too.
    publisher
        .publish(&[envelope(free, 2, assigned("rider-2"))])
        .await;
    eventually(WAIT, "the other partition's event applied", || async {
        (version_of(&pool, free).await == Some(2)).then_some(())
    })
    .await;
    assert_eq!(version_of(&pool, blocked).await, Some(1), "still held");

    hold.rollback().await.expect("release");
    eventually(
        WAIT,
        "the held delivery's events applied, in order",
        || async { (version_of(&pool, blocked).await == Some(3)).then_some(()) },
    )
    .await;
    let history: Vec<i64> = sqlx::query_scalar(
        "select version from delivery_history where delivery_id = $1 order by version",
    )
    .bind(blocked.as_uuid())
    .fetch_all(&pool)
    .await
    .expect("history");
    assert_eq!(history, [1, 2, 3]);
    let parked: i64 = sqlx::query_scalar("select count(*) from parked_events")
        .fetch_one(&pool)
        .await
        .expect("parked");
    assert_eq!(parked, 0, "no event arrived before the one it follows");

    shutdown.cancel();
    running.await.expect("joined").expect("projector ran");
}
