//! `GET /deliveries/{id}/history`.

use crate::snapshot;
use crate::support::{D1, D4, get, seed, test_app};
use axum::http::StatusCode;
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn the_history_lists_every_event_in_version_order(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let history = get(&app, &format!("/deliveries/{D1}/history")).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let versions: Vec<i64> = history.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["version"].as_i64())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    snapshot("history_of_a_completed_delivery", &history.wire());

    // A delivery whose events are not in the history table (yet) has no history to show.
    let missing = get(&app, &format!("/deliveries/{D4}/history")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.problem_code(), "delivery-not-found");
}
