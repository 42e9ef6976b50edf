//! The query API's login can read the query tables and nothing more.

use crate::support::{D1, get, seed};
use axum::http::StatusCode;
use query_api::{AppState, FreshnessWatch, Tokens, app};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// Roles are cluster-wide: one name for this test only, and ensured idempotently.
const LOGIN: &str = "query_api_test_reader";

#[sqlx::test(migrator = "migrations::READ")]
async fn the_reader_login_can_select_but_not_change_a_query_table(pool: PgPool) {
    seed(&pool).await;
    migrations::ensure_reader_login(&pool, LOGIN)
        .await
        .expect("login created");
    // The same test database, as the reader (trust authentication needs no password).
    let options = (*pool.connect_options()).clone().username(LOGIN);
    let reader = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("reader connects");
    let who: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&reader)
        .await
        .expect("select works");
    assert_eq!(who, LOGIN);
    let rows: i64 = sqlx::query_scalar("select count(*) from deliveries")
        .fetch_one(&reader)
        .await
        .expect("select works");
    assert_eq!(rows, 7);

    for statement in [
        "insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff, \
         created_at, version, updated_at) values ('0190f4c2-0000-7000-8000-0000000000aa', \
         'created', 'o', 'c', '{}', '{}', now(), 1, now())",
        "update deliveries set version = version + 1",
        "delete from delivery_history",
    ] {
        let error = sqlx::query(statement)
            .execute(&reader)
            .await
            .expect_err("the reader cannot write");
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
        assert!(error.to_string().contains("permission denied"), "{error}");
    }

    // And the whole API works through it, notifications included.
    let freshness = FreshnessWatch::listen(&reader)
        .await
        .expect("LISTEN as reader");
    let app = app(AppState {
        pool: reader.clone(),
        tokens: Tokens::parse(crate::support::TOKEN).expect("token"),
        max_wait: Duration::from_secs(1),
        freshness,
        live: Default::default(),
    });
    let reply = get(&app, &format!("/deliveries/{D1}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(get(&app, "/stats").await.status, StatusCode::OK);
    drop(app);
    reader.close().await;
}
