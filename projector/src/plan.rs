//! The pure part of the projector: given the read model's current rows for the deliveries in a
//! batch and the batch's messages in offset order, work out every write the batch causes.
//! No IO here, so every rule (duplicates, gaps, counts) is unit-tested without a database.

mod decoded;
mod rows;

pub use decoded::{Decoded, key_delivery};
pub use rows::{DeliveryRow, HistoryRow, Incoming, ParkedEvent, PoisonMessage};

use chrono::{DateTime, Utc};
use domain::{Delivery, DeliveryId, DeliveryState, Event, EventEnvelope, RiderId, Status};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// How one rider's counters change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RiderChange {
    pub active: i32,
    pub completed: i32,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Everything a batch writes. Applying a plan twice is harmless only because the batch filters
/// already-applied offsets and guards rows by version; the plan itself is exact.
#[derive(Debug, Default)]
pub struct Plan {
    /// Final rows of the deliveries that changed.
    pub deliveries: Vec<DeliveryRow>,
    pub history: Vec<HistoryRow>,
    pub parked: Vec<ParkedEvent>,
    /// Parked events (delivery id, version) that were applied and leave the parking table.
    pub unparked: Vec<(Uuid, i64)>,
    pub poison: Vec<PoisonMessage>,
    pub status_changes: BTreeMap<Status, i64>,
    pub rider_changes: BTreeMap<RiderId, RiderChange>,
    /// The next offset to read, per partition.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Events already applied before (redeliveries), skipped.
    pub duplicates: usize,
}

impl Plan {
    pub fn applied(&self) -> usize {
        self.history.len()
    }
}

/// What the read model holds for the deliveries of a batch before it is applied.
#[derive(Debug, Default)]
pub struct Current {
    pub rows: HashMap<DeliveryId, DeliveryRow>,
    pub parked: Vec<ParkedEvent>,
    /// Versions an operator declared skipped (`projector dlq skip`): the delivery moves past
    /// them as if applied, without their change.
    pub skipped: HashSet<(DeliveryId, i64)>,
}

/// A decoded event and where it came from.
struct Located {
    envelope: EventEnvelope,
    event: Event,
    partition: i32,
    offset: i64,
}

/// The running state of one delivery while a batch is planned.
struct Tracked {
    delivery: Delivery,
    updated_at: Option<DateTime<Utc>>,
    changed: bool,
}

/// Works out the writes for `messages` (in offset order within each partition).
pub fn plan(current: Current, messages: Vec<Incoming>) -> Plan {
    plan_decoded(current, messages.iter().map(Decoded::new).collect())
}

/// Works out the writes for already decoded messages (in offset order within each partition).
pub fn plan_decoded(current: Current, messages: Vec<Decoded>) -> Plan {
    let mut plan = Plan::default();
    let mut tracked: HashMap<DeliveryId, Tracked> = current
        .rows
        .into_iter()
        .map(|(id, row)| {
            let tracked = Tracked {
                delivery: Delivery {
                    version: row.version,
                    state: Some(row.state),
                },
                updated_at: Some(row.updated_at),
                changed: false,
            };
            (id, tracked)
        })
        .collect();
    // Parked events already stored, and those parked by this batch, by (delivery, version).
    let mut waiting: HashMap<(DeliveryId, i64), (Located, bool)> = current
        .parked
        .into_iter()
        .filter_map(|parked| {
            // It decoded when it was parked; a build that cannot decode it leaves it parked.
            let event = parked.envelope.decode().ok()?;
            let located = Located {
                partition: parked.kafka_partition,
                offset: parked.kafka_offset,
                envelope: parked.envelope,
                event,
            };
            Some((
                (located.envelope.delivery_id, located.envelope.version),
                (located, true),
            ))
        })
        .collect();

    // Deliveries whose next version was skipped, or whose parked events are next in line (after
    // a skip or a retry), move on before anything new arrives.
    let mut ready: Vec<DeliveryId> = tracked.keys().copied().collect();
    ready.extend(waiting.keys().map(|(id, _)| *id));
    ready.sort_unstable();
    ready.dedup();
    for id in ready {
        let entry = tracked.entry(id).or_insert_with(Tracked::new);
        settle(&mut plan, entry, id, &mut waiting, &current.skipped);
    }

    for message in messages {
        plan.next_offsets
            .entry(message.partition)
            .and_modify(|next| *next = (*next).max(message.offset + 1))
            .or_insert(message.offset + 1);
        let (envelope, event) = match message.fact {
            Ok(fact) => fact,
            Err(poison) => {
                // A version the delivery is already past (applied, or skipped by an operator)
                // is a redelivery, however it reads now: nothing waits on it.
                if let (Some(id), Some(version)) = (poison.delivery_id, poison.version) {
                    let id = DeliveryId::from_uuid(id);
                    let entry = tracked.entry(id).or_insert_with(Tracked::new);
                    settle(&mut plan, entry, id, &mut waiting, &current.skipped);
                    if version <= entry.delivery.version {
                        plan.duplicates += 1;
                        continue;
                    }
                }
                plan.poison.push(poison);
                continue;
            }
        };
        let located = Located {
            envelope,
            event,
            partition: message.partition,
            offset: message.offset,
        };
        let id = located.envelope.delivery_id;
        let entry = tracked.entry(id).or_insert_with(Tracked::new);
        settle(&mut plan, entry, id, &mut waiting, &current.skipped);
        let version = located.envelope.version;
        if version <= entry.delivery.version {
            plan.duplicates += 1;
            continue;
        }
        if version > entry.delivery.version + 1 {
            tracing::warn!(
                delivery_id = %id, version, applied_version = entry.delivery.version,
                "version gap: parking the event until the missing versions arrive"
            );
            waiting.entry((id, version)).or_insert((located, false));
            continue;
        }
        apply(&mut plan, entry, located);
        // The event may close a gap: apply whatever was waiting for it, in version order.
        settle(&mut plan, entry, id, &mut waiting, &current.skipped);
    }

    for ((_, _), (located, stored)) in waiting {
        if stored {
            continue;
        }
        let applied_version = tracked
            .get(&located.envelope.delivery_id)
            .map_or(0, |t| t.delivery.version);
        plan.parked.push(ParkedEvent {
            delivery_id: located.envelope.delivery_id.as_uuid(),
            version: located.envelope.version,
            applied_version,
            envelope: located.envelope,
            kafka_partition: located.partition,
            kafka_offset: located.offset,
        });
    }
    plan.parked
        .sort_by_key(|parked| (parked.delivery_id, parked.version));

    let mut rows: Vec<DeliveryRow> = tracked
        .into_values()
        .filter(|t| t.changed)
        .filter_map(|t| {
            Some(DeliveryRow {
                state: t.delivery.state?,
                version: t.delivery.version,
                updated_at: t.updated_at?,
            })
        })
        .collect();
    // A stable order keeps row locks in one order across concurrent writers.
    rows.sort_by_key(|row| row.state.delivery_id);
    plan.deliveries = rows;
    plan.status_changes.retain(|_, change| *change != 0);
    plan
}

