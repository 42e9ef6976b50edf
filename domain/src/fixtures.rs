//! The test kit's facts: fixed ids, times, actors, commands, events and envelopes that the
//! domain's, the command API's, the projector's and the benchmarks' tests build their cases
//! from, so every test speaks of the same delivery in the same words.
//!
//! Compiled only with the `fixtures` feature, which tests (and the benchmark's load generator)
//! turn on. Like the rest of the domain it reads no clock and draws no random number: every
//! id and time is fixed or passed in, so an expectation built from these is exact. A literal
//! here that does not parse is a broken test kit, hence the `expect`s.

use crate::event::{Cancelled, Completed, Created, PickedUp, RiderAssigned};
use crate::{
    Actor, Address, CancelReason, Command, CustomerId, DeliveryEvent, DeliveryId, Event,
    EventEnvelope, OrderRef, RiderId, Role, SCHEMA_VERSION,
};
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Times and ids.
// ---------------------------------------------------------------------------------------------

/// 2026-11-23 at `hour`:`minute` UTC: the day every fixture happens on.
pub fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, hour, minute, 0)
        .single()
        .expect("a valid, unambiguous UTC time")
}

/// 12:`minute` on the fixtures' day. Version `n` of a fixture envelope happens at `t(n)`.
pub fn t(minute: u32) -> DateTime<Utc> {
    at(12, minute)
}

/// Delivery number `n`: its id is `n` as a UUID, so ids sort and print predictably
/// (`id(2)` is `00000000-0000-0000-0000-000000000002`).
pub fn id(n: u128) -> DeliveryId {
    DeliveryId::from_uuid(Uuid::from_u128(n))
}

pub fn rider(name: &str) -> RiderId {
    RiderId::parse(name).expect("a valid rider id")
}

/// Where every fixture delivery is picked up and dropped off.
pub fn address() -> Address {
    Address::new("Main St 1", 52.5, 13.4).expect("a valid address")
}

/// Why a fixture delivery is cancelled.
pub fn reason() -> CancelReason {
    CancelReason::parse("customer asked").expect("a valid reason")
}

// ---------------------------------------------------------------------------------------------
// Actors: one of each role.
// ---------------------------------------------------------------------------------------------

pub fn dispatcher() -> Actor {
    Actor::new(Role::Dispatcher, "desk-1")
}

pub fn admin() -> Actor {
    Actor::new(Role::Admin, "root")
}

/// A job acting on its own, such as a payment timeout.
pub fn system() -> Actor {
    Actor::new(Role::System, "payment-timeout-job")
}

/// The customer who ordered the fixture delivery (`details().customer_id`).
pub fn customer() -> Actor {
    Actor::new(Role::Customer, "customer-1")
}

/// Rider `name` acting as themself: the actor id is the rider id.
pub fn as_rider(name: &str) -> Actor {
    Actor::new(Role::Rider, name)
}

// ---------------------------------------------------------------------------------------------
// Commands.
// ---------------------------------------------------------------------------------------------

/// Creates `delivery` with the fixture details.
pub fn create(delivery: DeliveryId) -> Command {
    let Created {
        order_ref,
        customer_id,
        pickup,
        dropoff,
    } = details();
    Command::Create {
        delivery_id: delivery,
        order_ref,
        customer_id,
        pickup,
        dropoff,
    }
}

pub fn assign(to: &str) -> Command {
    Command::AssignRider {
        rider_id: rider(to),
    }
}

pub fn pick_up() -> Command {
    Command::PickUp
}

pub fn complete() -> Command {
    Command::Complete
}

pub fn cancel() -> Command {
    Command::Cancel { reason: reason() }
}

/// The commands of `delivery`'s whole lifecycle, each with the actor who sends it: created and
/// assigned to rider-1 by the dispatcher, then picked up and completed by rider-1.
pub fn lifecycle(delivery: DeliveryId) -> [(Command, Actor); 4] {
    [
        (create(delivery), dispatcher()),
        (assign("rider-1"), dispatcher()),
        (pick_up(), as_rider("rider-1")),
        (complete(), as_rider("rider-1")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Facts: the change part of an event.
// ---------------------------------------------------------------------------------------------

/// What a fixture delivery is created with: order-1 of customer-1, from and to `address()`.
pub fn details() -> Created {
    Created {
        order_ref: OrderRef::parse("order-1").expect("a valid order ref"),
        customer_id: CustomerId::parse("customer-1").expect("a valid customer id"),
        pickup: address(),
        dropoff: address(),
    }
}

pub fn created() -> DeliveryEvent {
    DeliveryEvent::Created(details())
}

/// A first assignment, to rider `to`.
pub fn assigned(to: &str) -> DeliveryEvent {
    DeliveryEvent::RiderAssigned(RiderAssigned {
        rider_id: rider(to),
        previous_rider_id: None,
    })
}

/// A re-assignment from rider `from` to rider `to`.
pub fn reassigned(to: &str, from: &str) -> DeliveryEvent {
    DeliveryEvent::RiderAssigned(RiderAssigned {
        rider_id: rider(to),
        previous_rider_id: Some(rider(from)),
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
    DeliveryEvent::Cancelled(Cancelled { reason: reason() })
}

// ---------------------------------------------------------------------------------------------
// Envelopes: events as the store keeps and the relay publishes them.
// ---------------------------------------------------------------------------------------------

/// `event` stored as version `version`: event id `delivery × 100 + version`, recorded when it
/// occurred, correlation id 1 and causation id 2, not yet hashed (see [`seal`]).
pub fn envelope_of(event: &Event, version: i64) -> EventEnvelope {
    let delivery = event.delivery_id.as_uuid().as_u128();
    let version_part = u128::try_from(version).expect("versions start at 1");
    EventEnvelope {
        event_id: Uuid::from_u128(delivery * 100 + version_part),
        delivery_id: event.delivery_id,
        version,
        event_type: event.change.event_type().to_owned(),
        schema_version: SCHEMA_VERSION,
        occurred_at: event.occurred_at,
        recorded_at: event.occurred_at,
        actor: event.actor.clone(),
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
        data: event.change.data(),
        hash: None,
    }
}

/// Version `version` of `delivery`: `change`, by the dispatcher, at `t(version)`.
pub fn envelope(delivery: DeliveryId, version: i64, change: DeliveryEvent) -> EventEnvelope {
    let minute = u32::try_from(version).expect("a fixture version fits a minute");
    let event = Event {
        delivery_id: delivery,
        occurred_at: t(minute),
        actor: dispatcher(),
        change,
    };
    envelope_of(&event, version)
}

/// Hashes `events`, one delivery's versions in order, into a chain as the event store does
/// when appending: each link covers the one before.
pub fn seal(events: &mut [EventEnvelope]) {
    let mut previous: Option<String> = None;
    for event in events {
        let hash = event.chain_hash(previous.as_deref());
        event.hash = Some(hash.clone());
        previous = Some(hash);
    }
}

/// The events of one delivery, versions from 1 (see [`envelope`]), sealed into a chain.
pub fn chained(delivery: DeliveryId, changes: Vec<DeliveryEvent>) -> Vec<EventEnvelope> {
    let mut events: Vec<EventEnvelope> = changes
        .into_iter()
        .zip(1..)
        .map(|(change, version)| envelope(delivery, version, change))
        .collect();
    seal(&mut events);
    events
}
