//! A row of the event store's `events` table and its one conversion to the domain's envelope,
//! shared by the command API (which loads a history to decide on it) and the projector's audit
//! (which compares the stored history with its copies).

use chrono::{DateTime, Utc};
use domain::{DeliveryId, EventEnvelope, EventMetadata};
use uuid::Uuid;

/// One stored event as the table holds it. `metadata` stays raw JSON here so that a row that
/// cannot become an envelope is still read, and its reader decides what that means (the
/// command API refuses the history, the audit reports the event). Its readers select it with
/// `sqlx::query_as!`, which checks at compile time that the columns are exactly these fields.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// The event's data.
    pub payload: serde_json::Value,
    /// The envelope's actor, correlation and causation ids (`EventMetadata`).
    pub metadata: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// The event's link in its delivery's hash chain (none before the chain existed).
    pub hash: Option<String>,
}

/// A stored event whose metadata is not an `EventMetadata`.
#[derive(Debug, thiserror::Error)]
#[error("stored metadata cannot be read: {0}")]
pub struct UnreadableMetadata(#[source] pub serde_json::Error);

impl TryFrom<StoredEvent> for EventEnvelope {
    type Error = UnreadableMetadata;

    fn try_from(row: StoredEvent) -> Result<Self, Self::Error> {
        let metadata: EventMetadata =
            serde_json::from_value(row.metadata).map_err(UnreadableMetadata)?;
        Ok(EventEnvelope {
            event_id: row.event_id,
            delivery_id: DeliveryId::from_uuid(row.delivery_id),
            version: row.version,
            event_type: row.event_type,
            schema_version: row.schema_version,
            occurred_at: row.occurred_at,
            recorded_at: row.recorded_at,
            actor: metadata.actor,
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            data: row.payload,
            hash: row.hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::{Actor, Role};
    use serde_json::json;

    fn stored() -> StoredEvent {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("a valid time");
        StoredEvent {
            delivery_id: Uuid::from_u128(1),
            event_id: Uuid::from_u128(2),
            version: 1,
            event_type: "delivery.cancelled".to_owned(),
            schema_version: domain::SCHEMA_VERSION,
            payload: json!({"reason": "changed their mind"}),
            metadata: json!({
                "actor": {"role": "customer", "id": "customer-7"},
                "correlation_id": Uuid::from_u128(3),
                "causation_id": Uuid::from_u128(4),
            }),
            occurred_at: at,
            recorded_at: at,
            hash: Some("cd".repeat(32)),
        }
    }

    #[test]
    fn a_stored_row_becomes_the_envelope_with_its_metadata_spread_out() {
        let row = stored();
        let envelope = EventEnvelope::try_from(row.clone()).expect("readable");
        assert_eq!(envelope.delivery_id, DeliveryId::from_uuid(row.delivery_id));
        assert_eq!(envelope.actor, Actor::new(Role::Customer, "customer-7"));
        assert_eq!(envelope.correlation_id, Uuid::from_u128(3));
        assert_eq!(envelope.causation_id, Uuid::from_u128(4));
        assert_eq!(envelope.data, row.payload);
        assert_eq!(envelope.hash, row.hash);
        assert_eq!(
            serde_json::to_value(envelope.metadata()).expect("serializable"),
            row.metadata,
            "the metadata column is exactly the envelope's metadata"
        );
    }

    #[test]
    fn metadata_that_is_not_an_event_metadata_is_an_error() {
        let row = StoredEvent {
            metadata: json!({"actor": "nobody"}),
            ..stored()
        };
        let error = EventEnvelope::try_from(row).expect_err("unreadable");
        assert!(
            error
                .to_string()
                .starts_with("stored metadata cannot be read: "),
            "{error}"
        );
    }
}
