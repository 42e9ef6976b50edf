//! The event store on its own, against a real Postgres: atomic appends, faithful loads, and a
//! hash chain that shows stored events changed or removed behind the triggers' back.

use chrono::Utc;
use command_api::store::{self, Causation, StoreError};
use domain::fixtures::{as_rider, assign, create, dispatcher, id, pick_up, t};
use domain::{ChainError, Delivery, DeliveryId, verify_chain};
use e2e::tamper;
use sqlx::PgPool;
use uuid::Uuid;

fn two_events(delivery_id: DeliveryId) -> Vec<domain::Event> {
    let created = Delivery::default()
        .decide(create(delivery_id), &dispatcher(), t(0))
        .expect("create is allowed");
    let delivery = Delivery::replay(&created).expect("valid history");
    let assigned = delivery
        .decide(assign("rider-1"), &dispatcher(), t(0))
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
    let delivery_id = id(42);
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
    let delivery_id = id(43);
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

/// Three events in two commands: the second append continues the chain the first one left.
async fn three_events_in_two_appends(pool: &PgPool, delivery_id: DeliveryId) {
    let first = two_events(delivery_id);
    let mut tx = pool.begin().await.expect("begin");
    store::append(&mut tx, 0, &first, causation())
        .await
        .expect("append");
    tx.commit().await.expect("commit");

    let mut tx = pool.begin().await.expect("begin");
    let history = store::load(&mut tx, delivery_id).await.expect("load");
    let facts: Vec<_> = history
        .iter()
        .map(|envelope| envelope.decode().expect("decodes"))
        .collect();
    let delivery = Delivery::replay(&facts).expect("valid history");
    let picked_up = delivery
        .decide(pick_up(), &as_rider("rider-1"), Utc::now())
        .expect("pick up is allowed");
    store::append_after(&mut tx, &store::Head::of(&history), &picked_up, causation())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
}

async fn load(pool: &PgPool, delivery_id: DeliveryId) -> Vec<domain::EventEnvelope> {
    let mut conn = pool.acquire().await.expect("connection");
    store::load(&mut conn, delivery_id).await.expect("load")
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn appended_events_carry_an_intact_hash_chain_published_with_them(pool: PgPool) {
    let delivery_id = id(44);
    three_events_in_two_appends(&pool, delivery_id).await;

    let loaded = load(&pool, delivery_id).await;
    assert_eq!(loaded.len(), 3);
    assert!(loaded.iter().all(|envelope| envelope.hash.is_some()));
    assert_eq!(verify_chain(&loaded), Ok(()));

    // The outbox publishes each event with the hash the store holds.
    let published: Vec<sqlx::types::Json<domain::EventEnvelope>> =
        sqlx::query_scalar("select payload from outbox order by position")
            .fetch_all(&pool)
            .await
            .expect("outbox");
    let published: Vec<_> = published.into_iter().map(|json| json.0).collect();
    assert_eq!(
        published, loaded,
        "the published envelopes are the stored ones"
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_changed_stored_event_breaks_the_chain_at_its_version(pool: PgPool) {
    let delivery_id = id(45);
    three_events_in_two_appends(&pool, delivery_id).await;

    // The database refuses the change as long as the trigger is on.
    let refused = sqlx::query("update events set payload = '{}' where version = 2")
        .execute(&pool)
        .await;
    assert!(refused.is_err());

    tamper(
        &pool,
        "update events set payload = jsonb_set(payload, '{rider_id}', '\"rider-9\"') \
         where version = 2",
    )
    .await;
    assert_eq!(
        verify_chain(&load(&pool, delivery_id).await),
        Err(ChainError::Changed { version: 2 })
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_changed_actor_or_time_breaks_the_chain(pool: PgPool) {
    let delivery_id = id(46);
    three_events_in_two_appends(&pool, delivery_id).await;
    tamper(
        &pool,
        "update events set metadata = jsonb_set(metadata, '{actor,id}', '\"desk-2\"') \
         where version = 1",
    )
    .await;
    assert_eq!(
        verify_chain(&load(&pool, delivery_id).await),
        Err(ChainError::Changed { version: 1 })
    );

    let delivery_id = id(47);
    three_events_in_two_appends(&pool, delivery_id).await;
    tamper(
        &pool,
        "update events set occurred_at = occurred_at - interval '1 minute' \
         where delivery_id = '00000000-0000-0000-0000-00000000002f' and version = 3",
    )
    .await;
    assert_eq!(
        verify_chain(&load(&pool, delivery_id).await),
        Err(ChainError::Changed { version: 3 })
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_removed_stored_event_is_a_missing_version(pool: PgPool) {
    let delivery_id = id(48);
    three_events_in_two_appends(&pool, delivery_id).await;
    tamper(&pool, "delete from events where version = 2").await;
    assert_eq!(
        verify_chain(&load(&pool, delivery_id).await),
        Err(ChainError::Missing { version: 2 })
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_removed_hash_is_reported(pool: PgPool) {
    let delivery_id = id(49);
    three_events_in_two_appends(&pool, delivery_id).await;
    tamper(&pool, "update events set hash = null where version = 3").await;
    assert_eq!(
        verify_chain(&load(&pool, delivery_id).await),
        Err(ChainError::Unhashed { version: 3 })
    );
}
