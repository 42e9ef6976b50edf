//! The stored and published form of an event: the fact plus what the store knows about it.

use crate::{Actor, DeliveryEvent, DeliveryId, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes and reads. A consumer parks any other.
pub const SCHEMA_VERSION: i32 = 1;

/// One event as stored in the event store and published to Kafka (as JSON, keyed by delivery id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// UUID v7: unique, and sortable by creation time.
    pub event_id: Uuid,
    pub delivery_id: DeliveryId,
    /// 1, 2, 3 ... per delivery, without gaps.
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    /// The information part; its shape is fixed by `event_type` and `schema_version`.
    pub data: serde_json::Value,
    /// This event's link in its delivery's hash chain (`EventEnvelope::chain_hash`). Absent
    /// from events appended before the chain existed, and from messages published then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The parts of an envelope kept beside the payload in the event store's `metadata` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

/// Why stored or published bytes are not an event this build understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Envelope(String),
    #[error(transparent)]
    UnknownType(#[from] crate::UnknownEventType),
    #[error("unsupported schema version {0}")]
    SchemaVersion(i32),
    #[error("event data does not match its type: {0}")]
    Data(String),
}

impl EventEnvelope {
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))
    }

    /// The envelope as published: JSON bytes.
    #[expect(
        clippy::unwrap_used,
        reason = "every field is a string, number, uuid, time or already-valid JSON value, and \
                  writing to a Vec cannot fail: serializing cannot fail"
    )]
    pub fn to_json(&self) -> Vec<u8> {
        // Empty bytes here would be published as the event: better no message at all.
        serde_json::to_vec(self).unwrap()
    }

    /// The domain fact inside, checked against the schema this build knows.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DecodeError::SchemaVersion(self.schema_version));
        }
        let change = DeliveryEvent::from_parts(&self.event_type, &self.data)?;
        Ok(Event {
            delivery_id: self.delivery_id,
            occurred_at: self.occurred_at,
            actor: self.actor.clone(),
            change,
        })
    }

    pub fn metadata(&self) -> EventMetadata {
        EventMetadata {
            actor: self.actor.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
        }
    }
}
