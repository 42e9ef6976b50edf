//! Applying batches to a real read database (fresh and migrated per test): the writes, the
//! stored offsets, and that nothing is applied twice.

mod common;

use common::*;
use projector::plan::Incoming;
use projector::{Subscription, apply_batch};
use sqlx::PgPool;

fn subscription() -> Subscription {
    Subscription {
        group: "test-projector".into(),
        topic: "delivery.events".into(),
    }
}

/// Everything the read model holds that a batch can change, as one comparable value.
async fn read_model(pool: &PgPool) -> serde_json::Value {
    sqlx::query_scalar(
        "select jsonb_build_object(
            'deliveries', (select jsonb_agg(to_jsonb(d) order by delivery_id) from deliveries d),
            'history', (select jsonb_agg(jsonb_build_array(delivery_id, version, kafka_offset)
                        order by delivery_id, version) from delivery_history),
            'riders', (select jsonb_agg(to_jsonb(r) order by rider_id) from riders r),
            'counts', (select jsonb_object_agg(status, deliveries) from status_counts),
            'parked', (select count(*) from parked_events),
            'poison', (select count(*) from poison_messages),
            'offsets', (select jsonb_object_agg(kafka_partition, next_offset) from consumer_offsets))",
    )
    .fetch_one(pool)
    .await
    .expect("read model query")
}

