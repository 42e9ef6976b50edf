//! The event store: loading a delivery's history and appending new events together with their
//! outbox records, in the caller's transaction.

use chrono::{DateTime, Utc};
use domain::{DeliveryId, Event, EventEnvelope, EventMetadata, SCHEMA_VERSION};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended this version first.
    #[error("version {version} of the delivery was written concurrently")]
    VersionConflict { version: i64 },
    #[error("a stored event cannot be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where and when the store put an appended event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Appended {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub version: i64,
    pub global_position: i64,
}

/// Who asked, so consumers can follow a chain of cause and effect.
#[derive(Debug, Clone, Copy)]
pub struct Causation {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

/// Loads a delivery's full history, in version order.
pub async fn load(
    conn: &mut PgConnection,
    delivery_id: DeliveryId,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let rows = sqlx::query(
        "select event_id, version, event_type, schema_version, payload, metadata, occurred_at, \
         recorded_at from events where delivery_id = $1 order by version",
    )
    .bind(delivery_id.as_uuid())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let metadata: EventMetadata = serde_json::from_value(row.try_get("metadata")?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(EventEnvelope {
                event_id: row.try_get("event_id")?,
                delivery_id,
                version: row.try_get("version")?,
                event_type: row.try_get("event_type")?,
                schema_version: row.try_get("schema_version")?,
                occurred_at: row.try_get("occurred_at")?,
                recorded_at: row.try_get("recorded_at")?,
                actor: metadata.actor,
                correlation_id: metadata.correlation_id,
                causation_id: metadata.causation_id,
                data: row.try_get("payload")?,
            })
        })
        .collect()
}

/// One statement per event writes the event and its outbox record; both commit or neither.
/// The outbox payload is the envelope the event store now holds, `recorded_at` included.
const APPEND: &str = "
with stored as (
    insert into events
        (event_id, delivery_id, version, event_type, schema_version, payload, metadata, occurred_at)
    values ($1, $2, $3, $4, $5, $6, $7, $8)
    returning global_position, recorded_at
), announced as (
    insert into outbox (id, aggregatetype, aggregateid, type, payload, headers)
    select $1, 'delivery', $2::text, $4,
           $9::jsonb || jsonb_build_object('recorded_at', stored.recorded_at),
           $10::jsonb || jsonb_build_object('recorded_at', stored.recorded_at::text)
    from stored
)
select global_position from stored";

/// Appends `events` as versions `current_version + 1 ...`. A concurrent writer that took one
/// of those versions makes this fail with `VersionConflict`; the caller rolls back.
pub async fn append(
    conn: &mut PgConnection,
    current_version: i64,
    events: &[Event],
    causation: Causation,
) -> Result<Vec<Appended>, StoreError> {
    let mut appended = Vec::with_capacity(events.len());
    for (version, event) in (current_version + 1..).zip(events) {
        let event_id = Uuid::now_v7();
        let event_type = event.change.event_type();
        let envelope = EventEnvelope {
            event_id,
            delivery_id: event.delivery_id,
            version,
            event_type: event_type.to_owned(),
            schema_version: SCHEMA_VERSION,
            occurred_at: event.occurred_at,
            // Replaced by the store's own time in the statement.
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
            actor: event.actor.clone(),
            correlation_id: causation.correlation_id,
            causation_id: causation.causation_id,
            data: event.change.data(),
        };
        let headers = json!({
            "event_id": event_id.to_string(),
            "event_type": event_type,
            "version": version.to_string(),
            "schema_version": SCHEMA_VERSION.to_string(),
            "correlation_id": causation.correlation_id.to_string(),
            "causation_id": causation.causation_id.to_string(),
            "actor": format!("{}:{}", event.actor.role, event.actor.id),
        });
        let result = sqlx::query_scalar::<_, i64>(APPEND)
            .bind(event_id)
            .bind(event.delivery_id.as_uuid())
            .bind(version)
            .bind(event_type)
            .bind(SCHEMA_VERSION)
            .bind(&envelope.data)
            .bind(sqlx::types::Json(envelope.metadata()))
            .bind(event.occurred_at)
            .bind(sqlx::types::Json(&envelope))
            .bind(&headers)
            .fetch_one(&mut *conn)
            .await;
        let global_position = match result {
            Ok(position) => position,
            Err(sqlx::Error::Database(e))
                if e.constraint() == Some("events_delivery_version_key") =>
            {
                return Err(StoreError::VersionConflict { version });
            }
            Err(e) => return Err(e.into()),
        };
        appended.push(Appended {
            event_id,
            event_type,
            version,
            global_position,
        });
    }
    Ok(appended)
}
