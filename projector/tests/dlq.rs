//! `projector dlq list | retry | skip` against a real read database (fresh per test), through
//! the library functions the command line calls, and once through the command line itself.
//!
//! (Over 400 lines: every dlq action and its audit record, with one shared set-up.)

mod common;

use clap::Parser;
use common::*;
use domain::EventEnvelope;
use projector::cli::{self, Cli};
use projector::dlq::{self, Action, DlqError, Selection, Skip, StuckKind};
use projector::failure::apply_with_retry;
use projector::plan::Incoming;
use projector::{Destination, Subscription, apply_batch};
use sqlx::PgPool;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn subscription() -> Subscription {
    Subscription {
        group: "test-projector".into(),
        topic: "delivery.events".into(),
    }
}

fn action(reason: &str) -> Action {
    Action {
        actor: "ops-anna".into(),
        reason: reason.into(),
    }
}

/// An event of a schema this build does not know yet.
fn newer_schema(mut envelope: EventEnvelope) -> EventEnvelope {
    envelope.schema_version = 2;
    envelope
}

/// Delivery 7: version 2 is of a newer schema (poison), versions 3 and 4 park behind it.
/// Delivery 8 is unaffected.
fn stuck_delivery() -> Vec<Incoming> {
    let x = id(7);
    vec![
        message(0, &envelope(x, 1, created())),
        message(1, &newer_schema(envelope(x, 2, assigned("rider-1")))),
        message(2, &envelope(x, 3, assigned("rider-2"))),
        message(3, &envelope(x, 4, picked_up("rider-2"))),
        message(4, &envelope(id(8), 1, created())),
    ]
}

async fn delivery(pool: &PgPool, n: u128) -> Option<(i64, String, Option<String>)> {
    sqlx::query_as("select version, status, rider_id from deliveries where delivery_id = $1")
        .bind(id(n).as_uuid())
        .fetch_optional(pool)
        .await
        .expect("delivery row")
}

async fn stuck_counts(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select (select count(*) from parked_events), (select count(*) from poison_messages)",
    )
    .fetch_one(pool)
    .await
    .expect("counts")
}

async fn audit(pool: &PgPool) -> Vec<(String, String, String, Option<Uuid>, Option<i64>)> {
    sqlx::query_as(
        "select action, actor, reason, delivery_id, version from dlq_actions order by id",
    )
    .fetch_all(pool)
    .await
    .expect("audit rows")
}

#[sqlx::test(migrator = "migrations::READ")]
async fn list_shows_the_poison_and_what_waits_behind_it(pool: PgPool) {
    apply_batch(&pool, &subscription(), &stuck_delivery())
        .await
        .expect("applied");
    let stuck = dlq::list(&pool, "delivery.events", None)
        .await
        .expect("listed");
    let x = Some(id(7).as_uuid());
    let summary: Vec<_> = stuck
        .iter()
        .map(|s| (s.kind, s.delivery_id, s.version, s.kafka_offset))
        .collect();
    assert_eq!(
        summary,
        [
            (StuckKind::Poison, x, Some(2), 1),
            (StuckKind::Parked, x, Some(3), 2),
            (StuckKind::Parked, x, Some(4), 3),
        ]
    );
    assert!(
        stuck[0].reason.contains("unsupported schema version 2"),
        "{}",
        stuck[0].reason
    );
    assert_eq!(
        stuck[1].reason,
        "waits for version 2: version 2 is poison (at 0:1)"
    );
    let table = dlq::table(&stuck);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.ends_with("1 poison, 2 parked\n"), "{table}");
    let json = serde_json::to_value(&stuck).expect("json");
    assert_eq!(json[1]["kind"], "parked");
    assert_eq!(json[1]["delivery_id"], id(7).to_string());
    // Only one delivery's, on request; delivery 8 was never stuck.
    let of_8 = dlq::list(&pool, "delivery.events", Some(id(8).as_uuid()))
        .await
        .expect("listed");
    assert!(of_8.is_empty());
}

