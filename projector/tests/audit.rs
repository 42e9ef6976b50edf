//! `audit verify` against real databases: a fresh event store (sqlx::test) and a fresh read
//! database per test, filled the way the system fills them (events as the command API stores
//! them, the read model by the projector's own `apply_batch`). Then one kind of damage each,
//! and the report names it. The topic is an in-memory `TopicIndex`, except in the last test,
//! which reads a real broker.
//!
//! (Over 400 lines: one test per kind of damage the audit must name, with one shared set-up.)

mod common;

use common::*;
use domain::EventEnvelope;
use e2e::{Broker, FreshDatabase, tamper};
use projector::audit::{self, AuditConfig, Check, Report, TopicIndex};
use projector::plan::Incoming;
use projector::{Subscription, apply_batch};
use sqlx::PgPool;
use std::time::Duration;

const TOPIC: &str = "delivery.events";

/// A fresh, migrated read database beside the test's event store.
async fn read_database() -> FreshDatabase {
    FreshDatabase::create("audit_read", &migrations::READ).await
}

/// Delivery 1 completed (4 events), delivery 2 cancelled (2 events), each chain sealed.
fn histories() -> Vec<EventEnvelope> {
    let mut events = chained(
        id(1),
        vec![
            created(),
            assigned("rider-1"),
            picked_up("rider-1"),
            completed("rider-1"),
        ],
    );
    events.extend(chained(id(2), vec![created(), cancelled()]));
    events
}

