//! The write database unavailable: a command gets a 503 problem with `Retry-After`, never a
//! 500, and the API recovers by itself once the database is back.

use crate::support::*;
use axum::http::StatusCode;
use command_api::Limits;
use command_api::serve::pool_options;
use e2e::eventually;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

#[tokio::test]
async fn a_database_that_refuses_connections_gets_503_with_retry_after() {
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres");
    let pool = pool_options(2, Duration::from_millis(300)).connect_lazy_with(options);
    let app = test_app(pool, Limits::default());
    let key = [("idempotency-key", "while-down")];
    let reply = send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(None)),
        &key,
    )
    .await;
    assert_unavailable(&reply, "database-unavailable");
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_exhausted_pool_gets_503_with_retry_after(
    _pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool_options(1, Duration::from_millis(500))
        .connect_with(connect)
        .await
        .expect("pool");
    let app = test_app(pool.clone(), Limits::default());
    let only = pool.acquire().await.expect("the one connection");
    let reply = send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(None)),
        &[],
    )
    .await;
    assert_unavailable(&reply, "database-unavailable");
    drop(only);
    let reply = send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(None)),
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    pool.close().await;
}

/// Ends every session of the test database but the caller's, as a Postgres restart does.
async fn terminate_backends(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_one(admin)
    .await
    .expect("terminate")
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_api_survives_its_database_sessions_being_terminated(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = command_api::serve::pool_options(5, Duration::from_secs(5))
        .connect_with(connect.clone())
        .await
        .expect("pool");
    drop(pool_options);
    let admin_pool = PgPool::connect_with(connect).await.expect("admin");
    let app = test_app(pool.clone(), Limits::default());
    let created = send(
        &app,
        "/deliveries",
        DISPATCHER,
        Some(&create_body(Some(DELIVERY))),
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);

    // A command in the middle of its transaction when its session is terminated ...
    let mut admin = admin_pool.begin().await.expect("admin transaction");
    sqlx::query("lock table events in exclusive mode")
        .execute(&mut *admin)
        .await
        .expect("lock");
    let key = [("idempotency-key", "assign-during-restart")];
    let body = json!({"rider_id": "rider-1"});
    let command = spawn_send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(body.clone()),
        &key,
    );
    wait_for_lock_waiters(&admin_pool, 1).await;
    assert!(terminate_backends(&mut admin).await >= 1);
    admin.rollback().await.expect("release");
    // ... gets a 503 it may retry, not a 500.
    let interrupted = command.await.expect("command task");
    assert_unavailable(&interrupted, "database-unavailable");

    // Every idle pooled session is dead too. The next commands succeed without a restart of
    // anything: dead connections are replaced as they are taken from the pool.
    let mut admin = admin_pool.acquire().await.expect("admin");
    terminate_backends(&mut admin).await;
    let retried = send(
        &app,
        &path(DELIVERY, "assign"),
        DISPATCHER,
        Some(&body),
        &key,
    )
    .await;
    assert_eq!(
        (retried.status, retried.replayed),
        (StatusCode::OK, false),
        "{}",
        retried.body
    );
    let picked_up = send(&app, &path(DELIVERY, "pickup"), RIDER_1, None, &[]).await;
    assert_eq!(picked_up.status, StatusCode::OK, "{}", picked_up.body);
    drop(admin);
    pool.close().await;
    admin_pool.close().await;
}

/// One HTTP/1.1 exchange over a plain socket; the status line's code.
async fn http_status(address: &str, request: String) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn the_api_starts_and_answers_while_its_database_is_down() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: command_api::serve::ServeConfig,
    }
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let (database_port, api_port) = (free(), free());
    let address = format!("127.0.0.1:{api_port}");
    let cli = <Cli as clap::Parser>::try_parse_from([
        "serve",
        "--listen",
        &address,
        "--tokens",
        "startup-dispatcher-token=dispatcher:desk-1",
    ])
    .expect("valid flags");
    // Nothing listens on the database's port: Postgres is not up yet.
    let url = format!("postgres://postgres@127.0.0.1:{database_port}/nowhere");
    let server = tokio::spawn(async move { command_api::serve::run(&url, cli.serve).await });

    let health = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string();
    let answered = eventually(Duration::from_secs(20), "the API to answer", || async {
        if http_status(&address, health.clone()).await == Some(200) {
            return Some(true);
        }
        // Serve gave up: stop waiting, and show why below.
        server.is_finished().then_some(false)
    })
    .await;
    assert!(
        answered,
        "serve exited while the database was down: {:?}",
        server.await
    );
    let body = create_body(None).to_string();
    let create = format!(
        "POST /deliveries HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer startup-dispatcher-token\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_status(&address, create).await, Some(503));
    assert!(!server.is_finished(), "serve must keep running");
    server.abort();
}