#[sqlx::test(migrator = "migrations::READ")]
async fn skip_moves_the_delivery_past_the_poison_and_applies_what_was_parked(pool: PgPool) {
    apply_batch(&pool, &subscription(), &stuck_delivery())
        .await
        .expect("applied");
    assert_eq!(delivery(&pool, 7).await.map(|d| d.0), Some(1));

    let outcome = dlq::skip(
        &pool,
        &subscription(),
        Skip::Delivery(id(7).as_uuid()),
        &action("schema 2 assignment superseded by version 3"),
    )
    .await
    .expect("skipped");
    assert_eq!(
        (
            outcome.skipped_version,
            outcome.applied,
            outcome.still_parked,
            outcome.still_poison
        ),
        (Some(2), 2, 0, 0),
        "{outcome}"
    );
    assert_eq!(
        delivery(&pool, 7).await,
        Some((4, "picked_up".into(), Some("rider-2".into())))
    );
    assert_eq!(stuck_counts(&pool).await, (0, 0));
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "select status, deliveries from status_counts where deliveries > 0 order by 1",
    )
    .fetch_all(&pool)
    .await
    .expect("counts");
    assert_eq!(counts, [("created".into(), 1), ("picked_up".into(), 1)]);
    assert_eq!(
        audit(&pool).await,
        [(
            "skip".into(),
            "ops-anna".into(),
            "schema 2 assignment superseded by version 3".into(),
            Some(id(7).as_uuid()),
            Some(2)
        )]
    );
    // The removed poison record is kept in the audit record, payload and all.
    let removed: serde_json::Value =
        sqlx::query_scalar("select detail -> 'removed' -> 0 from dlq_actions")
            .fetch_one(&pool)
            .await
            .expect("detail");
    assert_eq!(removed["kafka_offset"], 1);
    assert!(removed["payload_base64"].is_string(), "{removed}");

    // Redelivered later (a relay republishing), the skipped version is a duplicate.
    let again = apply_batch(
        &pool,
        &subscription(),
        &[{
            let mut m = stuck_delivery().swap_remove(1);
            m.offset = 10;
            m
        }],
    )
    .await
    .expect("applied");
    assert_eq!(again.poison, 0);
    assert_eq!(stuck_counts(&pool).await, (0, 0));
}

#[sqlx::test(migrator = "migrations::READ")]
async fn skip_refuses_a_delivery_that_is_not_stuck_and_requires_a_reason(pool: PgPool) {
    apply_batch(&pool, &subscription(), &stuck_delivery())
        .await
        .expect("applied");
    let not_stuck = dlq::skip(
        &pool,
        &subscription(),
        Skip::Delivery(id(8).as_uuid()),
        &action("just because"),
    )
    .await;
    assert!(
        matches!(not_stuck, Err(DlqError::NotStuck(_))),
        "{not_stuck:?}"
    );
    let no_reason = dlq::skip(
        &pool,
        &subscription(),
        Skip::Delivery(id(7).as_uuid()),
        &action("  "),
    )
    .await;
    assert!(
        matches!(no_reason, Err(DlqError::Missing(_))),
        "{no_reason:?}"
    );
    assert!(audit(&pool).await.is_empty());
    assert_eq!(stuck_counts(&pool).await, (2, 1));
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_poison_message_whose_key_names_no_delivery_can_be_skipped_alone(pool: PgPool) {
    let garbage = Incoming {
        partition: 0,
        offset: 0,
        key: Some(b"not\0a delivery".to_vec()),
        payload: Some(b"\xff\xfe garbage".to_vec()),
    };
    apply_batch(&pool, &subscription(), &[garbage])
        .await
        .expect("applied");
    let outcome = dlq::skip(
        &pool,
        &subscription(),
        Skip::Message {
            partition: 0,
            offset: 0,
        },
        &action("test message from a load tool"),
    )
    .await
    .expect("skipped");
    assert_eq!(outcome.message, Some((0, 0)));
    assert_eq!(stuck_counts(&pool).await, (0, 0));
    let key: String =
        sqlx::query_scalar("select detail -> 'removed' -> 0 ->> 'message_key' from dlq_actions")
            .fetch_one(&pool)
            .await
            .expect("audit detail");
    assert_eq!(key, "not\\u0000a delivery");
}

/// A check the operator's database enforced by mistake, refusing events of `desk-9`.
async fn refuse_desk(pool: &PgPool, constraint: &str) {
    sqlx::raw_sql(&format!(
        "alter table delivery_history add constraint {constraint} check (actor_id <> 'desk-9')"
    ))
    .execute(pool)
    .await
    .expect("constraint");
}

/// Delivery 7 whose version 2 (by `desk-9`) the read database refuses: found by splitting the
/// batch, recorded as poison; version 3 parks behind it.
async fn refused_version_two(pool: &PgPool) {
    let x = id(7);
    let mut second = envelope(x, 2, assigned("rider-1"));
    second.actor.id = "desk-9".into();
    let messages = vec![
        message(0, &envelope(x, 1, created())),
        message(1, &second),
        message(2, &envelope(x, 3, picked_up("rider-1"))),
        message(3, &envelope(id(8), 1, created())),
    ];
    let applied = apply_with_retry(
        pool,
        &Destination::LIVE,
        &subscription(),
        &messages,
        &CancellationToken::new(),
    )
    .await
    .expect("applied");
    assert_eq!((applied.applied, applied.poison, applied.parked), (2, 1, 1));
}

#[sqlx::test(migrator = "migrations::READ")]
async fn retry_applies_the_stuck_events_in_order_once_the_cause_is_fixed(pool: PgPool) {
    refuse_desk(&pool, "no_desk_9").await;
    refused_version_two(&pool).await;
    assert_eq!(stuck_counts(&pool).await, (1, 1));

    sqlx::raw_sql("alter table delivery_history drop constraint no_desk_9")
        .execute(&pool)
        .await
        .expect("fixed");
    let outcomes = dlq::retry(
        &pool,
        &subscription(),
        &Selection::Deliveries(vec![id(7).as_uuid()]),
        &action("dropped the bad constraint"),
    )
    .await
    .expect("retried");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        (
            outcomes[0].applied,
            outcomes[0].still_parked,
            outcomes[0].still_poison
        ),
        (2, 0, 0),
        "{}",
        outcomes[0]
    );
    assert_eq!(
        delivery(&pool, 7).await,
        Some((3, "picked_up".into(), Some("rider-1".into())))
    );
    let history: Vec<i64> = sqlx::query_scalar(
        "select version from delivery_history where delivery_id = $1 order by 1",
    )
    .bind(id(7).as_uuid())
    .fetch_all(&pool)
    .await
    .expect("history");
    assert_eq!(history, [1, 2, 3]);
    assert_eq!(stuck_counts(&pool).await, (0, 0));
    let recorded = audit(&pool).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "retry");
    assert_eq!(recorded[0].2, "dropped the bad constraint");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn retry_of_what_still_fails_keeps_it_stuck_with_the_new_error(pool: PgPool) {
    refuse_desk(&pool, "no_desk_9").await;
    refused_version_two(&pool).await;
    sqlx::raw_sql(
        "alter table delivery_history drop constraint no_desk_9;
         alter table delivery_history add constraint still_no_desk_9 check (actor_id <> 'desk-9')",
    )
    .execute(&pool)
    .await
    .expect("a wrong fix");
    let outcomes = dlq::retry(
        &pool,
        &subscription(),
        &Selection::All,
        &action("try the fix"),
    )
    .await
    .expect("retried");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        (
            outcomes[0].applied,
            outcomes[0].still_parked,
            outcomes[0].still_poison
        ),
        (0, 1, 1),
        "{}",
        outcomes[0]
    );
    let error: String = sqlx::query_scalar("select error from poison_messages")
        .fetch_one(&pool)
        .await
        .expect("poison");
    assert!(error.contains("still_no_desk_9"), "{error}");
    assert_eq!(delivery(&pool, 7).await.map(|d| d.0), Some(1));
    assert_eq!(audit(&pool).await.len(), 1);
}

