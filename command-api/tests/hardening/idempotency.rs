//! Retried commands never fail: concurrent duplicates with one Idempotency-Key all get the
//! first attempt's outcome, a failed attempt leaves its key free, and keys expire.

use crate::support::*;
use axum::http::StatusCode;
use chrono::Utc;
use command_api::Limits;
use command_api::idempotency::purge_expired;
use command_api::store::{self, Causation};
use domain::{Actor, Command, Delivery, DeliveryId, RiderId, Role};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use uuid::Uuid;

const RACERS: usize = 24;

#[sqlx::test(migrator = "migrations::WRITE")]
async fn concurrent_duplicates_of_a_create_with_a_chosen_id_all_get_the_first_response(
    pool: PgPool,
) {
    let app = test_app(pool.clone(), Limits::default());
    let body = create_body(Some(DELIVERY));
    let key = [("idempotency-key", "create-1")];
    let replies = duplicates(&app, RACERS, "/deliveries", DISPATCHER, Some(body), &key).await;
    let first = assert_one_outcome(&replies, StatusCode::CREATED);
    assert_eq!(first["delivery_id"], DELIVERY);
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn concurrent_duplicates_of_a_create_without_an_id_create_one_delivery(pool: PgPool) {
    let app = test_app(pool.clone(), Limits::default());
    let key = [("idempotency-key", "create-without-id")];
    let body = Some(create_body(None));
    let replies = duplicates(&app, RACERS, "/deliveries", DISPATCHER, body, &key).await;
    let first = assert_one_outcome(&replies, StatusCode::CREATED);
    let stored: Vec<Uuid> = sqlx::query_scalar("select delivery_id from events")
        .fetch_all(&pool)
        .await
        .expect("events");
    assert_eq!(stored.len(), 1, "exactly one delivery is stored");
    assert_eq!(first["delivery_id"], json!(stored[0]));
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn concurrent_duplicates_of_every_transition_all_get_the_first_response(pool: PgPool) {
    let app = test_app(pool.clone(), Limits::default());
    for id in [DELIVERY, OTHER_DELIVERY] {
        let created = send(
            &app,
            "/deliveries",
            DISPATCHER,
            Some(&create_body(Some(id))),
            &[],
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let steps = [
        (
            "assign",
            DISPATCHER,
            Some(json!({"rider_id": "rider-1"})),
            DELIVERY,
            2,
        ),
        ("pickup", RIDER_1, None, DELIVERY, 3),
        ("complete", RIDER_1, None, DELIVERY, 4),
        (
            "cancel",
            DISPATCHER,
            Some(json!({"reason": "out of stock"})),
            OTHER_DELIVERY,
            2,
        ),
    ];
    for (action, token, body, delivery, version) in steps {
        let key = [("idempotency-key", action)];
        let replies = duplicates(&app, RACERS, &path(delivery, action), token, body, &key).await;
        let first = assert_one_outcome(&replies, StatusCode::OK);
        assert_eq!(first["version"], version, "{action}");
        assert_eq!(
            first["events"].as_array().map(Vec::len),
            Some(1),
            "{action}"
        );
    }
    // 2 creates + 4 transitions: one set of events per command, each with its outbox record.
    assert_eq!(count(&pool, "events").await, 6);
    assert_eq!(count(&pool, "outbox").await, 6);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_refusal_is_recorded_and_replayed_like_a_success(pool: PgPool) {
    let app = test_app(pool.clone(), Limits::default());
    send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(Some(DELIVERY))),
        &[],
    )
    .await;
    let key = [("idempotency-key", "complete-early")];
    let replies = duplicates(&app, RACERS, &path(DELIVERY, "complete"), ADMIN, None, &key).await;
    let problem = assert_one_outcome(&replies, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "invalid-transition");
    assert!(
        replies
            .iter()
            .all(|r| r.content_type == "application/problem+json")
    );
    // The verdict stands for the key even once the delivery could be completed.
    send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(&json!({"rider_id": "rider-1"})),
        &[],
    )
    .await;
    send(&app, &path(DELIVERY, "pickup"), RIDER_1, None, &[]).await;
    let retried = send(&app, &path(DELIVERY, "complete"), ADMIN, None, &key).await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::CONFLICT, true)
    );
    assert_eq!(retried.body, problem);
    assert_eq!(count(&pool, "events").await, 3);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_version_lost_to_a_racer_without_the_key_does_not_poison_the_key(pool: PgPool) {
    let app = test_app(pool.clone(), Limits::default());
    send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(Some(DELIVERY))),
        &[],
    )
    .await;
    // A writer without the key appends version 2 and holds its transaction open ...
    let delivery_id = DeliveryId::parse(DELIVERY).expect("id");
    let mut racer = pool.begin().await.expect("racer transaction");
    let history = store::load(&mut racer, delivery_id).await.expect("load");
    let facts: Vec<_> = history
        .iter()
        .map(|e| e.decode().expect("decodes"))
        .collect();
    let assign = Command::AssignRider {
        rider_id: RiderId::parse("rider-2").expect("rider"),
    };
    let events = Delivery::replay(&facts)
        .expect("replays")
        .decide(assign, &Actor::new(Role::Dispatcher, "desk-2"), Utc::now())
        .expect("assignable");
    let causation = Causation {
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    };
    store::append(&mut racer, 1, &events, causation)
        .await
        .expect("racer appends");
    // ... while the command with the key decides on version 1 and waits for version 2.
    let key = [("idempotency-key", "assign-rider-1")];
    let body = json!({"rider_id": "rider-1"});
    let command = spawn_send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(body.clone()),
        &key,
    );
    wait_for_lock_waiters(&pool, 1).await;
    racer.commit().await.expect("racer commits");
    let lost = command.await.expect("command task");
    assert_eq!(lost.status, StatusCode::CONFLICT);
    assert_eq!(lost.body["code"], "version-conflict");

    // The retry runs the command on the new history instead of replaying the lost race.
    let retried = send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(&body),
        &key,
    )
    .await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::OK, false),
        "{}",
        retried.body
    );
    assert_eq!(retried.body["version"], 3);
    let again = send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(&body),
        &key,
    )
    .await;
    assert_eq!((again.status, again.replayed), (StatusCode::OK, true));
    assert_eq!(again.body, retried.body);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_database_failure_does_not_poison_the_key(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Statements give up after a second: plenty for a command, short against a held lock.
    let timed = command_api::serve::connect_options(connect.clone(), Duration::from_secs(1));
    let pool = pool_options.connect_with(timed).await.expect("pool");
    let holder = PgPool::connect_with(connect).await.expect("lock holder");
    let app = test_app(pool.clone(), Limits::default());
    let key = [("idempotency-key", "create-while-locked")];
    let body = create_body(Some(DELIVERY));

    let mut lock = holder.begin().await.expect("transaction");
    sqlx::query("lock table events in exclusive mode")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let failed = send(&app, "/deliveries", DISPATCHER, Some(&body), &key).await;
    assert_unavailable(&failed, "database-busy");
    lock.rollback().await.expect("release");

    let retried = send(&app, "/deliveries", DISPATCHER, Some(&body), &key).await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::CREATED, false)
    );
    assert_eq!(count(&holder, "events").await, 1);
    pool.close().await;
    holder.close().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn if_match_is_part_of_the_request_a_key_stands_for(pool: PgPool) {
    let app = test_app(pool.clone(), Limits::default());
    send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(Some(DELIVERY))),
        &[],
    )
    .await;
    let body = json!({"rider_id": "rider-1"});
    let assign = |if_match: &'static str| {
        let (app, body) = (app.clone(), body.clone());
        async move {
            let headers = [("idempotency-key", "assign-1"), ("if-match", if_match)];
            send(
                &app,
                &path(DELIVERY, "assign"),
                DISPATCHER,
                Some(&body),
                &headers,
            )
            .await
        }
    };
    let first = assign("\"1\"").await;
    assert_eq!(first.status, StatusCode::OK);
    // Another spelling of the same precondition is the same request ...
    let same = assign("W/\"1\"").await;
    assert_eq!((same.status, same.replayed), (StatusCode::OK, true));
    // ... another precondition is another request.
    let other = assign("\"2\"").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "idempotency-key-reused");
}

