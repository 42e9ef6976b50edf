//! Read-your-writes: `?min_version=` waits for the projector and never answers with older data.

use crate::support::{D2, UNKNOWN, get, project, seed, test_app};
use axum::http::StatusCode;
use query_api::FreshnessWatch;
use sqlx::PgPool;
use std::time::{Duration, Instant};

pub const PICK_UP_D2: &str = "update deliveries set status = 'picked_up', version = 3, \
     picked_up_at = '2026-03-02T09:25:00Z', updated_at = '2026-03-02T09:25:00Z' \
     where delivery_id = '0190f4c2-0000-7000-8000-000000000002'";

pub const PICK_UP_D2_HISTORY: &str = "insert into delivery_history (delivery_id, version, event_id, \
     event_type, schema_version, actor_role, actor_id, occurred_at, recorded_at, correlation_id, \
     causation_id, data, kafka_partition, kafka_offset) \
     values ('0190f4c2-0000-7000-8000-000000000002', 3, '0190f4c2-0000-7000-9000-000000000023', \
     'delivery.picked_up', 1, 'rider', 'rider-1', '2026-03-02T09:25:00Z', \
     '2026-03-02T09:25:00.010Z', '0190f4c2-0000-7000-a000-000000000023', \
     '0190f4c2-0000-7000-b000-000000000023', '{\"rider_id\": \"rider-1\"}', 1, 9)";

#[sqlx::test(migrator = "migrations::READ")]
async fn a_version_not_projected_in_time_is_a_503_not_stale_data(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let started = Instant::now();
    let behind = get(&app, &format!("/deliveries/{D2}?min_version=3&wait_ms=200")).await;
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
    assert_eq!(behind.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(behind.problem_code(), "not-yet-projected");
    assert_eq!(behind.header("retry-after"), Some("1"));
    let detail = behind.body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("version 3") && detail.contains("at version 2"),
        "{detail}"
    );

    // A delivery the projector has not seen at all yet is "version 0", not "not found".
    let unseen = get(
        &app,
        &format!("/deliveries/{UNKNOWN}?min_version=1&wait_ms=0"),
    )
    .await;
    assert_eq!(unseen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(unseen.text.contains("at version 0"), "{}", unseen.text);

    let history = get(
        &app,
        &format!("/deliveries/{D2}/history?min_version=3&wait_ms=50"),
    )
    .await;
    assert_eq!(history.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(history.problem_code(), "not-yet-projected");

    // Reached already: answered at once (the limit is 5 s, so a wait would show).
    let started = Instant::now();
    let current = get(&app, &format!("/deliveries/{D2}?min_version=2")).await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.body["version"], 2);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_waiting_read_answers_as_soon_as_the_projector_commits(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool.clone()).await;

    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { get(&app, &format!("/deliveries/{D2}?min_version=3")).await })
    };
    let waiting_history = {
        let app = app.clone();
        tokio::spawn(async move {
            get(
                &app,
                &format!("/deliveries/{D2}/history?min_version=3&wait_ms=4000"),
            )
            .await
        })
    };
    // Let both requests see version 2 and start waiting.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiting.is_finished() && !waiting_history.is_finished());
    // A commit that names another delivery does not answer these reads.
    project(&pool, "select 1", &format!("{UNKNOWN}:7")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished() && !waiting_history.is_finished());
    // The projector's own payload names the delivery and its new version.
    project(&pool, PICK_UP_D2, &format!("{D2}:3")).await;
    project(&pool, PICK_UP_D2_HISTORY, &format!("{D2}:3")).await;

    let deadline = Duration::from_secs(3);
    let reply = tokio::time::timeout(deadline, waiting)
        .await
        .expect("answered well before the 5 s limit")
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["version"], 3);
    assert_eq!(reply.body["status"], "picked_up");

    let history = tokio::time::timeout(deadline, waiting_history)
        .await
        .expect("answered before its 4 s limit")
        .expect("task");
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.body["events"][2]["type"], "delivery.picked_up");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_watch_hears_every_projector_commit(pool: PgPool) {
    let watch = FreshnessWatch::listen(&pool).await.expect("LISTEN");
    let mut commits = watch.subscribe();
    commits.borrow_and_update();
    project(&pool, "select 1", "").await;
    tokio::time::timeout(Duration::from_secs(3), commits.changed())
        .await
        .expect("notified within 3 s")
        .expect("listener alive");
    assert_eq!(*commits.borrow(), 1);
}
