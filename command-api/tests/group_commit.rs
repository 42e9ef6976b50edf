//! Group commit (`command_api::group_commit`): commands without an idempotency key that queue
//! while a statement runs are written together by the next one, in one transaction, and each
//! gets its own outcome. The tests hold the events table locked so that commands queue
//! behind a writer for as long as the test wants, and poll for the queue instead of sleeping.

use command_api::context::CommandContext;
use command_api::error::ApiError;
use command_api::serve::connect_options;
use command_api::service::{CommandService, Outcome, Submission};
use domain::{Actor, Address, Command, CustomerId, DeliveryId, OrderRef, RiderId, Role};
use e2e::db::hold_appends;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::time::{Duration, Instant};
use uuid::Uuid;

const RACERS: usize = 16;

/// One writer, so that what queues behind it is written by its next statement.
fn one_writer(pool: &PgPool) -> CommandService {
    CommandService::with_group_commit(pool.clone(), Duration::from_secs(60), 1)
}

fn dispatcher() -> CommandContext {
    CommandContext::new(Actor::new(Role::Dispatcher, "desk-1"), "/deliveries")
}

fn create(delivery_id: DeliveryId) -> Submission {
    let address = Address::new("Main St 1", 52.52, 13.405).expect("valid address");
    let command = Command::Create {
        delivery_id,
        order_ref: OrderRef::parse("order-1").expect("valid"),
        customer_id: CustomerId::parse("customer-1").expect("valid"),
        pickup: address.clone(),
        dropoff: address,
    };
    Submission::new(delivery_id, command)
}

fn assign(delivery_id: DeliveryId, rider: &str) -> Submission {
    let command = Command::AssignRider {
        rider_id: RiderId::parse(rider).expect("valid"),
    };
    Submission::new(delivery_id, command)
}

fn new_delivery() -> DeliveryId {
    DeliveryId::from_uuid(Uuid::now_v7())
}

/// Polls `condition` until it holds, or fails the test after 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a statement waits for the lock on `events`: the writer is blocked on it.
async fn writer_blocked(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from pg_locks \
         where relation = 'events'::regclass and not granted)",
    )
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}

async fn queued(service: &CommandService) -> usize {
    service.group_commit().expect("group commit is on").queued()
}

