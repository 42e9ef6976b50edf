//! The query API's OpenAPI contract: valid OpenAPI 3.1, served exactly as generated, every
//! route in it and nothing else, with its docs page served from the binary. A change to the
//! contract shows in review as a change of `snapshots/api__spec.snap`.
//! (That every answer of the other tests is documented is checked by `support::request`.)

use crate::support::{get_as, test_app};
use axum::http::StatusCode;
use e2e::Contract;
use e2e::contract::{assert_router_serves_the_spec, assert_valid_openapi_3_1};
use serde_json::Value;
use sqlx::PgPool;
use std::path::Path;

fn spec() -> Value {
    serde_json::to_value(query_api::openapi()).expect("the spec serializes")
}

#[test]
fn the_spec_is_valid_openapi_3_1() {
    assert_valid_openapi_3_1("query-api", &spec());
}

#[test]
fn the_spec_is_the_reviewed_one() {
    crate::snapshot("spec", &spec());
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_router_serves_exactly_the_operations_of_the_spec(pool: PgPool) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let app = test_app(pool).await;
    // No exceptions: the live streams, the dashboard's session and its page are in it too.
    assert_router_serves_the_spec(&app, &Contract::new(spec()), &src, &[]).await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_spec_and_its_docs_page_are_served_without_a_token(pool: PgPool) {
    let app = test_app(pool).await;
    let served = get_as(&app, "/openapi.json", None).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.body, spec());
    let page = get_as(&app, "/docs/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("swagger-ui-bundle.js"));
    // Everything the page loads comes from this server: no CDN.
    assert!(!page.text.contains("src=\"http") && !page.text.contains("href=\"http"));
    let script = get_as(&app, "/docs/swagger-ui-bundle.js", None).await;
    assert_eq!(script.status, StatusCode::OK);
}