/// Makes every key look `age` old.
async fn age_keys(pool: &PgPool, age_hours: i32) {
    sqlx::query("update idempotency_keys set created_at = now() - make_interval(hours => $1)")
        .bind(age_hours)
        .execute(pool)
        .await
        .expect("age keys");
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_expired_key_is_new(pool: PgPool) {
    let limits = Limits {
        idempotency_ttl: Duration::from_secs(3600),
        ..Limits::default()
    };
    let app = test_app(pool.clone(), limits);
    let key = [("idempotency-key", "reused-after-a-day")];
    let first = send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(Some(DELIVERY))),
        &key,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other = create_body(Some(OTHER_DELIVERY));
    // Within the TTL the key still stands for the first request ...
    age_keys(&pool, 0).await;
    let refused = send(&app, "/deliveries", DISPATCHER, Some(&other), &key).await;
    assert_eq!(refused.body["code"], "idempotency-key-reused");
    // ... past it, the same key is a new key.
    age_keys(&pool, 2).await;
    let fresh = send(&app, "/deliveries", DISPATCHER, Some(&other), &key).await;
    assert_eq!(
        (fresh.status, fresh.replayed),
        (StatusCode::CREATED, false),
        "{}",
        fresh.body
    );
    assert_eq!(fresh.body["delivery_id"], OTHER_DELIVERY);
    let replayed = send(&app, "/deliveries", DISPATCHER, Some(&other), &key).await;
    assert_eq!(
        (replayed.status, replayed.replayed),
        (StatusCode::CREATED, true)
    );
    assert_eq!(count(&pool, "events").await, 2);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_cleanup_deletes_expired_keys_in_batches_and_keeps_fresh_ones(pool: PgPool) {
    let ttl = Duration::from_secs(3600);
    let app = test_app(pool.clone(), Limits::default());
    for (n, id) in [DELIVERY, OTHER_DELIVERY].into_iter().enumerate() {
        let key = format!("old-{n}");
        let body = create_body(Some(id));
        send(
            &app,
            "/deliveries",
            DISPATCHER,
            Some(&body),
            &[("idempotency-key", &key)],
        )
        .await;
    }
    age_keys(&pool, 2).await;
    send(
        &app,
        &path(DELIVERY, "cancel"),
        DISPATCHER,
        Some(&json!({"reason": "x"})),
        &[("idempotency-key", "fresh")],
    )
    .await;
    assert_eq!(count(&pool, "idempotency_keys").await, 3);

    // Batches of one: the loop goes on until nothing expired is left.
    assert_eq!(purge_expired(&pool, ttl, 1).await.expect("purge"), 2);
    let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(left, vec!["fresh".to_owned()]);
    assert_eq!(purge_expired(&pool, ttl, 100).await.expect("purge"), 0);
    // The fresh key still replays.
    let again = send(
        &app,
        &path(DELIVERY, "cancel"),
        DISPATCHER,
        Some(&json!({"reason": "x"})),
        &[("idempotency-key", "fresh")],
    )
    .await;
    assert_eq!((again.status, again.replayed), (StatusCode::OK, true));
}
