//! Bounds on time and concurrency: past each, a 503 problem with `Retry-After`, at once.

use crate::support::*;
use axum::http::{Method, StatusCode};
use command_api::Limits;
use e2e::db::hold_appends;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_command_beyond_the_in_flight_bound_is_shed_at_once(pool: PgPool) {
    let limits = Limits {
        max_in_flight: 2,
        ..Limits::default()
    };
    let app = test_app(pool.clone(), limits);
    let lock = hold_appends(&pool).await;
    // With keys, so that each command waits for the lock in its own transaction (without,
    // one group commit may write both, and only one statement would wait).
    let held: Vec<_> = [(DELIVERY, "held-1"), (OTHER_DELIVERY, "held-2")]
        .into_iter()
        .map(|(id, key)| {
            let app = app.clone();
            tokio::spawn(async move {
                send(
                    &app,
                    "/deliveries",
                    DISPATCHER,
                    Some(&create_body(Some(id))),
                    &[("idempotency-key", key)],
                )
                .await
            })
        })
        .collect();
    wait_for_lock_waiters(&pool, 2).await;

    let third = create_body(Some("0190f4c2-7d1e-7cc0-9d8e-000000000003"));
    let shed = send(&app, "/deliveries", DISPATCHER, Some(&third), &[]).await;
    assert_unavailable(&shed, "overloaded");
    // The health check is not a command: it answers whatever the crowd.
    let health = send_method(&app, Method::GET, "/health", None, None, &[]).await;
    assert_eq!(health.status, StatusCode::OK);

    lock.rollback().await.expect("release");
    for task in held {
        assert_eq!(task.await.expect("task").status, StatusCode::CREATED);
    }
    // Once the crowd is gone, commands are accepted again.
    let later = send(&app, "/deliveries", DISPATCHER, Some(&third), &[]).await;
    assert_eq!(later.status, StatusCode::CREATED);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_command_past_the_request_timeout_gets_a_problem_and_leaves_its_key_free(pool: PgPool) {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let app = test_app(pool.clone(), limits);
    let key = [("idempotency-key", "slow-create")];
    let body = create_body(Some(DELIVERY));
    let lock = hold_appends(&pool).await;
    let timed_out = send(&app, "/deliveries", DISPATCHER, Some(&body), &key).await;
    assert_unavailable(&timed_out, "request-timeout");
    lock.rollback().await.expect("release");

    // The retry goes through an app with the default bound: only the key's state matters.
    let app = test_app(pool.clone(), Limits::default());
    let retried = send(&app, "/deliveries", DISPATCHER, Some(&body), &key).await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::CREATED, false)
    );
    assert_eq!(count(&pool, "events").await, 1);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn unknown_routes_and_methods_get_problems(pool: PgPool) {
    let app = test_app(pool, Limits::default());
    let cases = [
        (
            Method::GET,
            "/nowhere",
            StatusCode::NOT_FOUND,
            "route-not-found",
        ),
        (
            Method::POST,
            "/deliveries/x/teleport",
            StatusCode::NOT_FOUND,
            "route-not-found",
        ),
        (
            Method::GET,
            "/deliveries",
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            Method::DELETE,
            &path(DELIVERY, "pickup"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            Method::POST,
            "/health",
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let body = json!({});
        let reply = send_method(
            &app,
            method.clone(),
            path,
            Some(DISPATCHER),
            Some(&body),
            &[],
        )
        .await;
        assert_eq!(reply.status, status, "{method} {path}");
        assert_eq!(
            reply.content_type, "application/problem+json",
            "{method} {path}"
        );
        assert_eq!(reply.body["code"], code, "{method} {path}");
        assert_eq!(reply.body["status"], status.as_u16());
    }
}
