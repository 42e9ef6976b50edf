//! The query API rides out its database going away: reads answer 503 with `Retry-After` while
//! it is gone, the freshness watcher reconnects on its own, and nothing needs a restart.

use crate::faults::{Bounded, Proxy, assert_unavailable, bounded_app};
use crate::freshness::{PICK_UP_D2, PICK_UP_D2_HISTORY};
use crate::support::{D1, D2, TOKEN, get, project, seed};
use axum::http::StatusCode;
use e2e::eventually;
use query_api::{AppState, FreshnessWatch, PoolBounds, Tokens, app};
use sqlx::PgPool;
use std::time::Duration;

/// Well above what reconnecting takes, well below the 30 s a waiter may wait.
const DEADLINE: Duration = Duration::from_secs(15);

#[sqlx::test(migrator = "migrations::READ")]
async fn with_the_read_database_unreachable_every_read_is_a_503_with_retry_after(pool: PgPool) {
    seed(&pool).await;
    // A port nothing listens on: connections are refused, as while Postgres is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let bounds = PoolBounds {
        acquire_timeout: Duration::from_millis(300),
        ..Bounded::default().pool
    };
    let unreachable = bounds.pool_options().connect_lazy_with(
        bounds.connect_options(
            (*pool.connect_options())
                .clone()
                .host("127.0.0.1")
                .port(closed.port()),
        ),
    );
    // The watch started while the database was up; the reads find it gone.
    let freshness = FreshnessWatch::listen(&pool).await.expect("LISTEN");
    let app = app(AppState {
        pool: unreachable,
        tokens: Tokens::parse(TOKEN).expect("token"),
        max_wait: Duration::from_secs(5),
        freshness,
        live: Default::default(),
    });
    for path in [
        format!("/deliveries/{D1}"),
        format!("/deliveries/{D1}/history"),
        format!("/deliveries/{D1}?as_of=2026-03-02T09:10:00Z"),
        format!("/deliveries/{D1}?min_version=1&wait_ms=300"),
        "/deliveries?status=created".to_owned(),
        "/riders/rider-1/deliveries".to_owned(),
        "/stats".to_owned(),
    ] {
        let reply = get(&app, &path).await;
        assert_unavailable(&reply, "database-unavailable", &path);
    }
    // Liveness does not depend on the database.
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_wait_spanning_a_database_restart_completes_fresh_without_restarting_the_api(
    pool: PgPool,
) {
    seed(&pool).await;
    let proxy = Proxy::start(&pool).await;
    let bounded = Bounded {
        pool: PoolBounds {
            acquire_timeout: Duration::from_millis(300),
            ..Bounded::default().pool
        },
        ..Bounded::default()
    };
    let (app, watch) = bounded_app(proxy.options(&pool), bounded).await;
    let wait_for_d2 = || {
        let app = app.clone();
        tokio::spawn(async move { get(&app, &format!("/deliveries/{D2}?min_version=3")).await })
    };
    // One read waits from before the restart, through it.
    let spanning = wait_for_d2();
    eventually(DEADLINE, "the read to wait", || async {
        (watch.waiting() == 1).then_some(())
    })
    .await;
    let commits = watch.subscribe();
    let before = *commits.borrow();

    // "Postgres restarts": every connection is cut and new ones are refused for a while.
    proxy.down();
    eventually(DEADLINE, "the listener to notice", || async {
        (!watch.is_listening()).then_some(())
    })
    .await;
    let reply = get(&app, &format!("/deliveries/{D1}")).await;
    assert_unavailable(
        &reply,
        "database-unavailable",
        "a read while the database is down",
    );
    // Another arrives while the database is down: its first read fails, and it waits on
    // rather than failing (a restart usually takes less than a wait).
    let arriving = wait_for_d2();
    eventually(
        DEADLINE,
        "the read arriving in the outage to wait",
        || async { (watch.waiting() == 2).then_some(()) },
    )
    .await;
    assert!(!spanning.is_finished(), "the wait rides out the outage");

    proxy.up().await;
    eventually(DEADLINE, "the listener to reconnect on its own", || async {
        (watch.sessions() >= 2 && watch.is_listening()).then_some(())
    })
    .await;
    // Nothing was notified, yet waiters were told to re-read: what was committed while
    // nobody listened is not missed.
    assert_ne!(*commits.borrow(), before);

    // A version written after the reconnect answers the wait, fresh.
    project(&pool, PICK_UP_D2, &format!("{D2}:3")).await;
    project(&pool, PICK_UP_D2_HISTORY, &format!("{D2}:3")).await;
    for waiter in [spanning, arriving] {
        let fresh = tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("answered well before its 30 s limit")
            .expect("task");
        assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
        assert_eq!(fresh.body["version"], 3);
        assert_eq!(fresh.body["status"], "picked_up");
    }

    // Plain reads and new waits work again, from the same app.
    let plain = get(&app, &format!("/deliveries/{D1}")).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
    let history = get(&app, &format!("/deliveries/{D2}/history?min_version=3")).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn after_its_backends_are_terminated_the_api_listens_and_reads_again(pool: PgPool) {
    seed(&pool).await;
    let (app, watch) = bounded_app((*pool.connect_options()).clone(), Bounded::default()).await;
    // The app's pool now holds an idle connection, which dies below like the LISTEN one.
    assert_eq!(
        get(&app, &format!("/deliveries/{D1}")).await.status,
        StatusCode::OK
    );
    let waiter = {
        let app = app.clone();
        tokio::spawn(async move { get(&app, &format!("/deliveries/{D2}?min_version=3")).await })
    };
    eventually(DEADLINE, "the read to wait", || async {
        (watch.waiting() == 1).then_some(())
    })
    .await;

    // What clients see of an immediate restart: the server ends every session.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert!(terminated.len() >= 2, "the app's connections were there");

    eventually(DEADLINE, "the listener to reconnect on its own", || async {
        (watch.sessions() >= 2 && watch.is_listening()).then_some(())
    })
    .await;
    project(&pool, PICK_UP_D2, &format!("{D2}:3")).await;
    let fresh = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("answered well before its 30 s limit")
        .expect("task");
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
    assert_eq!(fresh.body["version"], 3);
    let plain = get(&app, &format!("/deliveries/{D1}")).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
}
