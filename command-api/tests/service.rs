//! The command service without HTTP, against a fresh, migrated Postgres per test: what a
//! command becomes (accepted, replayed, refused) is decided here, and the handlers only map it.

use axum::http::StatusCode;
use command_api::context::CommandContext;
use command_api::error::ApiError;
use command_api::service::{Accepted, CommandService, Outcome, Submission};
use domain::{Actor, Address, Command, CustomerId, DeliveryId, OrderRef, RiderId, Role};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const RACERS: usize = 16;

fn service(pool: &PgPool) -> CommandService {
    CommandService::new(pool.clone(), Duration::from_secs(60))
}

fn delivery() -> DeliveryId {
    DeliveryId::from_uuid(Uuid::from_u128(0x0190_f4c2_7d1e_7cc0_9d8e_5e1a_2b3c_4d5e))
}

fn dispatcher(path: &str) -> CommandContext {
    CommandContext::new(Actor::new(Role::Dispatcher, "desk-1"), path)
}

fn create(delivery_id: DeliveryId) -> Submission {
    let address = Address::new("Main St 1", 52.52, 13.405).expect("valid address");
    let command = Command::Create {
        delivery_id,
        order_ref: OrderRef::parse("order-1001").expect("valid"),
        customer_id: CustomerId::parse("customer-7").expect("valid"),
        pickup: address.clone(),
        dropoff: address,
    };
    // The body only feeds the idempotency fingerprint: any JSON naming the request will do.
    Submission::new(delivery_id, command).with_body(json!({"order_ref": "order-1001"}), None)
}

fn assign(delivery_id: DeliveryId, rider: &str) -> Submission {
    let command = Command::AssignRider {
        rider_id: RiderId::parse(rider).expect("valid"),
    };
    Submission::new(delivery_id, command).with_body(json!({"rider_id": rider}), None)
}

fn assign_path(delivery_id: DeliveryId) -> String {
    format!("/deliveries/{delivery_id}/assign")
}

fn accepted(outcome: Outcome) -> Accepted {
    match outcome {
        Outcome::Accepted(accepted) => accepted,
        other => panic!("expected an accepted command, got {other:?}"),
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Given a created delivery.
async fn created(pool: &PgPool) -> Accepted {
    let outcome = service(pool)
        .handle(&dispatcher("/deliveries"), create(delivery()))
        .await
        .expect("create is accepted");
    accepted(outcome)
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_create_is_accepted_with_its_event_and_outbox_record(pool: PgPool) {
    let accepted = created(&pool).await;
    assert_eq!(
        (accepted.delivery_id, accepted.version, accepted.created),
        (delivery(), 1, true)
    );
    assert_eq!(accepted.status(), StatusCode::CREATED);
    let types: Vec<_> = accepted.events.iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["delivery.created"]);
    assert_eq!(accepted.body()["version"], 1);
    assert_eq!(
        (count(&pool, "events").await, count(&pool, "outbox").await),
        (1, 1)
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_transition_continues_the_versions(pool: PgPool) {
    created(&pool).await;
    let outcome = service(&pool)
        .handle(
            &dispatcher(&assign_path(delivery())),
            assign(delivery(), "rider-1"),
        )
        .await
        .expect("assign is accepted");
    let accepted = accepted(outcome);
    assert_eq!((accepted.version, accepted.created), (2, false));
    assert_eq!(accepted.status(), StatusCode::OK);
    assert_eq!(accepted.events[0].event_type, "delivery.rider_assigned");
    assert_eq!(count(&pool, "outbox").await, 2);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_retry_with_the_same_key_replays_the_first_verdict(pool: PgPool) {
    created(&pool).await;
    let mut context = dispatcher(&assign_path(delivery()));
    context.idempotency_key = Some("assign-1".into());
    let first = service(&pool)
        .handle(&context, assign(delivery(), "rider-1"))
        .await
        .expect("assign is accepted");
    let first = accepted(first);
    let retried = service(&pool)
        .handle(&context, assign(delivery(), "rider-1"))
        .await
        .expect("the retry is answered");
    match retried {
        Outcome::Replayed(recorded) => {
            assert_eq!(recorded.status, StatusCode::OK);
            assert_eq!(recorded.body, first.body());
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(count(&pool, "events").await, 2);
    // The same key with another request is refused, not replayed.
    let other = service(&pool)
        .handle(&context, assign(delivery(), "rider-2"))
        .await;
    assert!(
        matches!(other, Err(ApiError::IdempotencyKeyReused)),
        "{other:?}"
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_stale_if_match_is_a_version_conflict(pool: PgPool) {
    created(&pool).await;
    let mut context = dispatcher(&assign_path(delivery()));
    context.if_match = Some(5);
    let refused = service(&pool)
        .handle(&context, assign(delivery(), "rider-1"))
        .await;
    assert!(
        matches!(
            refused,
            Err(ApiError::VersionConflict {
                expected: 5,
                actual: 1
            })
        ),
        "{refused:?}"
    );
    assert_eq!(count(&pool, "events").await, 1);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_invalid_transition_is_refused_and_appends_nothing(pool: PgPool) {
    created(&pool).await;
    let context = CommandContext::new(
        Actor::new(Role::Admin, "root"),
        format!("/deliveries/{}/complete", delivery()),
    );
    let refused = service(&pool)
        .handle(&context, Submission::new(delivery(), Command::Complete))
        .await;
    assert!(
        matches!(refused, Err(ApiError::InvalidTransition(_))),
        "{refused:?}"
    );
    assert_eq!(
        (count(&pool, "events").await, count(&pool, "outbox").await),
        (1, 1)
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_command_on_an_unknown_delivery_is_not_found(pool: PgPool) {
    let unknown = DeliveryId::from_uuid(Uuid::from_u128(404));
    let refused = service(&pool)
        .handle(
            &dispatcher(&assign_path(unknown)),
            assign(unknown, "rider-1"),
        )
        .await;
    assert!(matches!(refused, Err(ApiError::NotFound)), "{refused:?}");
    assert_eq!(count(&pool, "events").await, 0);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn concurrent_duplicates_with_one_key_append_one_set_of_events(pool: PgPool) {
    let mut context = dispatcher("/deliveries");
    context.idempotency_key = Some("create-1".into());
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (service, context) = (service(&pool), context.clone());
            tokio::spawn(async move { service.handle(&context, create(delivery())).await })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut accepted_now = 0;
    for racer in racers {
        match racer
            .await
            .expect("racer finishes")
            .expect("every racer succeeds")
        {
            Outcome::Accepted(accepted) => {
                accepted_now += 1;
                bodies.push(accepted.body());
            }
            Outcome::Replayed(recorded) => {
                assert_eq!(recorded.status, StatusCode::CREATED);
                bodies.push(recorded.body);
            }
        }
    }
    assert_eq!(accepted_now, 1, "exactly one racer runs the command");
    assert!(bodies.iter().all(|body| *body == bodies[0]), "{bodies:?}");
    assert_eq!(
        (count(&pool, "events").await, count(&pool, "outbox").await),
        (1, 1)
    );
}
