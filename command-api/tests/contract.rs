//! The command API's OpenAPI contract: valid OpenAPI 3.1, served exactly as generated, every
//! route in it and nothing else, with its docs page served from the binary. A change to the
//! contract shows in review as a change of `snapshots/contract__spec.snap`.
//! (That every answer of the other tests is documented is checked by their request helpers.)

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use command_api::{AppState, Tokens, app};
use e2e::Contract;
use e2e::contract::{assert_router_serves_the_spec, assert_valid_openapi_3_1};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use std::path::Path;
use tower::ServiceExt;

fn spec() -> Value {
    serde_json::to_value(command_api::openapi()).expect("the spec serializes")
}

/// The app over a pool that never connects: nothing here gets past authentication.
fn app_without_database() -> Router {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("a lazy pool");
    let tokens = Tokens::parse("spec-token=dispatcher:desk-1").expect("a valid token list");
    app(AppState {
        pool,
        tokens,
        max_body_bytes: 4096,
    })
}

async fn get(app: &Router, path: &str) -> (StatusCode, String, Vec<u8>) {
    let request = Request::get(path).body(Body::empty()).expect("a request");
    let response = app.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), 10 << 20)
        .await
        .expect("a body");
    (status, content_type, body.to_vec())
}

#[test]
fn the_spec_is_valid_openapi_3_1() {
    assert_valid_openapi_3_1("command-api", &spec());
}

#[test]
fn the_spec_is_the_reviewed_one() {
    insta::assert_json_snapshot!("spec", spec());
}

#[tokio::test]
async fn the_router_serves_exactly_the_operations_of_the_spec() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_router_serves_the_spec(&app_without_database(), &Contract::new(spec()), &src, &[]).await;
}

#[tokio::test]
async fn the_spec_and_its_docs_page_are_served_without_a_token() {
    let app = app_without_database();
    let (status, content_type, body) = get(&app, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let served: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(served, spec());

    let (status, _, _) = get(&app, "/docs").await;
    assert!(status.is_redirection(), "/docs leads to the page: {status}");
    let (status, content_type, page) = get(&app, "/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = String::from_utf8(page).expect("UTF-8");
    // Everything the page loads comes from this server: no CDN.
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "{page}"
    );
    for script in ["swagger-ui-bundle.js", "swagger-initializer.js"] {
        assert!(page.contains(script), "the page loads {script}");
        let (status, _, body) = get(&app, &format!("/docs/{script}")).await;
        assert_eq!(status, StatusCode::OK, "{script}");
        assert!(!body.is_empty());
    }
    let (_, _, initializer) = get(&app, "/docs/swagger-initializer.js").await;
    let initializer = String::from_utf8(initializer).expect("UTF-8");
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("authorization", "Bearer spec-token")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// JSON Schema's `integer` (the spec's type of `expected_version`) counts `1.0`; the fuzzer
/// found it refused as `invalid-body`.
#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_integer_written_with_a_fraction_is_the_integer(pool: sqlx::PgPool) {
    let tokens = Tokens::parse("spec-token=dispatcher:desk-1").expect("a valid token list");
    let app = app(AppState {
        pool,
        tokens,
        max_body_bytes: 4096,
    });
    let id = "0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e";
    let address = serde_json::json!({"line": "Main St 1", "lat": 52.5, "lon": 13.4});
    let create = serde_json::json!({"delivery_id": id, "order_ref": "o-1", "customer_id": "c-1",
        "pickup": address, "dropoff": address});
    assert_eq!(
        post(&app, "/deliveries", create).await.0,
        StatusCode::CREATED
    );
    let assign = format!("/deliveries/{id}/assign");
    let (status, body) = post(
        &app,
        &assign,
        serde_json::json!({"rider_id": "r-1", "expected_version": 1.5}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid-body"))
    );
    let (status, body) = post(
        &app,
        &assign,
        serde_json::json!({"rider_id": "r-1", "expected_version": 1.0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
}
