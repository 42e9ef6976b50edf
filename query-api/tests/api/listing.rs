//! `GET /deliveries`: filters and keyset pagination.

use crate::snapshot;
use crate::support::{D1, D2, D3, D4, D5, D6, D7, exec, get, seed, test_app};
use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn a_page_is_ordered_by_creation_and_filters_narrow_it(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let first = get(&app, "/deliveries?limit=3").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.ids("/items"), [D7, D1, D2]);
    assert!(first.body["next_cursor"].is_string());
    snapshot("list_first_page", &first.wire());

    let cases: [(&str, &[&str]); 7] = [
        ("", &[D7, D1, D2, D3, D4, D5, D6]),
        ("status=picked_up", &[D3, D6]),
        ("status=created", &[D4]),
        ("rider_id=rider-1", &[D7, D1, D2, D6]),
        // Exclusive: D3 was created at exactly 09:20.
        ("created_after=2026-03-02T09:20:00Z", &[D4, D5, D6]),
        ("status=picked_up&rider_id=rider-1", &[D6]),
        ("rider_id=rider-42", &[]),
    ];
    for (query, expected) in cases {
        let reply = get(&app, &format!("/deliveries?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
        assert_eq!(reply.ids("/items"), expected, "{query}");
        assert_eq!(reply.body["next_cursor"], Value::Null, "{query}");
    }
}

/// Follows `next_cursor` from the first page to the last; returns the ids in order.
async fn walk(app: &Router, filter: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/deliveries?limit={limit}&{filter}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = get(app, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
        let items = page.ids("/items");
        assert!(items.len() <= limit, "{path}");
        ids.extend(items);
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(
                    page.ids("/items").len(),
                    limit,
                    "only full pages have a next one"
                );
                cursor = Some(next.to_owned());
            }
            None => return ids,
        }
    }
    panic!("pagination did not end: {filter} limit {limit}");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn walking_every_page_returns_every_row_exactly_once_in_order(pool: PgPool) {
    // 23 deliveries; three at a time share a created_at, so the id breaks the ties.
    // Ids are numbered against creation order, so id order and time order disagree.
    exec(
        &pool,
        r#"insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff,
               rider_id, created_at, version, updated_at)
           select ('0190f4c2-0000-7000-8000-' || lpad((100 - i)::text, 12, '0'))::uuid,
               (array['created', 'rider_assigned', 'cancelled'])[i % 3 + 1],
               'order-' || i, 'customer-1', '{"line": "a", "lat": 0, "lon": 0}',
               '{"line": "b", "lat": 0, "lon": 0}',
               case when i % 3 = 1 then 'rider-' || (i % 2) end,
               created, 1, created
           from generate_series(1, 23) as i,
               lateral (select '2026-03-02T10:00:00Z'::timestamptz
                   + (i / 3) * interval '1 minute' + interval '0.000001 second' * (i % 2))
                   as t(created);"#,
    )
    .await;
    let app = test_app(pool.clone()).await;

    let filters = [
        ("", "true"),
        ("status=created", "status = 'created'"),
        ("rider_id=rider-1", "rider_id = 'rider-1'"),
        (
            "created_after=2026-03-02T10:03:00Z",
            "created_at > '2026-03-02T10:03:00Z'",
        ),
        (
            "status=rider_assigned&created_after=2026-03-02T10:02:00.000001Z",
            "status = 'rider_assigned' and created_at > '2026-03-02T10:02:00.000001Z'",
        ),
    ];
    for (filter, condition) in filters {
        let expected: Vec<String> = sqlx::query_scalar(&format!(
            "select delivery_id::text from deliveries where {condition} \
             order by created_at, delivery_id"
        ))
        .fetch_all(&pool)
        .await
        .expect("expected order");
        assert!(!expected.is_empty(), "{filter} selects something");
        for limit in [1, 2, 5, expected.len(), 500] {
            assert_eq!(
                walk(&app, filter, limit).await,
                expected,
                "{filter} limit {limit}"
            );
        }
    }
}
