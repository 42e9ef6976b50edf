//! `projector dlq retry`: stuck events applied again with the code as it is now.

use super::apply::{Outcome, Unit, apply, ids, outcome, pause_live, record};
use super::{Action, DlqError, Selection};
use crate::batch::Subscription;
use crate::failure::{Failure, classify};
use crate::plan::{Decoded, Incoming};
use crate::poison::{MAX_ERROR_BYTES, storable_text};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

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
        sqlx::query!("savepoint unit").execute(&mut *tx).await?;
        let mut refused = None;
        let applied = match retry_unit(&mut tx, subscription, unit).await {
            Ok(applied) => applied,
            Err(error) if classify(&error) == Failure::Data => {
                sqlx::query!("rollback to savepoint unit")
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

/// The deliveries (and lone poison messages) a retry covers, in a stable order.
async fn units(
    tx: &mut PgConnection,
    topic: &str,
    selection: &Selection,
) -> Result<Vec<Unit>, sqlx::Error> {
    let rows: Vec<(Option<Uuid>, Option<i32>, Option<i64>)> = match selection {
        Selection::All => sqlx::query!(
            r#"select distinct delivery_id, null::int as kafka_partition,
                   null::bigint as kafka_offset from parked_events
               union select delivery_id,
                   case when delivery_id is null then kafka_partition end,
                   case when delivery_id is null then kafka_offset end
               from poison_messages where topic = $1"#,
            topic,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.delivery_id, r.kafka_partition, r.kafka_offset))
        .collect(),
        Selection::Deliveries(ids) => ids.iter().map(|id| (Some(*id), None, None)).collect(),
        Selection::Message { partition, offset } => sqlx::query!(
            "select delivery_id, kafka_partition, kafka_offset from poison_messages
             where topic = $1 and kafka_partition = $2 and kafka_offset = $3",
            topic,
            partition,
            offset,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.delivery_id, Some(r.kafka_partition), Some(r.kafka_offset)))
        .collect(),
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

/// Feeds a unit's poison messages through the projection again, with its parked events.
async fn retry_unit(
    tx: &mut PgConnection,
    subscription: &Subscription,
    unit: Unit,
) -> Result<usize, sqlx::Error> {
    type Row = (i32, i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
    let (delivery, position) = ids(unit);
    let rows: Vec<Row> = sqlx::query!(
        "select kafka_partition, kafka_offset, message_key, message_key_bytes, payload
         from poison_messages where topic = $1
           and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4))
         order by kafka_partition, kafka_offset for update",
        &subscription.topic,
        delivery,
        position.map(|p| p.0),
        position.map(|p| p.1),
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.kafka_partition,
            r.kafka_offset,
            r.message_key,
            r.message_key_bytes,
            r.payload,
        )
    })
    .collect();
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

async fn set_error(
    tx: &mut PgConnection,
    topic: &str,
    unit: Unit,
    error: &str,
) -> Result<(), sqlx::Error> {
    let (delivery, position) = ids(unit);
    sqlx::query!(
        "update poison_messages set error = $5, received_at = now() where topic = $1
         and (delivery_id = $2 or (kafka_partition, kafka_offset) = ($3, $4))",
        topic,
        delivery,
        position.map(|p| p.0),
        position.map(|p| p.1),
        format!("the read database refused it: {error}"),
    )
    .execute(tx)
    .await?;
    Ok(())
}
