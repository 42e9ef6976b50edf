//! The delivery aggregate as a pure state machine.
//!
//! Nothing here does IO, reads a clock or draws a random number: time, ids and the acting
//! party arrive as data, so every rule can be tested as a sentence
//! (given these events, when this command, then these events or this error).

mod actor;
mod canonical;
mod chain;
mod delivery;
mod envelope;
mod error;
mod event;
#[cfg(feature = "fixtures")]
pub mod fixtures;
mod ids;
#[cfg(feature = "openapi")]
mod openapi;

pub use actor::{Actor, Role};
pub use canonical::canonical_json;
pub use chain::{ChainError, verify_chain};
pub use delivery::{Command, Delivery, DeliveryState, Status};
pub use envelope::{DecodeError, EventEnvelope, EventMetadata, SCHEMA_VERSION};
pub use error::{DeliveryError, HistoryError};
pub use event::{
    Cancelled, Completed, Created, DeliveryEvent, Event, PickedUp, RiderAssigned, UnknownEventType,
};
pub use ids::{Address, CancelReason, CustomerId, DeliveryId, InvalidValue, OrderRef, RiderId};
