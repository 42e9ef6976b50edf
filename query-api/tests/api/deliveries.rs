//! `GET /deliveries/{id}`: the current row, and the state as of a past time.

use crate::snapshot;
use crate::support::{D1, D4, D5, get, seed, test_app};
use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn a_delivery_is_served_as_stored_with_every_field_in_contract_order(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let completed = get(&app, &format!("/deliveries/{D1}")).await;
    let created = get(&app, &format!("/deliveries/{D4}")).await;
    let cancelled = get(&app, &format!("/deliveries/{D5}")).await;
    for reply in [&completed, &created, &cancelled] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    snapshot(
        "delivery_completed_created_cancelled",
        &[completed.wire(), created.wire(), cancelled.wire()],
    );

    // Clients may rely on the order of the fields as sent, not only on their names.
    let fields = [
        "delivery_id",
        "status",
        "order_ref",
        "customer_id",
        "pickup",
        "dropoff",
        "rider_id",
        "cancel_reason",
        "created_at",
        "assigned_at",
        "picked_up_at",
        "completed_at",
        "cancelled_at",
        "version",
        "updated_at",
    ];
    let positions: Vec<usize> = fields
        .iter()
        .map(|f| {
            created
                .text
                .find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} missing"))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "fields out of order: {}",
        created.text
    );
    assert_eq!(
        created.body.as_object().map(|o| o.len()),
        Some(fields.len())
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn as_of_folds_the_history_up_to_that_time(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;
    let as_of = |at: &str| format!("/deliveries/{D1}?as_of={at}");

    let before_creation = get(&app, &as_of("2026-03-02T08:59:59.999Z")).await;
    assert_eq!(before_creation.status, StatusCode::NOT_FOUND);
    assert_eq!(before_creation.problem_code(), "delivery-not-found");

    // The bound is inclusive: an event at exactly as_of has happened.
    let at_creation = get(&app, &as_of("2026-03-02T09:00:00Z")).await;
    let assigned = get(&app, &as_of("2026-03-02T09:10:00Z")).await;
    let picked_up = get(&app, &as_of("2026-03-02T09:44:59Z")).await;
    for (reply, status, version) in [
        (&at_creation, "created", 1),
        (&assigned, "rider_assigned", 2),
        (&picked_up, "picked_up", 3),
    ] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["status"], status);
        assert_eq!(reply.body["version"], version);
    }
    assert_eq!(assigned.body["rider_id"], "rider-1");
    assert_eq!(assigned.body["picked_up_at"], json!(null));
    assert_eq!(assigned.body["updated_at"], "2026-03-02T09:05:00Z");
    snapshot(
        "delivery_as_of_created_assigned_picked_up",
        &[at_creation.wire(), assigned.wire(), picked_up.wire()],
    );

    // The same instant written with an offset (the '+' percent-encoded) is the same state.
    let with_offset = get(&app, &as_of("2026-03-02T10:10:00%2B01:00")).await;
    assert_eq!(with_offset.body, assigned.body);

    // After the last event, the fold is exactly what the projector stored.
    let now = get(&app, &as_of("2030-01-01T00:00:00Z")).await;
    let current = get(&app, &format!("/deliveries/{D1}")).await;
    assert_eq!(now.status, StatusCode::OK);
    assert_eq!(now.body, current.body);
    assert_eq!(now.text, current.text, "same fields in the same order");
}
