//! The rows a plan reads and writes: a message as read, and the rows of `deliveries`,
//! `delivery_history`, `parked_events` and `poison_messages`.

use chrono::{DateTime, Utc};
use domain::{DeliveryState, EventEnvelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One Kafka message as read, before decoding.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A row of `deliveries`: the domain's state plus the projection's bookkeeping. Field names are
/// the column names, so rows travel to and from Postgres as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    #[serde(flatten)]
    pub state: DeliveryState,
    /// The last applied event version.
    pub version: i64,
    /// When the last applied event happened.
    pub updated_at: DateTime<Utc>,
}

/// A row of `delivery_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub delivery_id: Uuid,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub actor_role: String,
    pub actor_id: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub data: serde_json::Value,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The event's hash chain link as published (none for events from before the chain).
    pub hash: Option<String>,
}

impl HistoryRow {
    /// The history row of an event read from `partition` at `offset`.
    pub fn from_envelope(envelope: &EventEnvelope, partition: i32, offset: i64) -> Self {
        Self::from_owned(envelope.clone(), partition, offset)
    }

    /// `from_envelope`, taking the envelope's strings and data instead of copying them.
    pub fn from_owned(envelope: EventEnvelope, partition: i32, offset: i64) -> Self {
        HistoryRow {
            delivery_id: envelope.delivery_id.as_uuid(),
            version: envelope.version,
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            actor_role: envelope.actor.role.as_str().to_owned(),
            actor_id: envelope.actor.id,
            occurred_at: envelope.occurred_at,
            recorded_at: envelope.recorded_at,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            data: envelope.data,
            kafka_partition: partition,
            kafka_offset: offset,
            hash: envelope.hash,
        }
    }
}

/// An event that arrived ahead of a missing version of its delivery (a row of `parked_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub delivery_id: Uuid,
    pub version: i64,
    /// The version the read model had when this one arrived.
    pub applied_version: i64,
    pub envelope: EventEnvelope,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// A message that can never be applied (a row of `poison_messages`), as read: the key and
/// payload are raw bytes, whatever they hold. `poison::Record` makes them storable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoisonMessage {
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub message_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
    /// The delivery it belongs to, when known (its envelope decoded, or its key is a UUID):
    /// that delivery's later events wait behind it.
    pub delivery_id: Option<Uuid>,
    /// Its version, when its envelope decoded.
    pub version: Option<i64>,
}
