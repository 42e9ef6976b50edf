//! Events, envelopes and messages for the projector's tests: fixed ids and times.
#![allow(dead_code)]

use chrono::TimeZone;
use chrono::{DateTime, Utc};
use domain::{
    Actor, Address, CancelReason, Cancelled, Completed, Created, CustomerId, DeliveryEvent,
    OrderRef, PickedUp, RiderAssigned, Role, SCHEMA_VERSION,
};
use domain::{DeliveryId, EventEnvelope, RiderId};
use projector::plan::{Current, Incoming, plan};
use uuid::Uuid;

pub fn t(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, minute, 0)
        .single()
        .expect("valid time")
}

pub fn id(n: u128) -> DeliveryId {
    DeliveryId::from_uuid(Uuid::from_u128(n))
}

pub fn rider(name: &str) -> RiderId {
    RiderId::parse(name).expect("valid rider id")
}

pub fn created() -> DeliveryEvent {
    let address = Address::new("Main St 1", 52.5, 13.4).expect("valid address");
    DeliveryEvent::Created(Created {
        order_ref: OrderRef::parse("order-1").expect("valid"),
        customer_id: CustomerId::parse("customer-1").expect("valid"),
        pickup: address.clone(),
        dropoff: address,
    })
}

pub fn assigned(to: &str) -> DeliveryEvent {
    DeliveryEvent::RiderAssigned(RiderAssigned {
        rider_id: rider(to),
        previous_rider_id: None,
    })
}

pub fn picked_up(by: &str) -> DeliveryEvent {
    DeliveryEvent::PickedUp(PickedUp {
        rider_id: rider(by),
    })
}

pub fn completed(by: &str) -> DeliveryEvent {
    DeliveryEvent::Completed(Completed {
        rider_id: rider(by),
    })
}

pub fn cancelled() -> DeliveryEvent {
    DeliveryEvent::Cancelled(Cancelled {
        reason: CancelReason::parse("customer asked").expect("valid"),
    })
}

pub fn envelope(delivery: DeliveryId, version: i64, change: DeliveryEvent) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::from_u128(delivery.as_uuid().as_u128() * 100 + version as u128),
        delivery_id: delivery,
        version,
        event_type: change.event_type().to_owned(),
        schema_version: SCHEMA_VERSION,
        occurred_at: t(version as u32),
        recorded_at: t(version as u32),
        actor: Actor::new(Role::Dispatcher, "desk-1"),
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
        data: change.data(),
        hash: None,
    }
}

/// The events of one delivery, versions from 1, each sealed with its hash chain link as the
/// event store does when appending.
pub fn chained(delivery: DeliveryId, changes: Vec<DeliveryEvent>) -> Vec<EventEnvelope> {
    let mut previous: Option<String> = None;
    changes
        .into_iter()
        .zip(1..)
        .map(|(change, version)| {
            let mut sealed = envelope(delivery, version, change);
            let hash = sealed.chain_hash(previous.as_deref());
            sealed.hash = Some(hash.clone());
            previous = Some(hash);
            sealed
        })
        .collect()
}

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

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout` (the
/// projector's tests cannot use the e2e crate's helper: that crate depends on this one).
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
