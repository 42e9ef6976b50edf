//! Past-tense facts about a delivery.
//!
//! The event type names (`delivery.created`, ...) are a public contract read by every consumer:
//! they are spelled out here, independent of Rust names, and never renamed.

use crate::{Actor, Address, CancelReason, CustomerId, DeliveryId, OrderRef, RiderId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The action and its information.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryEvent {
    Created(Created),
    RiderAssigned(RiderAssigned),
    PickedUp(PickedUp),
    Completed(Completed),
    Cancelled(Cancelled),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub order_ref: OrderRef,
    pub customer_id: CustomerId,
    pub pickup: Address,
    pub dropoff: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiderAssigned {
    pub rider_id: RiderId,
    /// The rider this assignment replaces, when it is a re-assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_rider_id: Option<RiderId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PickedUp {
    pub rider_id: RiderId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub rider_id: RiderId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub reason: CancelReason,
}

/// An event type name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl DeliveryEvent {
    pub const CREATED: &'static str = "delivery.created";
    pub const RIDER_ASSIGNED: &'static str = "delivery.rider_assigned";
    pub const PICKED_UP: &'static str = "delivery.picked_up";
    pub const COMPLETED: &'static str = "delivery.completed";
    pub const CANCELLED: &'static str = "delivery.cancelled";

    /// Every type name, in lifecycle order.
    pub const TYPES: [&'static str; 5] = [
        Self::CREATED,
        Self::RIDER_ASSIGNED,
        Self::PICKED_UP,
        Self::COMPLETED,
        Self::CANCELLED,
    ];

    /// The stable type name stored with the event and sent as a Kafka header.
    pub fn event_type(&self) -> &'static str {
        match self {
            DeliveryEvent::Created(_) => Self::CREATED,
            DeliveryEvent::RiderAssigned(_) => Self::RIDER_ASSIGNED,
            DeliveryEvent::PickedUp(_) => Self::PICKED_UP,
            DeliveryEvent::Completed(_) => Self::COMPLETED,
            DeliveryEvent::Cancelled(_) => Self::CANCELLED,
        }
    }

    /// The information part, as stored in the `payload` column.
    #[expect(
        clippy::unwrap_used,
        reason = "plain structs of strings, ids, times and numbers with string keys always \
                  serialize: serde_json fails only on non-string map keys or a failing \
                  Serialize impl, and these have neither"
    )]
    pub fn data(&self) -> serde_json::Value {
        let value = match self {
            DeliveryEvent::Created(data) => serde_json::to_value(data),
            DeliveryEvent::RiderAssigned(data) => serde_json::to_value(data),
            DeliveryEvent::PickedUp(data) => serde_json::to_value(data),
            DeliveryEvent::Completed(data) => serde_json::to_value(data),
            DeliveryEvent::Cancelled(data) => serde_json::to_value(data),
        };
        // A `null` here would be stored, hashed and published as the event's data: better no
        // event at all.
        value.unwrap()
    }

    /// Rebuilds an event from its stored type name and information.
    pub fn from_parts(
        event_type: &str,
        data: &serde_json::Value,
    ) -> Result<Self, crate::DecodeError> {
        // Read in place: the projector decodes every event of a replay through here.
        fn parse<T: serde::de::DeserializeOwned>(
            data: &serde_json::Value,
        ) -> Result<T, crate::DecodeError> {
            T::deserialize(data).map_err(|e| crate::DecodeError::Data(e.to_string()))
        }
        Ok(match event_type {
            Self::CREATED => DeliveryEvent::Created(parse(data)?),
            Self::RIDER_ASSIGNED => DeliveryEvent::RiderAssigned(parse(data)?),
            Self::PICKED_UP => DeliveryEvent::PickedUp(parse(data)?),
            Self::COMPLETED => DeliveryEvent::Completed(parse(data)?),
            Self::CANCELLED => DeliveryEvent::Cancelled(parse(data)?),
            other => {
                return Err(crate::DecodeError::UnknownType(UnknownEventType(
                    other.to_owned(),
                )));
            }
        })
    }
}

/// A fact with its four parts (subject, action + information, time) and the actor who caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub delivery_id: DeliveryId,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    pub change: DeliveryEvent,
}