/// Stores events as the command API does (the envelope's fields in the event store's columns).
async fn store(write: &PgPool, events: &[EventEnvelope]) {
    for event in events {
        sqlx::query(
            "insert into events (event_id, delivery_id, version, event_type, schema_version, \
             payload, metadata, occurred_at, recorded_at, hash) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(event.event_id)
        .bind(event.delivery_id.as_uuid())
        .bind(event.version)
        .bind(&event.event_type)
        .bind(event.schema_version)
        .bind(&event.data)
        .bind(sqlx::types::Json(event.metadata()))
        .bind(event.occurred_at)
        .bind(event.recorded_at)
        .bind(&event.hash)
        .execute(write)
        .await
        .expect("store event");
    }
}

/// The events as topic messages, one partition, offsets from `first`.
fn as_messages(events: &[EventEnvelope], first: i64) -> Vec<Incoming> {
    (first..).zip(events).map(|(o, e)| message(o, e)).collect()
}

/// Builds the read model from the messages with the projector itself.
async fn project(read: &PgPool, messages: &[Incoming]) {
    let subscription = Subscription {
        group: "test-projector".into(),
        topic: TOPIC.into(),
    };
    apply_batch(read, &subscription, messages)
        .await
        .expect("applied");
}

fn topic_of(messages: &[Incoming]) -> TopicIndex {
    let mut topic = TopicIndex::new(None);
    for m in messages {
        topic.add(
            m.partition,
            m.offset,
            m.key.as_deref(),
            m.payload.as_deref(),
        );
    }
    topic
}

/// A consistent system: the store, the read model and the topic hold the same histories.
async fn consistent(write: &PgPool) -> (FreshDatabase, Vec<Incoming>) {
    let events = histories();
    store(write, &events).await;
    let read = read_database().await;
    let messages = as_messages(&events, 0);
    project(&read.pool, &messages).await;
    (read, messages)
}

async fn audit(write: &PgPool, read: &FreshDatabase, messages: &[Incoming]) -> Report {
    audit::verify_against(write, &read.pool, topic_of(messages), None)
        .await
        .expect("the audit runs")
}

/// The problems as (check, delivery, version), the shape the tests assert on.
fn found(report: &Report) -> Vec<(Check, u128, Option<i64>)> {
    report
        .problems
        .iter()
        .map(|p| {
            let delivery = p.delivery_id.map_or(0, |id| id.as_uuid().as_u128());
            (p.check, delivery, p.version)
        })
        .collect()
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_consistent_system_passes(write: PgPool) {
    let (read, mut messages) = consistent(&write).await;
    // The relay retried: the first two events were published twice, identically.
    let again = as_messages(&histories()[..2], 6);
    messages.extend(again);

    let report = audit(&write, &read, &messages).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (
            report.deliveries,
            report.events,
            report.history_rows,
            report.topic_messages,
            report.topic_duplicates
        ),
        (2, 6, 6, 8, 2)
    );
    assert!(
        report.to_string().ends_with(
            "audited 2 deliveries: 6 stored events, 8 topic messages (2 identical duplicates), \
             6 history rows\nno problems: event store, topic and read model agree\n"
        ),
        "{report}"
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_tampered_event_store_row_breaks_the_chain_and_disagrees_with_the_copies(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    tamper(
        &write,
        "update events set payload = jsonb_set(payload, '{rider_id}', '\"rider-9\"') \
         where delivery_id = '00000000-0000-0000-0000-000000000001' and version = 2",
    )
    .await;

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [
            (Check::Chain, 1, Some(2)),
            (Check::Topic, 1, Some(2)),
            (Check::History, 1, Some(2)),
            // The folded state now names rider-9.
            (Check::State, 1, Some(4)),
        ]
    );
    let printed = report.to_string();
    assert!(
        printed.starts_with(
            "chain   delivery 00000000-0000-0000-0000-000000000001 version 2: \
             version 2 was changed: it does not match its stored hash\n\
             topic   delivery 00000000-0000-0000-0000-000000000001 version 2: \
             the topic's copy (partition 0 offset 1) differs: \
             data (store: {\"rider_id\":\"rider-9\"}, topic: {\"rider_id\":\"rider-1\"})\n"
        ),
        "{printed}"
    );
    assert!(
        printed.ends_with("4 problems (chain 1, topic 1, history 1, state 1)\n"),
        "{printed}"
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_removed_event_store_row_is_a_missing_version(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    tamper(
        &write,
        "delete from events where delivery_id = '00000000-0000-0000-0000-000000000001' \
         and version = 3",
    )
    .await;

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [
            (Check::Chain, 1, Some(3)),
            (Check::Topic, 1, Some(3)),
            (Check::History, 1, Some(3)),
            // Completing straight after assignment cannot have happened.
            (Check::State, 1, None),
        ]
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_removed_last_event_leaves_an_intact_chain_but_the_copies_show_it(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    tamper(
        &write,
        "delete from events where delivery_id = '00000000-0000-0000-0000-000000000002' \
         and version = 2",
    )
    .await;

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [
            (Check::Topic, 2, Some(2)),
            (Check::History, 2, Some(2)),
            // The read model says cancelled at version 2; the store's events fold to version 1.
            (Check::State, 2, Some(1)),
        ]
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_chain_rewritten_from_the_change_onward_is_caught_by_the_copies_hashes(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    // The forger changes version 1 of delivery 2 and recomputes every later hash.
    let mut forged = chained(id(2), vec![created(), cancelled()]);
    forged[0].actor.id = "desk-9".into();
    seal(&mut forged);
    tamper(
        &write,
        "delete from events where delivery_id = '00000000-0000-0000-0000-000000000002'",
    )
    .await;
    store(&write, &forged).await;

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [
            (Check::Topic, 2, Some(1)),
            (Check::Topic, 2, Some(2)),
            (Check::History, 2, Some(1)),
            (Check::History, 2, Some(2)),
        ]
    );
    // Version 2 is unchanged but for its hash: only the hash gives the rewrite away there.
    assert!(
        report.problems[1]
            .detail
            .contains("differs: hash (store: \""),
        "{report}"
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_missing_history_row_is_reported(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    sqlx::query(
        "delete from delivery_history \
         where delivery_id = '00000000-0000-0000-0000-000000000001' and version = 3",
    )
    .execute(&read.pool)
    .await
    .expect("delete");

    let report = audit(&write, &read, &messages).await;
    assert_eq!(found(&report), [(Check::History, 1, Some(3))]);
    assert!(
        report.problems[0].detail == "not in delivery_history",
        "{report}"
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_changed_history_row_is_reported_with_what_differs(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    sqlx::query(
        "update delivery_history set actor_id = 'desk-9', occurred_at = occurred_at + interval '1 second' \
         where delivery_id = '00000000-0000-0000-0000-000000000002' and version = 1",
    )
    .execute(&read.pool)
    .await
    .expect("update");

    let report = audit(&write, &read, &messages).await;
    assert_eq!(found(&report), [(Check::History, 2, Some(1))]);
    assert_eq!(
        report.problems[0].detail,
        "delivery_history differs: actor_id (store: \"desk-1\", read model: \"desk-9\"), \
         occurred_at (store: \"2026-11-23T12:01:00Z\", read model: \"2026-11-23T12:01:01Z\")"
    );
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_projected_state_that_disagrees_with_the_events_is_reported(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    sqlx::query(
        "update deliveries set status = 'picked_up', completed_at = null \
         where delivery_id = '00000000-0000-0000-0000-000000000001'",
    )
    .execute(&read.pool)
    .await
    .expect("update");
    sqlx::query(
        "delete from deliveries where delivery_id = '00000000-0000-0000-0000-000000000002'",
    )
    .execute(&read.pool)
    .await
    .expect("delete");

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [(Check::State, 1, Some(4)), (Check::State, 2, Some(2))]
    );
    assert_eq!(
        report.problems[0].detail,
        "deliveries differs from the folded events: \
         completed_at (events: \"2026-11-23T12:04:00Z\", read model: null), \
         status (events: \"completed\", read model: \"picked_up\")"
    );
    assert_eq!(report.problems[1].detail, "not in deliveries");
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn missing_changed_and_conflicting_topic_messages_are_reported(write: PgPool) {
    let (read, mut messages) = consistent(&write).await;
    // Delivery 2's cancellation never reached the topic.
    messages.retain(|m| m.offset != 5);
    // A second, different copy of delivery 1's version 3.
    let mut conflicting = histories()[2].clone();
    conflicting.recorded_at = t(59);
    messages.push(message(6, &conflicting));
    // A message that is no event at all.
    messages.push(Incoming {
        partition: 1,
        offset: 0,
        key: None,
        payload: Some(b"not json".to_vec()),
    });

    let report = audit(&write, &read, &messages).await;
    assert_eq!(
        found(&report),
        [
            (Check::Topic, 0, None),
            (Check::Topic, 1, Some(3)),
            (Check::Topic, 2, Some(2)),
        ]
    );
    assert!(
        report.problems[1]
            .detail
            .starts_with("conflicting copies on the topic: first at partition 0 offset 2, a later copy at partition 0 offset 6 differs: recorded_at"),
        "{report}"
    );
    assert_eq!(report.problems[2].detail, "not on the topic");
    read.remove().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn one_delivery_can_be_audited_alone(write: PgPool) {
    let (read, messages) = consistent(&write).await;
    sqlx::query(
        "delete from delivery_history where delivery_id = '00000000-0000-0000-0000-000000000001'",
    )
    .execute(&read.pool)
    .await
    .expect("delete");
    let only = Some(id(2));
    let mut topic = TopicIndex::new(only);
    for m in &messages {
        topic.add(
            m.partition,
            m.offset,
            m.key.as_deref(),
            m.payload.as_deref(),
        );
    }
    let report = audit::verify_against(&write, &read.pool, topic, only)
        .await
        .expect("the audit runs");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.deliveries, report.events), (1, 2));

    let report = audit(&write, &read, &messages).await;
    assert_eq!(report.count(Check::History), 4, "{report}");
    read.remove().await;
}

// ---------------------------------------------------------------------------------------------
// The real broker
// ---------------------------------------------------------------------------------------------

/// The broker with the event topic (2 partitions), as the audit reads it.
trait AuditBroker {
    fn audit_config(&self) -> AuditConfig;
}

impl AuditBroker for Broker {
    fn audit_config(&self) -> AuditConfig {
        AuditConfig {
            brokers: self.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            delivery: None,
            stall_timeout: Duration::from_secs(20),
        }
    }
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_topic_is_read_from_a_real_broker_and_its_damage_reported(write: PgPool) {
    let broker = Broker::start_with(TOPIC, 2).await;
    let publisher = broker.publisher(TOPIC);
    let read = read_database().await;

    // Delivery 1 everywhere, its first event published twice (a relay retry).
    let first: Vec<EventEnvelope> = histories().into_iter().take(4).collect();
    store(&write, &first).await;
    project(&read.pool, &as_messages(&first, 0)).await;
    publisher.publish(&first).await;
    publisher.publish(&first[..1]).await;

    let report = audit::verify(&write, &read.pool, &broker.audit_config())
        .await
        .expect("the audit runs");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.topic_messages, report.topic_duplicates), (5, 1));

    // Delivery 2 stored and projected, but published changed (version 1) and incomplete
    // (version 2 never sent); and a conflicting copy of delivery 1's version 3.
    let second: Vec<EventEnvelope> = histories().into_iter().skip(4).collect();
    store(&write, &second).await;
    project(&read.pool, &as_messages(&second, 4)).await;
    let mut changed = second[0].clone();
    changed.data["order_ref"] = "order-2".into();
    let mut conflicting = first[2].clone();
    conflicting.actor.id = "desk-9".into();
    publisher.publish(&[changed, conflicting]).await;

    let report = audit::verify(&write, &read.pool, &broker.audit_config())
        .await
        .expect("the audit runs");
    assert_eq!(
        found(&report),
        [
            (Check::Topic, 1, Some(3)),
            (Check::Topic, 2, Some(1)),
            (Check::Topic, 2, Some(2)),
        ],
        "{report}"
    );
    assert!(
        report.problems[1]
            .detail
            .contains("differs: data (store: {\"customer_id\""),
        "{report}"
    );
    assert_eq!(report.topic_messages, 7);

    // One delivery alone: the topic is still read whole, only delivery 1 is compared.
    let config = AuditConfig {
        delivery: Some(id(1)),
        ..broker.audit_config()
    };
    let report = audit::verify(&write, &read.pool, &config)
        .await
        .expect("the audit runs");
    assert_eq!(found(&report), [(Check::Topic, 1, Some(3))], "{report}");
    read.remove().await;
}
