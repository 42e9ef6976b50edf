//! Messages and planned read models for the projector's tests, over the shared test kit.
#![allow(dead_code)]

use domain::{DeliveryEvent, DeliveryId, EventEnvelope};
use projector::plan::{Current, Incoming, plan};

/// The shared kit's ids, times, events and envelopes.
pub use domain::fixtures::*;

pub fn message(offset: i64, envelope: &EventEnvelope) -> Incoming {
    Incoming {
        partition: 0,
        offset,
        key: Some(envelope.delivery_id.to_string().into_bytes()),
        payload: Some(envelope.to_json()),
    }
}

/// Messages at offsets 0, 1, 2 ... for the given events of one delivery, versions from 1.
pub fn stream(delivery: DeliveryId, changes: Vec<DeliveryEvent>) -> Vec<Incoming> {
    changes
        .into_iter()
        .zip(1..)
        .map(|(change, version)| message(version - 1, &envelope(delivery, version, change)))
        .collect()
}

/// The read model after `plan` of `messages` on an empty model, as `Current` for a next batch.
pub fn projected(messages: Vec<Incoming>) -> Current {
    let plan = plan(Current::default(), messages);
    Current {
        rows: plan
            .deliveries
            .into_iter()
            .map(|row| (row.state.delivery_id, row))
            .collect(),
        parked: plan.parked,
        ..Current::default()
    }
}
