//! The command API over HTTP against a real Postgres: a fresh, migrated database per test.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use command_api::{AppState, Tokens, app};
use e2e::Contract;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::LazyLock;
use tower::ServiceExt;

const DISPATCHER: &str = "dispatcher-token";
const ADMIN: &str = "admin-token-1";
const RIDER_1: &str = "rider-1-token";
const RIDER_2: &str = "rider-2-token";
const DELIVERY: &str = "0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e";

fn test_app(pool: PgPool) -> Router {
    let tokens = Tokens::parse(&format!(
        "{DISPATCHER}=dispatcher:desk-1,{ADMIN}=admin:root,\
         {RIDER_1}=rider:rider-1,{RIDER_2}=rider:rider-2"
    ))
    .expect("test tokens are valid");
    app(AppState {
        pool,
        tokens,
        max_body_bytes: 4096,
    })
}

struct Reply {
    status: StatusCode,
    content_type: String,
    etag: Option<String>,
    replayed: bool,
    body: Value,
}

/// Sends one request; `body` is sent as JSON when present.
async fn send(
    app: &Router,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::post(path);
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
    send_raw(app, request).await
}

/// The contract every answer of these tests must keep.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    Contract::new(serde_json::to_value(command_api::openapi()).expect("the spec serializes"))
});

/// Sends `request`; its answer must be one the spec documents for the operation.
async fn send_raw(app: &Router, request: Request<Body>) -> Reply {
    let (method, uri) = (request.method().to_string(), request.uri().to_string());
    let response = app.clone().oneshot(request).await.expect("router answers");
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = parts.status;
    let content_type = header(header::CONTENT_TYPE.as_str()).unwrap_or_default();
    let etag = header(header::ETAG.as_str());
    let replayed = header("idempotency-replayed").is_some();
    let bytes = body.collect().await.expect("body reads").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    CONTRACT.assert_documented(&method, &uri, status.as_u16(), &body);
    Reply {
        status,
        content_type,
        etag,
        replayed,
        body,
    }
}

fn create_body() -> Value {
    json!({
        "delivery_id": DELIVERY,
        "order_ref": "order-1001",
        "customer_id": "customer-7",
        "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
        "dropoff": {"line": "Elm St 9", "lat": 52.51, "lon": 13.39},
    })
}

fn path(action: &str) -> String {
    format!("/deliveries/{DELIVERY}/{action}")
}

