//! How the relay is woken (ADR 0013): after a command commits, by one notifier per process,
//! never by a `NOTIFY` inside the command's own transaction (which would make every command's
//! commit wait on every other's). Against a fresh, migrated Postgres per test.

use command_api::context::CommandContext;
use command_api::service::{CommandService, Outcome};
use command_api::store::{self, Causation};
use command_api::wake::CHANNEL;
use domain::fixtures::{create, dispatcher, id, t};
use domain::{Actor, Delivery, Role};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use std::time::Duration;
use uuid::Uuid;

const RACERS: u128 = 32;

async fn listening(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.expect("listener");
    listener.listen(CHANNEL).await.expect("listen");
    listener
}

/// The next notification, waited for up to a deadline.
async fn next_notification(listener: &mut PgListener) -> PgNotification {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("notification")
}

/// Notifications that arrive within `quiet` of each other, then none for `quiet`.
async fn drain(listener: &mut PgListener, quiet: Duration) -> usize {
    let mut received = 0;
    while let Ok(notification) = tokio::time::timeout(quiet, listener.recv()).await {
        notification.expect("notification");
        received += 1;
    }
    received
}

fn submission(n: u128) -> command_api::service::Submission {
    let delivery_id = id(n);
    command_api::service::Submission::new(delivery_id, create(delivery_id))
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn appending_events_in_a_transaction_notifies_no_one(pool: PgPool) {
    let mut listener = listening(&pool).await;
    let causation = Causation {
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
    };
    for n in 1..=3 {
        let events = Delivery::default()
            .decide(create(id(n)), &dispatcher(), t(0))
            .expect("allowed");
        let mut tx = pool.begin().await.expect("begin");
        store::append(&mut tx, 0, &events, causation)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 3);
    // With a NOTIFY in the transaction (the trigger this replaced), each commit would notify.
    assert_eq!(drain(&mut listener, Duration::from_millis(500)).await, 0);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn many_concurrent_commands_wake_the_relay_with_at_most_one_notification_each(pool: PgPool) {
    let mut listener = listening(&pool).await;
    let service = CommandService::new(pool.clone(), Duration::from_secs(60));
    let context = CommandContext::new(Actor::new(Role::Dispatcher, "desk-1"), "/deliveries");
    let racers: Vec<_> = (1..=RACERS)
        .map(|n| {
            let (service, context) = (service.clone(), context.clone());
            tokio::spawn(async move { service.handle(&context, submission(n)).await })
        })
        .collect();
    for racer in racers {
        let outcome = racer.await.expect("joins").expect("accepted");
        assert!(matches!(outcome, Outcome::Accepted(_)));
    }
    // At least one notification follows the commits; signals raised while one was on its way
    // fold into the next, so there are never more than the commands.
    let first = next_notification(&mut listener).await;
    assert_eq!(first.channel(), CHANNEL);
    let received = 1 + drain(&mut listener, Duration::from_millis(500)).await;
    assert!(received as u128 <= RACERS, "{received} notifications");

    // A later command wakes it again: the notifier keeps running between bursts.
    service
        .handle(&context, submission(RACERS + 1))
        .await
        .expect("accepted");
    let again = next_notification(&mut listener).await;
    assert_eq!(again.channel(), CHANNEL);
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_refused_command_wakes_no_one(pool: PgPool) {
    let mut listener = listening(&pool).await;
    let service = CommandService::new(pool.clone(), Duration::from_secs(60));
    let context = CommandContext::new(Actor::new(Role::Dispatcher, "desk-1"), "/deliveries");
    service
        .handle(&context, submission(1))
        .await
        .expect("accepted");
    drain(&mut listener, Duration::from_millis(500)).await;
    // The same create again: refused, nothing appended, nothing to publish.
    let refused = service.handle(&context, submission(1)).await;
    assert!(refused.is_err());
    assert_eq!(drain(&mut listener, Duration::from_millis(500)).await, 0);
}
