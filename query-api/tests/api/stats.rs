//! `GET /stats`. Today's rows are placed relative to `now()`, so the test holds on any date.

use crate::support::{exec, get, test_app};
use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn an_empty_read_model_has_zero_counts_and_no_averages(pool: PgPool) {
    let app = test_app(pool).await;
    let stats = get(&app, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    assert_eq!(
        stats.body,
        json!({
            "deliveries_by_status": {
                "created": 0, "rider_assigned": 0, "picked_up": 0, "completed": 0, "cancelled": 0
            },
            "active_riders": 0,
            "completed_today": 0,
            "avg_completion_seconds_today": null,
            "p90_completion_seconds_today": null,
            "parked_events": 0,
            "poison_messages": 0,
        })
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn stats_count_statuses_riders_todays_completions_and_stuck_messages(pool: PgPool) {
    exec(
        &pool,
        r#"
        create temporary table day as
            select date_trunc('day', now() at time zone 'UTC') at time zone 'UTC' as start;
        insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff,
            rider_id, created_at, completed_at, version, updated_at)
        select id::uuid, status, 'order-' || n, 'customer-1', '{"line": "a", "lat": 0, "lon": 0}',
            '{"line": "b", "lat": 0, "lon": 0}', rider, created, completed, 1,
            coalesce(completed, created)
        from (values
            -- Completed today after 10, 20 and 30 minutes.
            (1, '0190f4c2-0000-7000-8000-000000000001', 'completed', 'rider-1',
             now() - interval '600 seconds', now()),
            (2, '0190f4c2-0000-7000-8000-000000000002', 'completed', 'rider-1',
             now() - interval '1200 seconds', now()),
            (3, '0190f4c2-0000-7000-8000-000000000003', 'completed', 'rider-2',
             now() - interval '1800 seconds', now()),
            -- Completed yesterday: not part of today's numbers.
            (4, '0190f4c2-0000-7000-8000-000000000004', 'completed', 'rider-2',
             (select start from day) - interval '3 hours',
             (select start from day) - interval '1 hour'),
            (5, '0190f4c2-0000-7000-8000-000000000005', 'rider_assigned', 'rider-1',
             now(), null),
            (6, '0190f4c2-0000-7000-8000-000000000006', 'picked_up', 'rider-3', now(), null),
            (7, '0190f4c2-0000-7000-8000-000000000007', 'created', null, now(), null),
            (8, '0190f4c2-0000-7000-8000-000000000008', 'created', null, now(), null),
            (9, '0190f4c2-0000-7000-8000-000000000009', 'cancelled', null, now(), null)
        ) as d(n, id, status, rider, created, completed);
        update status_counts s
        set deliveries = (select count(*) from deliveries d where d.status = s.status);
        insert into riders (rider_id, active_deliveries, completed_deliveries, last_event_at)
        values ('rider-1', 1, 2, now()), ('rider-2', 0, 2, now()), ('rider-3', 1, 0, now()),
               ('rider-4', 0, 0, now());
        insert into parked_events (delivery_id, version, applied_version, envelope,
            kafka_partition, kafka_offset)
        values ('0190f4c2-0000-7000-8000-000000000007', 3, 1, '{}', 0, 40),
               ('0190f4c2-0000-7000-8000-000000000007', 4, 1, '{}', 0, 41);
        insert into poison_messages (topic, kafka_partition, kafka_offset, payload, error)
        values ('delivery.events', 2, 7, 'not json', 'not an event envelope');
        "#,
    )
    .await;
    let app = test_app(pool).await;

    let stats = get(&app, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    let body = &stats.body;
    assert_eq!(
        body["deliveries_by_status"],
        json!({"created": 2, "rider_assigned": 1, "picked_up": 1, "completed": 4, "cancelled": 1})
    );
    assert_eq!(body["active_riders"], 2);
    assert_eq!(body["completed_today"], 3);
    let seconds = |field: &str| body[field].as_f64().expect("a number of seconds");
    assert!((seconds("avg_completion_seconds_today") - 1200.0).abs() < 1e-6);
    // Interpolated: 1200 + 0.8 * (1800 - 1200).
    assert!((seconds("p90_completion_seconds_today") - 1680.0).abs() < 1e-6);
    assert_eq!(body["parked_events"], 2);
    assert_eq!(body["poison_messages"], 1);
}
