//! The rows a plan reads and writes: a message as read, and the rows of `deliveries`,
//! `delivery_history`, `parked_events` and `poison_messages`.

use domain::EventEnvelope;
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

/// The query tables' rows are the read model's contract with the query API.
pub use platform::read_model::{DeliveryRow, HistoryRow};

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
