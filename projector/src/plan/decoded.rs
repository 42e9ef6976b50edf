//! A message decoded once, before the batch's transaction opens: its envelope and the domain
//! fact inside, or the poison record of why it can never apply.

use super::{Incoming, PoisonMessage};
use domain::{DeliveryId, Event, EventEnvelope};
use uuid::Uuid;

/// A message decoded once: where it came from, and its envelope with the domain fact inside,
/// or why it can never apply.
pub struct Decoded {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) fact: Result<(EventEnvelope, Event), PoisonMessage>,
}

impl Decoded {
    /// Parses the payload once, checking the envelope, the type, the schema version and the
    /// data, so a bad message becomes poison here and nothing later parses it again.
    pub fn new(message: &Incoming) -> Self {
        let fact = decode(message).map_err(|error| poison(message, error));
        Self {
            partition: message.partition,
            offset: message.offset,
            fact,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn version(&self) -> Option<i64> {
        match &self.fact {
            Ok((envelope, _)) => Some(envelope.version),
            Err(poison) => poison.version,
        }
    }

    /// Whose event it is: from its envelope, or for poison, as far as it could be told.
    pub fn delivery_id(&self) -> Option<DeliveryId> {
        match &self.fact {
            Ok((envelope, _)) => Some(envelope.delivery_id),
            Err(poison) => poison.delivery_id.map(DeliveryId::from_uuid),
        }
    }
}

fn decode(message: &Incoming) -> Result<(EventEnvelope, Event), String> {
    let payload = message
        .payload
        .as_deref()
        .ok_or_else(|| "message has no payload".to_owned())?;
    let envelope = EventEnvelope::from_json(payload).map_err(|e| e.to_string())?;
    let event = envelope.decode().map_err(|e| e.to_string())?;
    if envelope.version < 1 {
        return Err(format!("version {} is not positive", envelope.version));
    }
    Ok((envelope, event))
}

fn poison(message: &Incoming, error: String) -> PoisonMessage {
    tracing::warn!(
        partition = message.partition, offset = message.offset, %error,
        "poison message: recorded and skipped"
    );
    let envelope = (message.payload.as_deref()).and_then(|p| EventEnvelope::from_json(p).ok());
    PoisonMessage {
        kafka_partition: message.partition,
        kafka_offset: message.offset,
        message_key: message.key.clone(),
        payload: message.payload.clone(),
        error,
        // An envelope this build cannot apply (a newer schema, say) still says whose event it
        // is and which version; failing that, the key is the delivery id, by contract. Either
        // way its delivery's later events are seen waiting behind it.
        delivery_id: (envelope.as_ref().map(|e| e.delivery_id.as_uuid()))
            .or_else(|| key_delivery(message.key.as_deref())),
        version: envelope.map(|e| e.version),
    }
}

/// The delivery id a message key names, if it is one.
pub fn key_delivery(key: Option<&[u8]>) -> Option<Uuid> {
    let text = std::str::from_utf8(key?).ok()?;
    Uuid::parse_str(text).ok()
}