impl Tracked {
    fn new() -> Self {
        Tracked {
            delivery: Delivery::default(),
            updated_at: None,
            changed: false,
        }
    }
}

/// Moves a delivery on as far as it can: past versions declared skipped, and through parked
/// events that are next in line, in version order.
fn settle(
    plan: &mut Plan,
    entry: &mut Tracked,
    id: DeliveryId,
    waiting: &mut HashMap<(DeliveryId, i64), (Located, bool)>,
    skipped: &HashSet<(DeliveryId, i64)>,
) {
    loop {
        let next = entry.delivery.version + 1;
        if skipped.contains(&(id, next)) {
            entry.delivery.version = next;
            continue;
        }
        let Some((event, stored)) = waiting.remove(&(id, next)) else {
            return;
        };
        if stored {
            plan.unparked.push((id.as_uuid(), next));
        }
        let before = entry.delivery.version;
        apply(plan, entry, event);
        if entry.delivery.version == before {
            // It could not apply (now poison): its successors keep waiting behind it.
            return;
        }
    }
}

/// Folds the next version into the delivery with the domain's own `evolve`, and records the
/// history row and the counter changes it causes.
fn apply(plan: &mut Plan, tracked: &mut Tracked, located: Located) {
    let Located {
        envelope,
        event,
        partition,
        offset,
    } = located;
    let _span = tracing::debug_span!(
        "event", partition, offset, delivery_id = %envelope.delivery_id,
        event_type = %envelope.event_type, version = envelope.version
    )
    .entered();
    let before = tracked.delivery.clone();
    let evolved = match std::mem::take(&mut tracked.delivery).evolve(&event) {
        Ok(evolved) => evolved,
        Err(error) => {
            // A history the domain says cannot have happened: keep it for a person, and leave
            // the delivery where it was (its later events will wait as parked).
            tracked.delivery = before;
            plan.poison.push(poison_envelope(
                &envelope,
                partition,
                offset,
                error.to_string(),
            ));
            return;
        }
    };
    let Some(after) = evolved.state.as_ref() else {
        tracked.delivery = before;
        return;
    };
    let occurred_at = envelope.occurred_at;
    count_changes(plan, before.state.as_ref(), after, occurred_at);
    plan.history
        .push(HistoryRow::from_owned(envelope, partition, offset));
    tracked.delivery = evolved;
    tracked.updated_at = Some(occurred_at);
    tracked.changed = true;
}

fn poison_envelope(
    envelope: &EventEnvelope,
    partition: i32,
    offset: i64,
    error: String,
) -> PoisonMessage {
    tracing::warn!(partition, offset, %error, "event cannot be applied: recorded as poison");
    PoisonMessage {
        kafka_partition: partition,
        kafka_offset: offset,
        message_key: Some(envelope.delivery_id.to_string().into_bytes()),
        payload: Some(envelope.to_json()),
        error,
        delivery_id: Some(envelope.delivery_id.as_uuid()),
        version: Some(envelope.version),
    }
}

/// The rider who is working on the delivery, if any.
fn active_rider(state: &DeliveryState) -> Option<&RiderId> {
    match state.status {
        Status::RiderAssigned | Status::PickedUp => state.rider_id.as_ref(),
        _ => None,
    }
}

fn count_changes(
    plan: &mut Plan,
    before: Option<&DeliveryState>,
    after: &DeliveryState,
    at: DateTime<Utc>,
) {
    if let Some(before) = before {
        *plan.status_changes.entry(before.status).or_default() -= 1;
    }
    *plan.status_changes.entry(after.status).or_default() += 1;

    let was = before.and_then(active_rider);
    let is = active_rider(after);
    let mut touch = |rider: &RiderId, active: i32, completed: i32| {
        let change = plan.rider_changes.entry(rider.clone()).or_default();
        change.active += active;
        change.completed += completed;
        change.last_event_at = Some(change.last_event_at.map_or(at, |t| t.max(at)));
    };
    if was != is {
        if let Some(rider) = was {
            touch(rider, -1, 0);
        }
        if let Some(rider) = is {
            touch(rider, 1, 0);
        }
    }
    let completed_now =
        after.status == Status::Completed && before.is_none_or(|b| b.status != Status::Completed);
    if completed_now && let Some(rider) = after.rider_id.as_ref() {
        touch(rider, 0, 1);
    }
}
