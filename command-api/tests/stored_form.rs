//! What the command API stores is what the audit re-hashes: against a real Postgres, every
//! event of every command the API accepts verifies as read back from the event store (the same
//! columns and decoding `projector audit verify` uses, then `domain::verify_chain`). And no
//! event is recorded before it happened.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use command_api::{AppState, Tokens, app, store};
use domain::{DeliveryId, verify_chain};
use e2e::FreshDatabase;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::string::string_regex;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;
use uuid::Uuid;

const DISPATCHER: &str = "dispatcher-token";

fn test_app(pool: PgPool) -> Router {
    let tokens = Tokens::parse(&format!("{DISPATCHER}=dispatcher:desk-1")).expect("valid tokens");
    app(AppState {
        pool,
        tokens,
        max_body_bytes: 64 * 1024,
    })
}

/// POSTs `body` as it is spelled (not re-serialized: the spelling is what is under test).
async fn post(app: &Router, path: &str, body: String) -> (u16, Value) {
    let request = Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {DISPATCHER}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn create_body(id: Uuid, line: &str, numbers: [&str; 4]) -> String {
    let [a, b, c, d] = numbers;
    format!(
        r#"{{"delivery_id":"{id}","order_ref":"order-1","customer_id":"customer-1",
            "pickup":{{"line":{line},"lat":{a},"lon":{b}}},
            "dropoff":{{"line":{line},"lat":{c},"lon":{d}}}}}"#
    )
}

