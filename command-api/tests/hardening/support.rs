//! What the hardening tests share: an app over a pool, requests, and waiting for a database
//! state with a deadline instead of sleeping.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use command_api::{AppState, Limits, Tokens, app_with_limits};
use e2e::{Contract, eventually};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::LazyLock;
use std::time::Duration;
use tower::ServiceExt;

pub const DISPATCHER: &str = "dispatcher-token";
pub const ADMIN: &str = "admin-token-1";
pub const RIDER_1: &str = "rider-1-token";
pub const DELIVERY: &str = "0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e";
pub const OTHER_DELIVERY: &str = "0190f4c2-7d1e-7cc0-9d8e-000000000002";

pub fn test_app(pool: PgPool, limits: Limits) -> Router {
    let tokens = Tokens::parse(&format!(
        "{DISPATCHER}=dispatcher:desk-1,{ADMIN}=admin:root,{RIDER_1}=rider:rider-1"
    ))
    .expect("test tokens are valid");
    app_with_limits(
        AppState {
            pool,
            tokens,
            max_body_bytes: 4096,
        },
        limits,
    )
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub replayed: bool,
    pub body: Value,
}

/// Sends one POST (or `method`); `body` is sent as JSON when present.
pub async fn send_method(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request builds");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bytes = body.collect().await.expect("body reads").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    CONTRACT.assert_documented(method.as_str(), path, parts.status.as_u16(), &body);
    Reply {
        status: parts.status,
        content_type: header(header::CONTENT_TYPE.as_str()).unwrap_or_default(),
        retry_after: header(header::RETRY_AFTER.as_str()),
        replayed: header("idempotency-replayed").is_some(),
        body,
    }
}

/// The contract every answer of these tests must keep.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    Contract::new(serde_json::to_value(command_api::openapi()).expect("the spec serializes"))
});

pub async fn send(
    app: &Router,
    path: &str,
    token: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Reply {
    send_method(app, Method::POST, path, Some(token), body, headers).await
}

/// A create; `id` is the client-chosen delivery id, if any.
pub fn create_body(id: Option<&str>) -> Value {
    let mut body = json!({
        "order_ref": "order-1001",
        "customer_id": "customer-7",
        "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
        "dropoff": {"line": "Elm St 9", "lat": 52.51, "lon": 13.39},
    });
    if let Some(id) = id {
        body["delivery_id"] = json!(id);
    }
    body
}

pub fn path(delivery: &str, action: &str) -> String {
    format!("/deliveries/{delivery}/{action}")
}

pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Asserts a 503 problem with the given code and a `Retry-After`.
pub fn assert_unavailable(reply: &Reply, code: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    assert_eq!(reply.body["status"], 503);
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
}

/// Waits until `n` sessions of this test's database wait for a lock (the commands the test
/// is holding up), or fails after a generous deadline.
pub async fn wait_for_lock_waiters(observer: &PgPool, n: i64) {
    let what = format!("{n} sessions to wait for the lock");
    eventually(Duration::from_secs(30), &what, || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(observer)
        .await
        .expect("pg_stat_activity");
        (waiting >= n).then_some(())
    })
    .await;
}

/// One request sent from a task of its own, so the test can act while it is in flight.
pub fn spawn_send(
    app: &Router,
    path: &str,
    token: &'static str,
    body: Option<Value>,
    headers: &[(&'static str, &'static str)],
) -> tokio::task::JoinHandle<Reply> {
    let (app, path, headers) = (app.clone(), path.to_owned(), headers.to_vec());
    tokio::spawn(async move { send(&app, &path, token, body.as_ref(), &headers).await })
}

/// `n` copies of one request, all in flight at once; the replies in no particular order.
pub async fn duplicates(
    app: &Router,
    n: usize,
    path: &str,
    token: &'static str,
    body: Option<Value>,
    headers: &[(&'static str, &'static str)],
) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| spawn_send(app, path, token, body.clone(), headers))
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// Every duplicate got the one outcome of the first: same status, same body; exactly one of
/// them ran the command and the rest are replays.
pub fn assert_one_outcome(replies: &[Reply], status: StatusCode) -> Value {
    let first = &replies[0];
    for reply in replies {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.body, first.body);
    }
    let ran = replies.iter().filter(|reply| !reply.replayed).count();
    assert_eq!(ran, 1, "exactly one duplicate ran the command");
    first.body.clone()
}
