//! `projector dlq retry | skip`: applying stuck events again, or moving a delivery past one.

use super::{Action, DlqError, Selection, Skip};
use crate::catalog::Writes;
use crate::failure::{Failure, classify};
use crate::poison::{MAX_ERROR_BYTES, storable_text};
use crate::projection::{self, Decoded, DeliveryRow, Incoming};
use crate::store::{self, Subscription};
use domain::DeliveryId;
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use sqlx::PgPool;
use sqlx::types::Json;
use std::collections::HashSet;
use uuid::Uuid;

/// `delete from poison_messages ... returning` what the audit keeps: the key and payload as
/// base64, since they may not be text.
macro_rules! remove_poison {
    ($condition:literal) => {
        concat!(
            "delete from poison_messages where topic = $1 and ",
            $condition,
            " returning kafka_partition, kafka_offset, delivery_id, version,
                 to_jsonb(poison_messages) - 'payload' - 'message_key_bytes'
                 || jsonb_build_object('payload_base64', encode(payload, 'base64'),
                                       'message_key_base64', encode(message_key_bytes, 'base64'))"
        )
    };
}

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
enum Unit {
    Delivery(Uuid),
    Message(i32, i64),
}

/// Applies the selected stuck events again, each delivery in version order, in one
/// transaction (each delivery behind a savepoint of its own). Events that still fail stay
/// stuck with their new error. One audit record per delivery.
pub async fn retry(
    pool: &PgPool,
    subscription: &Subscription,
    selection: &Selection,
    action: &Action,
) -> Result<Vec<Outcome>, DlqError> {
    action.check()?;
    let mut tx = pool.begin().await?;
    pause_live(&mut tx, subscription).await?;
    let units = units(&mut tx, &subscription.topic, selection).await?;
    let mut outcomes = Vec::with_capacity(units.len());
    for unit in units {
        sqlx::query("savepoint unit").execute(&mut *tx).await?;
        let mut refused = None;
        let applied = match retry_unit(&mut tx, subscription, unit).await {
            Ok(applied) => applied,
            Err(error) if classify(&error) == Failure::Data => {
                sqlx::query("rollback to savepoint unit")
                    .execute(&mut *tx)
                    .await?;
                let error = storable_text(&error.to_string(), MAX_ERROR_BYTES);
                set_error(&mut tx, &subscription.topic, unit, &error).await?;
                refused = Some(error);
                0
            }
            Err(error) => return Err(error.into()),
        };
        let outcome = outcome(&mut tx, &subscription.topic, unit, applied, None, refused).await?;
        let (delivery, message) = ids(unit);
        record(
            &mut tx,
            "retry",
            action,
            &subscription.topic,
            (delivery, None, message),
            &outcome,
            json!({ "outcome": &outcome }),
        )
        .await?;
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Moves a delivery past the version it waits for (removing that version's poison record,
/// if any), or removes one poison message; then applies what was parked behind it.
pub async fn skip(
    pool: &PgPool,
    subscription: &Subscription,
    what: Skip,
    action: &Action,
) -> Result<Outcome, DlqError> {
    action.check()?;
    let topic = &subscription.topic;
    let mut tx = pool.begin().await?;
    pause_live(&mut tx, subscription).await?;
    let (unit, version, removed) = match what {
        Skip::Delivery(id) => {
            let current = store::load_current(&mut tx, &[id]).await?;
            let delivery = DeliveryId::from_uuid(id);
            let mut next = current.rows.get(&delivery).map_or(0, |row| row.version) + 1;
            while current.skipped.contains(&(delivery, next)) {
                next += 1;
            }
            let removed: Vec<Removed> =
                sqlx::query_as(remove_poison!("delivery_id = $2 and version = $3"))
                    .bind(topic)
                    .bind(id)
                    .bind(next)
                    .fetch_all(&mut *tx)
                    .await?;
            let stuck: bool = sqlx::query_scalar(
                "select exists (select 1 from parked_events where delivery_id = $1)
                     or exists (select 1 from poison_messages where delivery_id = $1
                                and topic = $2)",
            )
            .bind(id)
            .bind(topic)
            .fetch_one(&mut *tx)
            .await?;
            if removed.is_empty() && !stuck {
                return Err(DlqError::NotStuck(format!("delivery {id}")));
            }
            (Unit::Delivery(id), Some(next), removed)
        }
        Skip::Message { partition, offset } => {
            let removed: Vec<Removed> =
                sqlx::query_as(remove_poison!("kafka_partition = $2 and kafka_offset = $3"))
                    .bind(topic)
                    .bind(partition)
                    .bind(offset)
                    .fetch_all(&mut *tx)
                    .await?;
            let Some((delivery, version)) = removed.first().map(|row| (row.2, row.3)) else {
                return Err(DlqError::NotStuck(format!("message {partition}:{offset}")));
            };
            match delivery {
                Some(id) => (Unit::Delivery(id), version, removed),
                None => (Unit::Message(partition, offset), None, removed),
            }
        }
    };
    let (delivery, _) = ids(unit);
    let position = removed.first().map(|r| (r.0, r.1));
    let detail = json!({ "removed": removed.iter().map(|r| &r.4.0).collect::<Vec<_>>() });
    let mut outcome = Outcome {
        delivery_id: delivery,
        message: position.filter(|_| delivery.is_none()),
        skipped_version: version,
        applied: 0,
        still_parked: 0,
        still_poison: 0,
        refused: None,
    };
    // Recorded first: the skip it records is what lets the delivery move on.
    let audit = record(
        &mut tx,
        "skip",
        action,
        topic,
        (delivery, version, position),
        &outcome,
        detail,
    )
    .await?;
    let applied = match delivery {
        Some(id) => apply(&mut tx, subscription, &[id], Vec::new()).await?,
        None => 0,
    };
    outcome = self::outcome(&mut tx, topic, unit, applied, version, None).await?;
    sqlx::query("update dlq_actions set outcome = $2, detail = detail || $3 where id = $1")
        .bind(audit)
        .bind(outcome.to_string())
        .bind(Json(json!({ "outcome": &outcome })))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Takes the live projector's partition locks for every partition with stuck events (a
/// delivery's events all come from one partition): it pauses between two batches until we
/// commit, so it never writes a delivery we are changing.
async fn pause_live(tx: &mut PgConnection, subscription: &Subscription) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = sqlx::query_scalar(
        "select kafka_partition from consumer_offsets where consumer_group = $1 and topic = $2
         union select kafka_partition from poison_messages where topic = $2
         union select kafka_partition from parked_events",
    )
    .bind(&subscription.group)
    .bind(&subscription.topic)
    .fetch_all(&mut *tx)
    .await?;
    store::lock_partitions(tx, subscription, &partitions).await
}

/// The deliveries (and lone poison messages) a retry covers, in a stable order.
async fn units(
    tx: &mut PgConnection,
    topic: &str,
    selection: &Selection,
) -> Result<Vec<Unit>, sqlx::Error> {
    let rows: Vec<(Option<Uuid>, Option<i32>, Option<i64>)> = match selection {
        Selection::All => {
            sqlx::query_as(
                "select distinct delivery_id, null::int, null::bigint from parked_events
                 union select delivery_id,
                     case when delivery_id is null then kafka_partition end,
                     case when delivery_id is null then kafka_offset end
                 from poison_messages where topic = $1",
            )
            .bind(topic)
            .fetch_all(&mut *tx)
            .await?
        }
        Selection::Deliveries(ids) => ids.iter().map(|id| (Some(*id), None, None)).collect(),
        Selection::Message { partition, offset } => {
            sqlx::query_as(
                "select delivery_id, kafka_partition, kafka_offset from poison_messages
                 where topic = $1 and kafka_partition = $2 and kafka_offset = $3",
            )
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let mut units: Vec<Unit> = rows
        .into_iter()
        .filter_map(|row| match row {
            (Some(id), ..) => Some(Unit::Delivery(id)),
            (None, Some(p), Some(o)) => Some(Unit::Message(p, o)),
            _ => None,
        })
        .collect();
    units.sort_by_key(|unit| match unit {
        Unit::Delivery(id) => (0, *id, 0, 0),
        Unit::Message(p, o) => (1, Uuid::nil(), *p, *o),
    });
    units.dedup();
    Ok(units)
}

fn ids(unit: Unit) -> (Option<Uuid>, Option<(i32, i64)>) {
    match unit {
        Unit::Delivery(id) => (Some(id), None),
        Unit::Message(p, o) => (None, Some((p, o))),
    }
}

/// Feeds a unit's poison messages through the projection again, with its parked events.
async fn retry_unit(
    tx: &mut PgConnection,
    subscription: &Subscription,
    unit: Unit,
) -> Result<usize, sqlx::Error> {
    type Row = (i32, i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
    let (delivery, position) = ids(unit);
    let rows: Vec<Row> = sqlx::query_as(
        "select kafka_partition, kafka_offset, message_key, message_key_bytes, payload
         from poison_messages where topic = $1
           and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4))
         order by kafka_partition, kafka_offset for update",
    )
    .bind(&subscription.topic)
    .bind(delivery)
    .bind(position.map(|p| p.0))
    .bind(position.map(|p| p.1))
    .fetch_all(&mut *tx)
    .await?;
    let messages: Vec<Incoming> = rows
        .into_iter()
        .map(|(partition, offset, key, key_bytes, payload)| Incoming {
            partition,
            offset,
            key: key_bytes.or(key.map(String::into_bytes)),
            payload,
        })
        .collect();
    let mut ids: Vec<Uuid> = messages
        .iter()
        .filter_map(|m| Decoded::new(m).delivery_id().map(|id| id.as_uuid()))
        .chain(delivery)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    apply(tx, subscription, &ids, messages).await
}

/// Plans and writes `messages` for `ids` (with their parked events and skips) without moving
/// any offset; retried poison that no longer fails leaves `poison_messages`.
async fn apply(
    tx: &mut PgConnection,
    subscription: &Subscription,
    ids: &[Uuid],
    messages: Vec<Incoming>,
) -> Result<usize, sqlx::Error> {
    let writes = Writes::of(
        sqlx::query_scalar::<_, String>("select name from projections")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(String::as_str),
    );
    let retried: Vec<(i32, i64)> = messages.iter().map(|m| (m.partition, m.offset)).collect();
    let current = store::load_current(tx, ids).await?;
    let mut plan = projection::plan_decoded(current, messages.iter().map(Decoded::new).collect());
    plan.next_offsets.clear();
    let rows: Vec<&DeliveryRow> = plan.deliveries.iter().collect();
    store::write(tx, subscription, writes, &plan, &rows).await?;
    let failing: HashSet<(i32, i64)> = (plan.poison.iter())
        .map(|p| (p.kafka_partition, p.kafka_offset))
        .collect();
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = retried
        .into_iter()
        .filter(|position| !failing.contains(position))
        .unzip();
    sqlx::query(
        "delete from poison_messages where topic = $1
         and (kafka_partition, kafka_offset) in (select * from unnest($2::int[], $3::bigint[]))",
    )
    .bind(&subscription.topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify('projection', payload) from unnest($1::text[]) as payload")
        .bind(store::notifications(&plan))
        .execute(&mut *tx)
        .await?;
    Ok(plan.applied())
}

/// A removed poison record: where it was, whose, and all of it as JSON for the audit.
type Removed = (i32, i64, Option<Uuid>, Option<i64>, Json<serde_json::Value>);

async fn set_error(
    tx: &mut PgConnection,
    topic: &str,
    unit: Unit,
    error: &str,
) -> Result<(), sqlx::Error> {
    let (delivery, position) = ids(unit);
    sqlx::query(
        "update poison_messages set error = $5, received_at = now() where topic = $1
         and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4))",
    )
    .bind(topic)
    .bind(delivery)
    .bind(position.map(|p| p.0))
    .bind(position.map(|p| p.1))
    .bind(format!("the read database refused it: {error}"))
    .execute(tx)
    .await?;
    Ok(())
}

async fn outcome(
    tx: &mut PgConnection,
    topic: &str,
    unit: Unit,
    applied: usize,
    skipped_version: Option<i64>,
    refused: Option<String>,
) -> Result<Outcome, sqlx::Error> {
    let (delivery, position) = ids(unit);
    let (still_parked, still_poison): (i64, i64) = sqlx::query_as(
        "select (select count(*) from parked_events where delivery_id = $2),
                (select count(*) from poison_messages where topic = $1
                 and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4)))",
    )
    .bind(topic)
    .bind(delivery)
    .bind(position.map(|p| p.0))
    .bind(position.map(|p| p.1))
    .fetch_one(&mut *tx)
    .await?;
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
async fn record(
    tx: &mut PgConnection,
    kind: &str,
    action: &Action,
    topic: &str,
    (delivery, version, position): (Option<Uuid>, Option<i64>, Option<(i32, i64)>),
    outcome: &Outcome,
    detail: serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into dlq_actions (action, actor, reason, topic, delivery_id, version,
             kafka_partition, kafka_offset, outcome, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning id",
    )
    .bind(kind)
    .bind(action.actor.trim())
    .bind(action.reason.trim())
    .bind(topic)
    .bind(delivery)
    .bind(version)
    .bind(position.map(|p| p.0))
    .bind(position.map(|p| p.1))
    .bind(outcome.to_string())
    .bind(Json(detail))
    .fetch_one(tx)
    .await
}