async fn stored_chain(pool: &PgPool, id: Uuid) -> Vec<domain::EventEnvelope> {
    let mut conn = pool.acquire().await.expect("connection");
    store::load(&mut conn, DeliveryId::from_uuid(id))
        .await
        .expect("load")
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_delivery_created_at_negative_zero_verifies_as_stored(pool: PgPool) {
    let app = test_app(pool.clone());
    let id = Uuid::now_v7();
    let body = create_body(id, r#""Null Island""#, ["-0.0", "-0", "-0e0", "-0.000"]);
    let (status, reply) = post(&app, "/deliveries", body).await;
    assert_eq!(status, 201, "{reply}");
    let stored = stored_chain(&pool, id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(verify_chain(&stored), Ok(()));
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn text_with_a_nul_character_is_refused_before_the_store(pool: PgPool) {
    // jsonb cannot hold U+0000: such text must be refused as invalid input (422), not fail
    // in the database (500).
    let app = test_app(pool.clone());
    let id = Uuid::now_v7();
    let nul = r#""Main St\u0000 1""#;
    let ok = ["52.5", "13.4", "52.5", "13.4"];
    for body in [
        create_body(id, nul, ok),
        create_body(id, r#""Main St 1""#, ok).replace("order-1", r"order\u0000-1"),
        create_body(id, r#""Main St 1""#, ok).replace("customer-1", r"\u0000"),
    ] {
        let (status, reply) = post(&app, "/deliveries", body).await;
        assert_eq!(status, 422, "{reply}");
        assert_eq!(reply["code"], "invalid-body");
    }
    let (status, _) = post(&app, "/deliveries", create_body(id, r#""Main St 1""#, ok)).await;
    assert_eq!(status, 201);
    for (path, body) in [
        ("cancel", r#"{"reason":"gone\u0000"}"#),
        ("assign", r#"{"rider_id":"rider-\u0000"}"#),
    ] {
        let (status, reply) = post(&app, &format!("/deliveries/{id}/{path}"), body.into()).await;
        assert_eq!(status, 422, "{path}: {reply}");
    }
    assert_eq!(
        stored_chain(&pool, id).await.len(),
        1,
        "nothing else stored"
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn no_event_is_recorded_before_it_happened_under_concurrent_commands(pool: PgPool) {
    let app = test_app(pool.clone());
    let ids: Vec<Uuid> = (0..24).map(|_| Uuid::now_v7()).collect();
    let ok = ["52.5", "13.4", "52.5", "13.4"];
    let mut racers = Vec::new();
    for id in &ids {
        let (app, id) = (app.clone(), *id);
        racers.push(tokio::spawn(async move {
            let (status, _) =
                post(&app, "/deliveries", create_body(id, r#""Main St 1""#, ok)).await;
            assert_eq!(status, 201);
            let assign = r#"{"rider_id":"rider-1"}"#.to_owned();
            let (status, _) = post(&app, &format!("/deliveries/{id}/assign"), assign).await;
            assert_eq!(status, 200);
            let cancel = r#"{"reason":"no longer needed"}"#.to_owned();
            let (status, _) = post(&app, &format!("/deliveries/{id}/cancel"), cancel).await;
            assert_eq!(status, 200);
        }));
    }
    for racer in racers {
        racer.await.expect("racer succeeds");
    }
    let (events, early): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where recorded_at < occurred_at) from events",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(events, 72);
    assert_eq!(early, 0, "events recorded before they happened");
    // The published copy says the same.
    let early_published: i64 = sqlx::query_scalar(
        "select count(*) from outbox \
         where (payload->>'recorded_at')::timestamptz < (payload->>'occurred_at')::timestamptz",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(early_published, 0);
}

// ---------------------------------------------------------------------------------------------
// Any accepted command: generated spellings of numbers and text, through the API and Postgres.
// ---------------------------------------------------------------------------------------------

/// Spellings of numbers that have broken hashing, parsing or storage somewhere before.
const NUMBERS: [&str; 24] = [
    "-0.0",
    "-0",
    "0",
    "0.000",
    "-0e-5",
    "1e-7",
    "-1E-7",
    "4.9e-324",
    "1e-320",
    "2.2250738585072014e-308",
    "0.000000000000000000000000000000000000000000001",
    "90",
    "-90.0",
    "90.000000000000000000001",
    "89.99999999999999999999999",
    "180",
    "-180.0000",
    "1.7976931348623157e308",
    "1e21",
    "12.3456789012345678901234567890",
    "0.1",
    "1E1",
    "52.52",
    "-13.405",
];

/// Mostly numbers within `limit` (the command is then valid), some beyond (it is refused).
fn number(limit: f64) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(NUMBERS.to_vec()).prop_map(str::to_owned),
        3 => (-limit..=limit).prop_map(|n| n.to_string()),
        2 => (-limit..=limit).prop_map(|n| format!("{n:e}")),
        1 => any::<f64>().prop_map(|n| format!("{n:e}")),
        2 => "-?[1-8]?[0-9]\\.[0-9]{1,60}",
        2 => "-?0\\.0{0,30}[1-9][0-9]{0,20}(e-[0-9]{1,3})?",
    ]
}

/// Text spelled as JSON: raw UTF-8 as serde_json writes it, or every character escaped
/// (astral ones as surrogate pairs). Sometimes with characters the domain must refuse.
fn text(max: usize) -> impl Strategy<Value = String> {
    let printable = format!("[\"\\\\/a-zé€😀𝄞\u{200b}\u{feff}\u{2028}\\PC]{{1,{max}}}");
    let with_control = "[a-z\u{0}\u{1}\n\t\u{7f}\u{85}]{1,8}".to_owned();
    (
        prop_oneof![9 => string_regex(&printable).expect("a valid pattern"), 1 => string_regex(&with_control).expect("a valid pattern")],
        any::<bool>(),
    )
        .prop_map(|(text, escape_all): (String, bool)| {
            if escape_all {
                let units: String = text
                    .encode_utf16()
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect();
                format!("\"{units}\"")
            } else {
                Value::String(text).to_string()
            }
        })
}

#[derive(Debug, Clone)]
struct Case {
    line: String,
    numbers: [String; 4],
    reason: String,
}

fn case() -> impl Strategy<Value = Case> {
    (
        text(300),
        [number(90.0), number(180.0), number(90.0), number(180.0)],
        text(500),
    )
        .prop_map(|(line, numbers, reason)| Case {
            line,
            numbers,
            reason,
        })
}

/// Runs one case; counts the commands the API accepted.
async fn check(
    app: &Router,
    pool: &PgPool,
    case: Case,
    accepted: &AtomicUsize,
) -> Result<(), TestCaseError> {
    let id = Uuid::now_v7();
    let numbers = case.numbers.each_ref().map(String::as_str);
    let (status, reply) = post(app, "/deliveries", create_body(id, &case.line, numbers)).await;
    prop_assert!(status == 201 || status == 422, "create: {status} {reply}");
    if status == 201 {
        accepted.fetch_add(1, Ordering::Relaxed);
        let cancel = format!(r#"{{"reason":{}}}"#, case.reason);
        let (status, reply) = post(app, &format!("/deliveries/{id}/cancel"), cancel).await;
        prop_assert!(status == 200 || status == 422, "cancel: {status} {reply}");
        accepted.fetch_add(usize::from(status == 200), Ordering::Relaxed);
    }
    let stored = stored_chain(pool, id).await;
    prop_assert_eq!(verify_chain(&stored), Ok(()), "{:?}", stored);
    Ok(())
}

/// A fresh database of its own: proptest drives the cases, so this is a plain test with its
/// own runtime rather than a `#[sqlx::test]`.
#[test]
fn every_event_of_every_accepted_command_re_hashes_to_its_stored_hash() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let database = runtime.block_on(FreshDatabase::create("stored_form", &migrations::WRITE));
    let pool = database.pool.clone();
    let app = test_app(pool.clone());
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(check(&app, &pool, case, &accepted))
    });
    runtime.block_on(database.remove());
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Most generated commands are valid: the property is not vacuous.
    assert!(
        accepted.load(Ordering::Relaxed) >= 32,
        "only {accepted:?} accepted"
    );
}