/// Holds the events table, gets one command into the writer's statement (blocked on the
/// lock), and returns the lock and that command.
async fn block_the_writer(
    pool: &PgPool,
    service: &CommandService,
) -> (
    Transaction<'static, Postgres>,
    tokio::task::JoinHandle<Result<Outcome, ApiError>>,
) {
    let lock = hold_appends(pool).await;
    let first = {
        let service = service.clone();
        tokio::spawn(async move { service.handle(&dispatcher(), create(new_delivery())).await })
    };
    eventually("the writer waits for the lock", || writer_blocked(pool)).await;
    (lock, first)
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn queued_commands_share_one_transaction_and_a_lost_race_fails_only_its_own(pool: PgPool) {
    let service = one_writer(&pool);
    let contested = new_delivery();
    service
        .handle(&dispatcher(), create(contested))
        .await
        .expect("created");
    let (lock, first) = block_the_writer(&pool, &service).await;

    // RACERS assigns that all decided from version 1 of one delivery, and RACERS creates of
    // deliveries of their own, all queued for the same statement.
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let service = service.clone();
        racers.push(tokio::spawn(async move {
            service
                .handle(&dispatcher(), assign(contested, &format!("rider-{i}")))
                .await
        }));
    }
    let mut creates = Vec::new();
    for _ in 0..RACERS {
        let service = service.clone();
        let id = new_delivery();
        creates.push((
            id,
            tokio::spawn(async move { service.handle(&dispatcher(), create(id)).await }),
        ));
    }
    eventually("every command is queued", || async {
        queued(&service).await == 2 * RACERS
    })
    .await;
    lock.rollback().await.expect("release");
    first
        .await
        .expect("joins")
        .expect("the first command is accepted");

    let (mut won, mut lost) = (0, 0);
    for racer in racers {
        match racer.await.expect("joins") {
            Ok(Outcome::Accepted(accepted)) => {
                assert_eq!(accepted.version, 2);
                won += 1;
            }
            Err(ApiError::VersionConflict { expected, actual }) => {
                assert_eq!((expected, actual), (1, 2));
                lost += 1;
            }
            other => panic!("a racer got {other:?}"),
        }
    }
    assert_eq!((won, lost), (1, RACERS - 1), "one racer per version wins");
    let mut created = Vec::new();
    for (id, create) in creates {
        match create.await.expect("joins") {
            Ok(Outcome::Accepted(accepted)) => assert_eq!(accepted.version, 1),
            other => panic!("a create beside the race got {other:?}"),
        }
        created.push(id.as_uuid());
    }

    // The winner and every create were written by one statement: one transaction id.
    let transactions: Vec<String> = sqlx::query_scalar(
        "select distinct xmin::text from events \
         where delivery_id = any($1) or (delivery_id = $2 and version = 2)",
    )
    .bind(&created)
    .bind(contested.as_uuid())
    .fetch_all(&pool)
    .await
    .expect("xmin");
    assert_eq!(transactions.len(), 1, "{transactions:?}");
    let counts: (i64, i64) =
        sqlx::query_as("select (select count(*) from events), (select count(*) from outbox)")
            .fetch_one(&pool)
            .await
            .expect("counts");
    let expected = i64::try_from(2 + 1 + RACERS).expect("small");
    assert_eq!(
        counts,
        (expected, expected),
        "each stored event has its outbox record"
    );
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_command_given_up_while_queued_is_not_written(pool: PgPool) {
    let service = one_writer(&pool);
    let (lock, first) = block_the_writer(&pool, &service).await;
    let abandoned = new_delivery();
    let given_up = {
        let service = service.clone();
        tokio::spawn(async move { service.handle(&dispatcher(), create(abandoned)).await })
    };
    eventually("the command is queued", || async {
        queued(&service).await == 1
    })
    .await;
    // What a request timeout does: the command's future is dropped.
    given_up.abort();
    assert!(given_up.await.expect_err("aborted").is_cancelled());
    lock.rollback().await.expect("release");
    first.await.expect("joins").expect("accepted");
    // The one writer takes commands in order: once a later one is written, the abandoned one
    // was passed over.
    service
        .handle(&dispatcher(), create(new_delivery()))
        .await
        .expect("accepted");
    let written: i64 = sqlx::query_scalar("select count(*) from events where delivery_id = $1")
        .bind(abandoned.as_uuid())
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(written, 0);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_failed_statement_fails_every_command_of_its_group_and_writes_nothing(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Statements that wait longer than 300 ms are cancelled (`database-busy`).
    let pool = pool_options
        .connect_with(connect_options(connect, Duration::from_millis(300)))
        .await
        .expect("pool");
    let service = one_writer(&pool);
    let lock = hold_appends(&pool).await;
    let commands: Vec<_> = (0..RACERS)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.handle(&dispatcher(), create(new_delivery())).await })
        })
        .collect();
    for command in commands {
        match command.await.expect("joins") {
            Err(ApiError::DatabaseBusy(_)) => {}
            other => panic!("expected database-busy, got {other:?}"),
        }
    }
    lock.rollback().await.expect("release");
    let written: (i64, i64) =
        sqlx::query_as("select (select count(*) from events), (select count(*) from outbox)")
            .fetch_one(&pool)
            .await
            .expect("counts");
    assert_eq!(written, (0, 0));
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn an_idle_writer_gives_its_connection_back_to_the_pool(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // One connection for everything: the commands' loads and the writers' statements.
    let pool = pool_options
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect)
        .await
        .expect("pool");
    let service = CommandService::with_group_commit(pool.clone(), Duration::from_secs(60), 4);
    for _ in 0..3 {
        service
            .handle(&dispatcher(), create(new_delivery()))
            .await
            .expect("a writer holding the one connection would starve this command's load");
    }
    eventually("the writer's connection is back in the pool", || async {
        pool.num_idle() == pool.size() as usize
    })
    .await;
    let returned = tokio::time::timeout(Duration::from_secs(30), pool.close()).await;
    assert!(
        returned.is_ok(),
        "the pool closes: no writer holds a connection"
    );
}
