//! `GET /riders/{id}/deliveries`.

use crate::snapshot;
use crate::support::{D1, D2, D6, D7, exec, get, seed, test_app};
use axum::http::StatusCode;
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rider_view_shows_counters_active_work_and_recent_completions(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let busy = get(&app, "/riders/rider-1/deliveries").await;
    assert_eq!(busy.status, StatusCode::OK, "{}", busy.text);
    assert_eq!(busy.body["active_deliveries"], 2);
    assert_eq!(busy.body["completed_deliveries"], 2);
    // Active oldest first; completed newest completion first (D7 was created and completed earlier).
    assert_eq!(busy.ids("/active"), [D2, D6]);
    assert_eq!(busy.ids("/recent_completed"), [D1, D7]);

    let idle = get(&app, "/riders/rider-3/deliveries").await;
    assert_eq!(idle.status, StatusCode::OK);
    snapshot("rider_busy_and_idle", &[busy.wire(), idle.wire()]);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn only_the_fifty_most_recent_completions_are_listed(pool: PgPool) {
    exec(
        &pool,
        r#"insert into riders (rider_id, completed_deliveries, last_event_at)
         values ('rider-9', 60, '2026-03-03T00:00:00Z');
         insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff,
             rider_id, created_at, assigned_at, picked_up_at, completed_at, version, updated_at)
         select ('0190f4c2-0000-7000-8000-' || lpad(i::text, 12, '0'))::uuid, 'completed',
             'order-' || i, 'customer-1', '{"line": "a", "lat": 0, "lon": 0}',
             '{"line": "b", "lat": 0, "lon": 0}', 'rider-9', created, created, created,
             completed, 4, completed
         from generate_series(1, 60) as i,
             -- Completion order is a shuffle of creation order (37 is coprime to 60).
             lateral (select '2026-03-02T00:00:00Z'::timestamptz + i * interval '1 minute',
                             '2026-03-05T00:00:00Z'::timestamptz
                                 + ((i * 37) % 60) * interval '1 minute') as t(created, completed);"#,
    )
    .await;
    let app = test_app(pool.clone()).await;

    let reply = get(&app, "/riders/rider-9/deliveries").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["completed_deliveries"], 60);
    let expected: Vec<String> = sqlx::query_scalar(
        "select delivery_id::text from deliveries order by completed_at desc limit 50",
    )
    .fetch_all(&pool)
    .await
    .expect("expected order");
    assert_eq!(reply.ids("/recent_completed"), expected);
    assert_eq!(reply.ids("/active"), Vec::<String>::new());
}
