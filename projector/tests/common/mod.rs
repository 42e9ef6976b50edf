//! Messages and planned read models for the projector's tests, over the shared test kit.
#![allow(dead_code)]

use domain::{DeliveryEvent, DeliveryId, EventEnvelope};
use e2e::{Broker, Publisher};
use projector::plan::{Current, Incoming, plan};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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

/// A broker with `topic` of `partitions`, a publisher to it, and a pool of `connections` of its
/// own on the test's database: the live projector and a rebuild each hold connections.
pub async fn on_broker(
    database: &PgPool,
    topic: &str,
    partitions: u32,
    connections: u32,
) -> (Broker, Publisher, PgPool) {
    let broker = Broker::start_with(topic, partitions).await;
    let publisher = broker.publisher(topic);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with((*database.connect_options()).clone())
        .await
        .expect("pool");
    (broker, publisher, pool)
}
