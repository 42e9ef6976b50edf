//! The event store on its own, against a real Postgres.

use chrono::{TimeZone, Utc};
use command_api::store::{self, Causation, StoreError};
use domain::{Actor, Address, Command, CustomerId, Delivery, DeliveryId, OrderRef, RiderId, Role};
use sqlx::PgPool;
use uuid::Uuid;

fn two_events(delivery_id: DeliveryId) -> Vec<domain::Event> {
    let dispatcher = Actor::new(Role::Dispatcher, "desk-1");
    let at = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid time");
    let address = Address::new("Main St 1", 52.5, 13.4).expect("valid address");
    let create = Command::Create {
        delivery_id,
        order_ref: OrderRef::parse("order-1").expect("valid"),
        customer_id: CustomerId::parse("customer-1").expect("valid"),
        pickup: address.clone(),
        dropoff: address,
    };
    let created = Delivery::default()
        .decide(create, &dispatcher, at)
        .expect("create is allowed");
    let delivery = Delivery::replay(&created).expect("valid history");
    let assign = Command::AssignRider {
        rider_id: RiderId::parse("rider-1").expect("valid"),
    };
    let assigned = delivery
        .decide(assign, &dispatcher, at)
        .expect("assign is allowed");
    created.into_iter().chain(assigned).collect()
}

fn causation() -> Causation {
    Causation {
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
    }
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_append_that_fails_part_way_commits_neither_events_nor_outbox_records(pool: PgPool) {
    let delivery_id = DeliveryId::from_uuid(Uuid::from_u128(42));
    // Someone else already holds version 2: our second event must collide with it.
    sqlx::query(
        "insert into events (event_id, delivery_id, version, event_type, schema_version, payload, metadata, occurred_at) \
         values ($1, $2, 2, 'delivery.rider_assigned', 1, '{}', '{}', now())",
    )
    .bind(Uuid::from_u128(7))
    .bind(delivery_id.as_uuid())
    .execute(&pool)
    .await
    .expect("seed row");

    let mut tx = pool.begin().await.expect("begin");
    let result = store::append(&mut tx, 0, &two_events(delivery_id), causation()).await;
    assert!(matches!(
        result,
        Err(StoreError::VersionConflict { version: 2 })
    ));
    drop(tx); // rolled back

    let (events, outbox): (i64, i64) =
        sqlx::query_as("select (select count(*) from events), (select count(*) from outbox)")
            .fetch_one(&pool)
            .await
            .expect("counts");
    assert_eq!((events, outbox), (1, 0), "only the seeded row remains");
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn appended_events_load_back_as_the_same_facts_in_version_order(pool: PgPool) {
    let delivery_id = DeliveryId::from_uuid(Uuid::from_u128(43));
    let events = two_events(delivery_id);
    let mut tx = pool.begin().await.expect("begin");
    let appended = store::append(&mut tx, 0, &events, causation())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    assert_eq!(
        appended.iter().map(|a| a.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(appended[0].global_position < appended[1].global_position);

    let mut conn = pool.acquire().await.expect("connection");
    let loaded = store::load(&mut conn, delivery_id).await.expect("load");
    let facts: Vec<_> = loaded
        .iter()
        .map(|envelope| envelope.decode().expect("decodes"))
        .collect();
    assert_eq!(facts, events);
    assert_eq!(loaded[1].correlation_id, Uuid::from_u128(1));
    assert_eq!(loaded[1].causation_id, Uuid::from_u128(2));
}
