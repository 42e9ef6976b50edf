//! No crowd stalls the query API: waiters are bounded, requests past the concurrency limit are
//! shed, and slow reads end at the statement or request timeout. Every refusal is a 503 problem
//! with `Retry-After`, given at once.

use crate::faults::{Bounded, assert_unavailable, bounded_app};
use crate::support::{D1, D2, D3, get, project, seed};
use axum::http::StatusCode;
use e2e::eventually;
use query_api::{HttpBounds, PoolBounds};
use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;

/// Well above what any of these steps takes, well below the 30 s the waiters may wait.
const DEADLINE: Duration = Duration::from_secs(10);

#[sqlx::test(migrator = "migrations::READ")]
async fn a_crowd_of_waiters_is_bounded_and_plain_reads_go_on_meanwhile(pool: PgPool) {
    seed(&pool).await;
    // Two connections for reads (the third LISTENs) against eight waiters: a waiter that held
    // a connection while waiting would starve the plain read below.
    let bounded = Bounded {
        pool: PoolBounds {
            connections: 3,
            ..Bounded::default().pool
        },
        max_waiters: 8,
        ..Bounded::default()
    };
    let (app, watch) = bounded_app((*pool.connect_options()).clone(), bounded).await;

    // Twenty reads at once for a version that is not there, each willing to wait 30 s.
    let crowd: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(
                async move { get(&app, &format!("/deliveries/{D2}?min_version=1000")).await },
            )
        })
        .collect();

    // The twelve past the bound are refused at once; the eight within it wait.
    eventually(DEADLINE, "the excess waiters to be refused", || async {
        (crowd.iter().filter(|w| w.is_finished()).count() >= 12).then_some(())
    })
    .await;
    let (refused, waiting): (Vec<_>, Vec<_>) = crowd.into_iter().partition(|w| w.is_finished());
    assert_eq!((refused.len(), waiting.len()), (12, 8));
    assert_eq!(watch.waiting(), 8);
    for reply in refused {
        let reply = reply.await.expect("task");
        assert_unavailable(&reply, "too-many-waiters", "a waiter past the bound");
    }

    // A plain read is answered while every waiter still waits.
    let plain = tokio::time::timeout(DEADLINE, get(&app, &format!("/deliveries/{D1}")))
        .await
        .expect("a plain read is answered while the waiters hold");
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the plain read came back before any waiter"
    );

    // And the waiters still get what they waited for.
    let moved = "update deliveries set version = 1000 \
         where delivery_id = '0190f4c2-0000-7000-8000-000000000002'";
    project(&pool, moved, &format!("{D2}:1000")).await;
    for waiter in waiting {
        let reply = tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("answered once the version is there")
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["version"], 1000);
    }
    assert_eq!(watch.waiting(), 0, "every permit is given back");
}

/// Takes the `deliveries` table so that every read of it blocks until the transaction ends.
async fn block_reads(pool: &PgPool) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("lock table deliveries in access exclusive mode")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// Reads of this database blocked behind `block_reads`.
async fn blocked_reads(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

#[sqlx::test(migrator = "migrations::READ")]
async fn requests_past_the_concurrency_limit_are_shed_at_once(pool: PgPool) {
    seed(&pool).await;
    let bounded = Bounded {
        http: HttpBounds {
            max_concurrent_requests: 2,
            ..Bounded::default().http
        },
        ..Bounded::default()
    };
    let (app, _watch) = bounded_app((*pool.connect_options()).clone(), bounded).await;

    let lock = block_reads(&pool).await;
    let held: Vec<_> = [D1, D3]
        .into_iter()
        .map(|id| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, &format!("/deliveries/{id}")).await })
        })
        .collect();
    eventually(DEADLINE, "two reads to be in flight", || async {
        (blocked_reads(&pool).await == 2).then_some(())
    })
    .await;

    let shed = get(&app, "/stats").await;
    assert_unavailable(&shed, "overloaded", "a third request");
    // Health checks and unknown paths do not count against the limit.
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
    assert_eq!(get(&app, "/nowhere").await.status, StatusCode::NOT_FOUND);

    lock.commit().await.expect("release the table");
    for read in held {
        let reply = read.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    // Their permits are back.
    assert_eq!(get(&app, "/stats").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_blocked_read_ends_at_the_statement_timeout_or_the_request_timeout(pool: PgPool) {
    seed(&pool).await;
    let statement_bound = Bounded {
        pool: PoolBounds {
            statement_timeout: Duration::from_millis(200),
            ..Bounded::default().pool
        },
        ..Bounded::default()
    };
    let (statement_app, _w1) =
        bounded_app((*pool.connect_options()).clone(), statement_bound).await;
    let request_bound = Bounded {
        http: HttpBounds {
            request_timeout: Duration::from_millis(200),
            ..Bounded::default().http
        },
        ..Bounded::default()
    };
    let (request_app, _w2) = bounded_app((*pool.connect_options()).clone(), request_bound).await;

    // The lock outlives both reads, so only their own bounds can end them.
    let lock = block_reads(&pool).await;
    let path = format!("/deliveries/{D1}");
    let cancelled = get(&statement_app, &path).await;
    assert_unavailable(&cancelled, "read-timed-out", "past the statement timeout");
    let cut = get(&request_app, &path).await;
    assert_unavailable(&cut, "request-timed-out", "past the request timeout");
    lock.commit().await.expect("release the table");

    assert_eq!(get(&statement_app, &path).await.status, StatusCode::OK);
    assert_eq!(get(&request_app, &path).await.status, StatusCode::OK);
}