#[test]
fn the_command_line_takes_dlq_actions_with_who_and_why() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from(
            ["projector", "--database-url", "postgres://x/y", "dlq"]
                .iter()
                .chain(args),
        )
    };
    assert!(parse(&["list", "--json"]).is_ok());
    assert!(parse(&["retry", "--all", "--reason", "fixed", "--actor", "ann"]).is_ok());
    assert!(
        parse(&[
            "retry",
            "--message",
            "3:1207",
            "--reason",
            "r",
            "--by",
            "ann"
        ])
        .is_ok()
    );
    assert!(
        parse(&[
            "skip",
            &id(7).to_string(),
            "--reason",
            "gone",
            "--actor",
            "ann"
        ])
        .is_ok()
    );
    // A reason is required, and something to act on; a position is PARTITION:OFFSET.
    assert!(parse(&["skip", &id(7).to_string(), "--actor", "ann"]).is_err());
    assert!(parse(&["retry", "--reason", "r", "--actor", "ann"]).is_err());
    assert!(parse(&["skip", "--message", "3", "--reason", "r", "--actor", "ann"]).is_err());
    assert!(
        parse(&[
            "retry",
            "--all",
            &id(7).to_string(),
            "--reason",
            "r",
            "--actor",
            "a"
        ])
        .is_err()
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_command_line_skip_records_its_actor_and_reason(pool: PgPool) {
    apply_batch(&pool, &subscription(), &stuck_delivery())
        .await
        .expect("applied");
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().expect("a database")
    );
    let delivery_id = id(7).to_string();
    let cli = Cli::try_parse_from([
        "projector",
        "--database-url",
        &url,
        "dlq",
        "--group",
        "test-projector",
        "skip",
        &delivery_id,
        "--reason",
        "superseded",
        "--actor",
        "ops-ben",
    ])
    .expect("parsed");
    assert_eq!(cli::run(cli).await.expect("ran"), ExitCode::SUCCESS);
    let recorded = audit(&pool).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].1.as_str(), recorded[0].2.as_str()),
        ("ops-ben", "superseded")
    );
    assert_eq!(delivery(&pool, 7).await.map(|d| d.0), Some(4));
}