async fn create(app: &Router) {
    let reply = send(
        app,
        "/deliveries",
        Some(DISPATCHER),
        Some(create_body()),
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn assign(app: &Router, rider: &str) -> Reply {
    send(
        app,
        &path("assign"),
        Some(DISPATCHER),
        Some(json!({"rider_id": rider})),
        &[],
    )
    .await
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The stored history with what is random or clock-dependent left out, for snapshots.
async fn stored_events(pool: &PgPool) -> Value {
    let rows: Vec<(i64, String, Value, Value)> = sqlx::query_as(
        "select version, event_type, payload, metadata->'actor' from events order by global_position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    rows.into_iter()
        .map(|(version, event_type, data, actor)| {
            json!({"version": version, "type": event_type, "actor": actor, "data": data})
        })
        .collect()
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_delivery_walks_its_lifecycle_and_every_step_is_stored_with_its_outbox_record(
    pool: PgPool,
) {
    let app = test_app(pool.clone());
    let created = send(
        &app,
        "/deliveries",
        Some(DISPATCHER),
        Some(create_body()),
        &[],
    )
    .await;
    let assigned = assign(&app, "rider-1").await;
    let picked_up = send(&app, &path("pickup"), Some(RIDER_1), None, &[]).await;
    let completed = send(&app, &path("complete"), Some(RIDER_1), None, &[]).await;

    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(completed.etag.as_deref(), Some("\"4\""));
    let replies = json!([created.body, assigned.body, picked_up.body, completed.body]);
    insta::assert_json_snapshot!("lifecycle_responses", replies, {
        "[].events[].event_id" => "[event_id]",
        "[].events[].global_position" => "[position]",
    });
    insta::assert_json_snapshot!("lifecycle_stored_events", stored_events(&pool).await);

    // Every event has exactly one outbox record, keyed by delivery id, in version order.
    let outbox: Vec<(String, String, i64, Value)> = sqlx::query_as(
        "select aggregateid, type, (payload->>'version')::bigint, headers from outbox order by position",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox");
    assert_eq!(outbox.len(), 4);
    for (index, (key, event_type, version, headers)) in outbox.iter().enumerate() {
        assert_eq!(key, DELIVERY);
        assert_eq!(*version, index as i64 + 1);
        assert_eq!(headers["event_type"], json!(event_type));
        assert_eq!(headers["version"], json!(version.to_string()));
    }
    let same_ids: bool = sqlx::query_scalar(
        "select bool_and(o.id = e.event_id and (o.payload->>'recorded_at')::timestamptz = e.recorded_at \
                         and (o.payload->>'occurred_at')::timestamptz = e.occurred_at \
                         and o.payload->>'hash' = e.hash) \
         from outbox o join events e on e.event_id = o.id",
    )
    .fetch_one(&pool)
    .await
    .expect("join");
    assert!(same_ids, "outbox payload must be the stored envelope");

    // Each command continued the delivery's hash chain from the history it decided on.
    let mut conn = pool.acquire().await.expect("connection");
    let delivery_id = domain::DeliveryId::parse(DELIVERY).expect("a delivery id");
    let history = command_api::store::load(&mut conn, delivery_id)
        .await
        .expect("load");
    assert_eq!(history.len(), 4);
    assert_eq!(domain::verify_chain(&history), Ok(()));
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_rider_can_be_reassigned_until_pick_up_and_a_cancelled_delivery_stays_cancelled(
    pool: PgPool,
) {
    let app = test_app(pool.clone());
    create(&app).await;
    assert_eq!(assign(&app, "rider-1").await.status, StatusCode::OK);
    assert_eq!(assign(&app, "rider-2").await.status, StatusCode::OK);
    // The first rider is no longer assigned.
    let by_old_rider = send(&app, &path("pickup"), Some(RIDER_1), None, &[]).await;
    assert_eq!(by_old_rider.status, StatusCode::FORBIDDEN);

    let cancelled = send(
        &app,
        &path("cancel"),
        Some(DISPATCHER),
        Some(json!({"reason": "customer changed their mind"})),
        &[],
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    let pick_up = send(&app, &path("pickup"), Some(RIDER_2), None, &[]).await;
    assert_eq!(pick_up.status, StatusCode::CONFLICT);
    assert_eq!(pick_up.body["code"], "invalid-transition");
    insta::assert_json_snapshot!("reassigned_then_cancelled", stored_events(&pool).await);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn bad_input_gets_a_problem_response_and_appends_nothing(pool: PgPool) {
    let app = test_app(pool.clone());
    create(&app).await;
    let unknown = "/deliveries/0190f4c2-0000-7000-8000-000000000000/pickup";
    let huge = json!({"rider_id": "r".repeat(5000)});
    let raw_post = |path: &str, content_type: &str, body: &str| {
        Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {DISPATCHER}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .expect("request builds")
    };

    let mut problems = Vec::new();
    let cases: Vec<(&str, Reply)> = vec![
        ("malformed json", send_raw(&app, raw_post(&path("assign"), "application/json", "{\"rider_id\": ")).await),
        ("wrong field type", send(&app, &path("assign"), Some(DISPATCHER), Some(json!({"rider_id": 42})), &[]).await),
        ("unknown field", send(&app, &path("assign"), Some(DISPATCHER), Some(json!({"rider_id": "r1", "ride": "x"})), &[]).await),
        ("invalid coordinates", send(&app, "/deliveries", Some(DISPATCHER), Some(json!({"order_ref": "o-1", "customer_id": "c-1", "pickup": {"line": "a", "lat": 95.0, "lon": 0.0}, "dropoff": {"line": "b", "lat": 0.0, "lon": 0.0}})), &[]).await),
        ("not json content type", send_raw(&app, raw_post(&path("assign"), "text/plain", "{\"rider_id\": \"r1\"}")).await),
        ("body too large", send(&app, &path("assign"), Some(DISPATCHER), Some(huge), &[]).await),
        ("no token", send(&app, &path("assign"), None, Some(json!({"rider_id": "r1"})), &[]).await),
        ("wrong token", send(&app, &path("assign"), Some("not-a-token"), Some(json!({"rider_id": "r1"})), &[]).await),
        ("rider may not create", send(&app, "/deliveries", Some(RIDER_1), Some(create_body()), &[]).await),
        ("rider may not cancel", send(&app, &path("cancel"), Some(RIDER_1), Some(json!({"reason": "no"})), &[]).await),
        ("unassigned rider may not pick up", send(&app, &path("pickup"), Some(RIDER_2), None, &[]).await),
        ("unknown delivery", send(&app, unknown, Some(RIDER_1), None, &[]).await),
        ("malformed delivery id", send(&app, "/deliveries/not-a-uuid/pickup", Some(RIDER_1), None, &[]).await),
        ("created twice", send(&app, "/deliveries", Some(DISPATCHER), Some(create_body()), &[]).await),
        ("complete before pick up", send(&app, &path("complete"), Some(ADMIN), None, &[]).await),
        ("stale If-Match", send(&app, &path("assign"), Some(DISPATCHER), Some(json!({"rider_id": "r1"})), &[("if-match", "\"7\"")]).await),
        ("stale expected_version", send(&app, &path("cancel"), Some(DISPATCHER), Some(json!({"reason": "x", "expected_version": 0})), &[]).await),
        ("unparsable If-Match", send(&app, &path("assign"), Some(DISPATCHER), Some(json!({"rider_id": "r1"})), &[("if-match", "latest")]).await),
        ("bad correlation id", send(&app, &path("assign"), Some(DISPATCHER), Some(json!({"rider_id": "r1"})), &[("x-correlation-id", "abc")]).await),
    ];
    for (case, reply) in cases {
        assert_eq!(reply.content_type, "application/problem+json", "{case}");
        assert_eq!(reply.body["status"], json!(reply.status.as_u16()), "{case}");
        problems
            .push(json!({"case": case, "status": reply.status.as_u16(), "problem": reply.body}));
    }
    insta::assert_json_snapshot!("bad_input_problems", problems);
    // Only the one create is stored; nothing else, and no outbox record without its event.
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_idempotency_key_replays_the_first_response_and_refuses_another_request(pool: PgPool) {
    let app = test_app(pool.clone());
    let key = [("idempotency-key", "create-order-1001")];
    let first = send(
        &app,
        "/deliveries",
        Some(DISPATCHER),
        Some(create_body()),
        &key,
    )
    .await;
    let again = send(
        &app,
        "/deliveries",
        Some(DISPATCHER),
        Some(create_body()),
        &key,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed && !first.replayed);
    assert_eq!(first.body, again.body);
    assert_eq!(count(&pool, "events").await, 1);

    let mut other = create_body();
    other["order_ref"] = json!("order-2002");
    let reused = send(&app, "/deliveries", Some(DISPATCHER), Some(other), &key).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency-key-reused");

    // Keys belong to their caller: an admin's same key is a different request.
    let mut admin_body = create_body();
    admin_body["delivery_id"] = json!("0190f4c2-7d1e-7cc0-9d8e-000000000002");
    let admin = send(&app, "/deliveries", Some(ADMIN), Some(admin_body), &key).await;
    assert_eq!(admin.status, StatusCode::CREATED);
    assert!(!admin.replayed);
    assert_eq!(count(&pool, "events").await, 2);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn concurrent_commands_at_one_version_give_one_success_and_conflicts_for_the_rest(
    pool: PgPool,
) {
    let app = test_app(pool.clone());
    create(&app).await;
    let attempts = (0..50).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            send(
                &app,
                &path("assign"),
                Some(DISPATCHER),
                Some(json!({"rider_id": format!("rider-{i}")})),
                &[("if-match", "\"1\"")],
            )
            .await
        })
    });
    let replies = futures_join(attempts).await;
    let successes = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let conflicts = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT && r.body["code"] == "version-conflict")
        .count();
    assert_eq!((successes, conflicts), (1, 49));

    let versions: Vec<i64> = sqlx::query_scalar("select version from events order by version")
        .fetch_all(&pool)
        .await
        .expect("versions");
    assert_eq!(versions, vec![1, 2], "no gaps and no duplicates");
    assert_eq!(count(&pool, "outbox").await, 2);
}

async fn futures_join(tasks: impl Iterator<Item = tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        replies.push(task.await.expect("task runs"));
    }
    replies
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_database_refuses_to_change_or_remove_stored_events(pool: PgPool) {
    let app = test_app(pool.clone());
    create(&app).await;
    for statement in [
        "update events set event_type = 'delivery.completed'",
        "delete from events",
        "truncate events",
    ] {
        let error = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err("events are immutable");
        assert!(
            error.to_string().contains("events are immutable"),
            "{statement}: {error}"
        );
    }
    assert_eq!(count(&pool, "events").await, 1);
}
