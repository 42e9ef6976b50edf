//! `projector dlq skip`: a delivery moved past the version it waits for, or one poison
//! message set aside, with the audit record that says who decided it and why.

use super::apply::{self, Outcome, Unit, apply, ids, pause_live, record};
use super::{Action, DlqError, Skip};
use crate::batch::{self, Subscription};
use domain::DeliveryId;
use serde_json::json;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

/// A removed poison record: where it was, whose, and all of it as JSON for the audit (the
/// key and payload as base64, since they may not be text). The two `delete ... returning`
/// statements below return it; each is a literal so that the query macros check it.
type Removed = (i32, i64, Option<Uuid>, Option<i64>, Json<serde_json::Value>);

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
            let current = batch::load_current(&mut tx, &[id]).await?;
            let delivery = DeliveryId::from_uuid(id);
            let mut next = current.rows.get(&delivery).map_or(0, |row| row.version) + 1;
            while current.skipped.contains(&(delivery, next)) {
                next += 1;
            }
            let removed: Vec<Removed> = sqlx::query!(
                r#"delete from poison_messages
                   where topic = $1 and delivery_id = $2 and version = $3
                   returning kafka_partition, kafka_offset, delivery_id, version,
                       to_jsonb(poison_messages) - 'payload' - 'message_key_bytes'
                       || jsonb_build_object('payload_base64', encode(payload, 'base64'),
                                'message_key_base64', encode(message_key_bytes, 'base64'))
                       as "record!: Json<serde_json::Value>""#,
                topic,
                id,
                next,
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.kafka_partition,
                    r.kafka_offset,
                    r.delivery_id,
                    r.version,
                    r.record,
                )
            })
            .collect();
            let stuck: bool = sqlx::query_scalar!(
                r#"select exists (select 1 from parked_events where delivery_id = $1)
                       or exists (select 1 from poison_messages where delivery_id = $1
                                  and topic = $2) as "stuck!""#,
                id,
                topic,
            )
            .fetch_one(&mut *tx)
            .await?;
            if removed.is_empty() && !stuck {
                return Err(DlqError::NotStuck(format!("delivery {id}")));
            }
            (Unit::Delivery(id), Some(next), removed)
        }
        Skip::Message { partition, offset } => {
            let removed: Vec<Removed> = sqlx::query!(
                r#"delete from poison_messages
                   where topic = $1 and kafka_partition = $2 and kafka_offset = $3
                   returning kafka_partition, kafka_offset, delivery_id, version,
                       to_jsonb(poison_messages) - 'payload' - 'message_key_bytes'
                       || jsonb_build_object('payload_base64', encode(payload, 'base64'),
                                'message_key_base64', encode(message_key_bytes, 'base64'))
                       as "record!: Json<serde_json::Value>""#,
                topic,
                partition,
                offset,
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.kafka_partition,
                    r.kafka_offset,
                    r.delivery_id,
                    r.version,
                    r.record,
                )
            })
            .collect();
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
    outcome = apply::outcome(&mut tx, topic, unit, applied, version, None).await?;
    sqlx::query!(
        "update dlq_actions set outcome = $2, detail = detail || $3 where id = $1",
        audit,
        outcome.to_string(),
        json!({ "outcome": &outcome }),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome)
}
