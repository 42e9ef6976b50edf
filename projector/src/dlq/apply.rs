//! What `retry` and `skip` share: the outcome they report, the live projector paused, stuck
//! events planned and written like a batch (but moving no offset), and the audit record.

use super::Action;
use crate::batch::{self, Subscription};
use crate::catalog::Catalog;
use crate::plan::{self, Decoded, Incoming};
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::HashSet;
use uuid::Uuid;

/// What an action did to one delivery (or one poison message whose key names none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub delivery_id: Option<Uuid>,
    /// The poison message, by `(partition, offset)`, when the action was about it alone.
    pub message: Option<(i32, i64)>,
    /// The version skipped (`skip` only).
    pub skipped_version: Option<i64>,
    /// Events applied to the read model.
    pub applied: usize,
    pub still_parked: i64,
    pub still_poison: i64,
    /// Why the read database refused the writes, when it did (nothing was applied then).
    pub refused: Option<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.delivery_id, self.message) {
            (Some(id), _) => write!(f, "delivery {id}: ")?,
            (None, Some((p, o))) => write!(f, "message {p}:{o}: ")?,
            (None, None) => {}
        }
        if let Some(version) = self.skipped_version {
            write!(f, "version {version} skipped, ")?;
        }
        write!(
            f,
            "{} applied, {} still parked, {} still poison",
            self.applied, self.still_parked, self.still_poison
        )?;
        if let Some(refused) = &self.refused {
            write!(f, " (the read database refused it: {refused})")?;
        }
        Ok(())
    }
}

/// A delivery, or a poison message whose key names none: what is applied together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Unit {
    Delivery(Uuid),
    Message(i32, i64),
}

/// Takes the live projector's partition locks for every partition with stuck events (a
/// delivery's events all come from one partition): it pauses between two batches until we
/// commit, so it never writes a delivery we are changing.
pub(super) async fn pause_live(
    tx: &mut PgConnection,
    subscription: &Subscription,
) -> Result<(), sqlx::Error> {
    // Every table's kafka_partition is not null; the macro cannot see through a union.
    let partitions: Vec<i32> = sqlx::query_scalar!(
        r#"select kafka_partition as "kafka_partition!" from consumer_offsets
           where consumer_group = $1 and topic = $2
           union select kafka_partition from poison_messages where topic = $2
           union select kafka_partition from parked_events"#,
        &subscription.group,
        &subscription.topic,
    )
    .fetch_all(&mut *tx)
    .await?;
    batch::lock_partitions(tx, subscription, &partitions).await
}

pub(super) fn ids(unit: Unit) -> (Option<Uuid>, Option<(i32, i64)>) {
    match unit {
        Unit::Delivery(id) => (Some(id), None),
        Unit::Message(p, o) => (None, Some((p, o))),
    }
}

/// Plans and writes `messages` for `ids` (with their parked events and skips) without moving
/// any offset; retried poison that no longer fails leaves `poison_messages`.
pub(super) async fn apply(
    tx: &mut PgConnection,
    subscription: &Subscription,
    ids: &[Uuid],
    messages: Vec<Incoming>,
) -> Result<usize, sqlx::Error> {
    let projections = batch::live_projections(tx, &Catalog::BUILT_IN).await?;
    let retried: Vec<(i32, i64)> = messages.iter().map(|m| (m.partition, m.offset)).collect();
    let current = batch::load_current(tx, ids).await?;
    let mut plan = plan::plan_decoded(current, messages.iter().map(Decoded::new).collect());
    plan.next_offsets.clear();
    batch::write_live(tx, subscription, &projections, &plan).await?;
    let failing: HashSet<(i32, i64)> = (plan.poison.iter())
        .map(|p| (p.kafka_partition, p.kafka_offset))
        .collect();
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = retried
        .into_iter()
        .filter(|position| !failing.contains(position))
        .unzip();
    sqlx::query!(
        "delete from poison_messages where topic = $1
         and (kafka_partition, kafka_offset) in (select * from unnest($2::int[], $3::bigint[]))",
        &subscription.topic,
        &partitions,
        &offsets,
    )
    .execute(&mut *tx)
    .await?;
    batch::notify_waiters(tx, &plan).await?;
    Ok(plan.applied())
}

pub(super) async fn outcome(
    tx: &mut PgConnection,
    topic: &str,
    unit: Unit,
    applied: usize,
    skipped_version: Option<i64>,
    refused: Option<String>,
) -> Result<Outcome, sqlx::Error> {
    let (delivery, position) = ids(unit);
    let still = sqlx::query!(
        r#"select (select count(*) from parked_events where delivery_id = $2) as "parked!",
                  (select count(*) from poison_messages where topic = $1
                   and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4)))
                  as "poison!""#,
        topic,
        delivery,
        position.map(|p| p.0),
        position.map(|p| p.1),
    )
    .fetch_one(&mut *tx)
    .await?;
    let (still_parked, still_poison) = (still.parked, still.poison);
    Ok(Outcome {
        delivery_id: delivery,
        message: position,
        skipped_version,
        applied,
        still_parked,
        still_poison,
        refused,
    })
}

/// Writes the audit record of an action; returns its id.
pub(super) async fn record(
    tx: &mut PgConnection,
    kind: &str,
    action: &Action,
    topic: &str,
    (delivery, version, position): (Option<Uuid>, Option<i64>, Option<(i32, i64)>),
    outcome: &Outcome,
    detail: serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "insert into dlq_actions (action, actor, reason, topic, delivery_id, version,
             kafka_partition, kafka_offset, outcome, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning id",
        kind,
        action.actor.trim(),
        action.reason.trim(),
        topic,
        delivery,
        version,
        position.map(|p| p.0),
        position.map(|p| p.1),
        outcome.to_string(),
        detail,
    )
    .fetch_one(tx)
    .await
}