fn two_lifecycles() -> Vec<Incoming> {
    let mut messages = stream(
        id(1),
        vec![
            created(),
            assigned("rider-1"),
            picked_up("rider-1"),
            completed("rider-1"),
        ],
    );
    for (offset, mut message) in (4..).zip(stream(
        id(2),
        vec![created(), assigned("rider-1"), cancelled()],
    )) {
        message.offset = offset;
        messages.push(message);
    }
    messages
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_batch_writes_rows_history_counters_and_its_offsets_together(pool: PgPool) {
    let applied = apply_batch(&pool, &subscription(), &two_lifecycles())
        .await
        .expect("applied");
    assert_eq!(applied.applied, 7);
    let model = read_model(&pool).await;
    assert_eq!(
        model["counts"],
        serde_json::json!({"created": 0, "rider_assigned": 0, "picked_up": 0, "completed": 1, "cancelled": 1})
    );
    assert_eq!(model["offsets"], serde_json::json!({"0": 7}));
    assert_eq!(model["riders"][0]["active_deliveries"], 0);
    assert_eq!(model["riders"][0]["completed_deliveries"], 1);
    assert_eq!(model["deliveries"][0]["status"], "completed");
    assert_eq!(model["deliveries"][0]["version"], 4);
    assert_eq!(model["deliveries"][1]["status"], "cancelled");
    assert_eq!(model["deliveries"][1]["cancel_reason"], "customer asked");
    assert_eq!(model["history"].as_array().map(Vec::len), Some(7));
}

#[sqlx::test(migrator = "migrations::READ")]
async fn reading_the_same_offsets_again_changes_nothing(pool: PgPool) {
    let messages = two_lifecycles();
    apply_batch(&pool, &subscription(), &messages)
        .await
        .expect("applied");
    let before = read_model(&pool).await;
    // A restart or rebalance that re-reads from before the stored offsets.
    let again = apply_batch(&pool, &subscription(), &messages)
        .await
        .expect("applied");
    assert_eq!(again.already_consumed, messages.len());
    assert_eq!(again.applied, 0);
    assert_eq!(read_model(&pool).await, before);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn events_republished_by_the_relay_change_nothing(pool: PgPool) {
    let messages = two_lifecycles();
    apply_batch(&pool, &subscription(), &messages)
        .await
        .expect("applied");
    let before = read_model(&pool).await;
    // The relay crashed between publish and mark: the same events again, at new offsets.
    let republished: Vec<Incoming> = messages
        .into_iter()
        .map(|mut m| {
            m.offset += 100;
            m
        })
        .collect();
    let again = apply_batch(&pool, &subscription(), &republished)
        .await
        .expect("applied");
    assert_eq!(again.duplicates, 7);
    assert_eq!(again.applied, 0);
    let after = read_model(&pool).await;
    assert_eq!(after["offsets"], serde_json::json!({"0": 107}));
    for table in [
        "deliveries",
        "history",
        "riders",
        "counts",
        "parked",
        "poison",
    ] {
        assert_eq!(after[table], before[table], "{table} changed");
    }
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_gap_is_parked_in_the_database_and_applied_when_filled(pool: PgPool) {
    let first = message(0, &envelope(id(1), 1, created()));
    let third = message(1, &envelope(id(1), 3, picked_up("rider-1")));
    let applied = apply_batch(&pool, &subscription(), &[first, third])
        .await
        .expect("applied");
    assert_eq!((applied.applied, applied.parked), (1, 1));
    let parked: Vec<(i64, i64)> =
        sqlx::query_as("select version, applied_version from parked_events")
            .fetch_all(&pool)
            .await
            .expect("parked rows");
    assert_eq!(parked, [(3, 1)]);

    let second = message(2, &envelope(id(1), 2, assigned("rider-1")));
    let applied = apply_batch(&pool, &subscription(), &[second])
        .await
        .expect("applied");
    assert_eq!(applied.applied, 2);
    let model = read_model(&pool).await;
    assert_eq!(model["parked"], 0);
    assert_eq!(model["deliveries"][0]["status"], "picked_up");
    assert_eq!(
        model["history"],
        serde_json::json!([
            [id(1).as_uuid(), 1, 0],
            [id(1).as_uuid(), 2, 2],
            [id(1).as_uuid(), 3, 1]
        ])
    );
    assert_eq!(model["counts"]["picked_up"], 1);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn poison_is_recorded_and_the_offset_moves_past_it(pool: PgPool) {
    let bad = Incoming {
        partition: 2,
        offset: 5,
        key: Some(b"some-key".to_vec()),
        payload: Some(b"{not json".to_vec()),
    };
    let applied = apply_batch(&pool, &subscription(), &[bad])
        .await
        .expect("applied");
    assert_eq!(applied.poison, 1);
    let (key, error): (Option<String>, String) =
        sqlx::query_as("select message_key, error from poison_messages where kafka_offset = 5")
            .fetch_one(&pool)
            .await
            .expect("poison row");
    assert_eq!(key.as_deref(), Some("some-key"));
    assert!(error.contains("not an event envelope"), "{error}");
    assert_eq!(
        read_model(&pool).await["offsets"],
        serde_json::json!({"2": 6})
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn each_history_row_keeps_the_hash_its_event_was_published_with(pool: PgPool) {
    let events = chained(id(1), vec![created(), assigned("rider-1")]);
    let mut messages: Vec<Incoming> = (0..).zip(&events).map(|(o, e)| message(o, e)).collect();
    // A message from before the event store had hashes.
    messages.extend(stream(id(2), vec![created()]).into_iter().map(|mut m| {
        m.offset = 2;
        m
    }));
    apply_batch(&pool, &subscription(), &messages)
        .await
        .expect("applied");
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("select hash from delivery_history order by delivery_id, version")
            .fetch_all(&pool)
            .await
            .expect("history");
    assert_eq!(
        stored,
        [events[0].hash.clone(), events[1].hash.clone(), None]
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rider_freed_in_a_later_batch_counts_down(pool: PgPool) {
    let messages = stream(
        id(1),
        vec![
            created(),
            assigned("rider-1"),
            picked_up("rider-1"),
            completed("rider-1"),
        ],
    );
    let (first, second) = messages.split_at(2);
    apply_batch(&pool, &subscription(), first)
        .await
        .expect("assigned");
    let riders = read_model(&pool).await["riders"].clone();
    assert_eq!(riders[0]["active_deliveries"], 1);
    apply_batch(&pool, &subscription(), second)
        .await
        .expect("completed");
    let riders = read_model(&pool).await["riders"].clone();
    assert_eq!(riders[0]["active_deliveries"], 0);
    assert_eq!(riders[0]["completed_deliveries"], 1);
}
