//! Given the read model's rows and a batch of messages, then these writes (no IO).

mod common;

use common::*;
use domain::Status;
use projector::plan::{Current, Incoming, RiderChange, plan};
use std::collections::BTreeMap;

#[test]
fn a_whole_lifecycle_in_one_batch_gives_one_completed_row_and_four_history_rows() {
    let plan = plan(
        Current::default(),
        stream(
            id(1),
            vec![
                created(),
                assigned("rider-1"),
                picked_up("rider-1"),
                completed("rider-1"),
            ],
        ),
    );
    assert_eq!(plan.deliveries.len(), 1);
    let row = &plan.deliveries[0];
    assert_eq!(row.version, 4);
    assert_eq!(row.state.status, Status::Completed);
    assert_eq!(row.state.completed_at, Some(t(4)));
    assert_eq!(row.updated_at, t(4));
    let versions: Vec<i64> = plan.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(
        plan.status_changes,
        BTreeMap::from([(Status::Completed, 1)])
    );
    assert_eq!(
        plan.rider_changes[&rider("rider-1")],
        RiderChange {
            active: 0,
            completed: 1,
            last_event_at: Some(t(4)),
        }
    );
    assert_eq!(plan.next_offsets, BTreeMap::from([(0, 4)]));
    assert!(plan.parked.is_empty() && plan.poison.is_empty());
}

#[test]
fn redelivered_events_change_nothing() {
    let events = stream(id(1), vec![created(), assigned("rider-1")]);
    let current = projected(events.clone());
    // The relay republished both (new offsets), then the next event followed.
    let mut again: Vec<Incoming> = events
        .into_iter()
        .map(|mut m| {
            m.offset += 10;
            m
        })
        .collect();
    again.push(message(12, &envelope(id(1), 3, picked_up("rider-1"))));
    let plan = plan(current, again);
    assert_eq!(plan.duplicates, 2);
    assert_eq!(plan.history.len(), 1);
    assert_eq!(plan.history[0].version, 3);
    assert_eq!(
        plan.status_changes,
        BTreeMap::from([(Status::RiderAssigned, -1), (Status::PickedUp, 1)])
    );
    // Picking up keeps the same rider active: no rider change at all.
    assert!(plan.rider_changes.is_empty());
    assert_eq!(plan.next_offsets, BTreeMap::from([(0, 13)]));
}

#[test]
fn a_batch_of_only_duplicates_writes_no_row() {
    let events = stream(id(1), vec![created()]);
    let plan = plan(projected(events.clone()), events);
    assert_eq!(plan.duplicates, 1);
    assert!(plan.deliveries.is_empty() && plan.history.is_empty());
    assert!(plan.status_changes.is_empty());
}

#[test]
fn a_version_gap_parks_the_event_until_the_missing_version_arrives() {
    let first = message(0, &envelope(id(1), 1, created()));
    let third = message(1, &envelope(id(1), 3, picked_up("rider-1")));
    let gap = plan(Current::default(), vec![first.clone(), third]);
    assert_eq!(gap.history.len(), 1);
    assert_eq!(gap.parked.len(), 1);
    assert_eq!(gap.parked[0].version, 3);
    assert_eq!(gap.parked[0].applied_version, 1);
    assert_eq!(gap.next_offsets, BTreeMap::from([(0, 2)]));

    let current = Current {
        rows: gap
            .deliveries
            .into_iter()
            .map(|row| (row.state.delivery_id, row))
            .collect(),
        parked: gap.parked,
        ..Current::default()
    };
    let second = message(2, &envelope(id(1), 2, assigned("rider-1")));
    let filled = plan(current, vec![second]);
    let versions: Vec<i64> = filled.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(filled.unparked, [(id(1).as_uuid(), 3)]);
    assert!(filled.parked.is_empty());
    assert_eq!(filled.deliveries[0].state.status, Status::PickedUp);
    assert_eq!(filled.deliveries[0].version, 3);
}

#[test]
fn events_arriving_out_of_order_in_one_batch_are_applied_in_version_order() {
    let messages = vec![
        message(0, &envelope(id(1), 2, assigned("rider-1"))),
        message(1, &envelope(id(1), 1, created())),
    ];
    let plan = plan(Current::default(), messages);
    let versions: Vec<i64> = plan.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [1, 2]);
    assert!(plan.parked.is_empty());
    assert!(
        plan.unparked.is_empty(),
        "never stored, so nothing to delete"
    );
}

#[test]
fn undecodable_messages_are_poison_and_the_partition_moves_on() {
    let unknown_type = {
        let mut envelope = envelope(id(1), 1, created());
        envelope.event_type = "delivery.teleported".into();
        envelope
    };
    let messages = vec![
        Incoming {
            partition: 3,
            offset: 7,
            key: Some(b"k".to_vec()),
            payload: Some(b"not json".to_vec()),
        },
        Incoming {
            partition: 3,
            offset: 8,
            key: None,
            payload: Some(unknown_type.to_json()),
        },
        Incoming {
            partition: 3,
            offset: 9,
            key: None,
            payload: None,
        },
    ];
    let plan = plan(Current::default(), messages);
    let offsets: Vec<i64> = plan.poison.iter().map(|p| p.kafka_offset).collect();
    assert_eq!(offsets, [7, 8, 9]);
    assert!(plan.poison[1].error.contains("delivery.teleported"));
    assert_eq!(plan.poison[0].message_key.as_deref(), Some(&b"k"[..]));
    assert!(plan.deliveries.is_empty());
    assert_eq!(plan.next_offsets, BTreeMap::from([(3, 10)]));
}

#[test]
fn an_impossible_history_is_poison_and_the_delivery_stays_where_it_was() {
    let messages = vec![
        message(0, &envelope(id(1), 1, created())),
        // Picked up without a rider: the domain says this cannot have happened.
        message(1, &envelope(id(1), 2, picked_up("rider-1"))),
    ];
    let plan = plan(Current::default(), messages);
    assert_eq!(plan.poison.len(), 1);
    assert_eq!(plan.poison[0].kafka_offset, 1);
    assert_eq!(plan.deliveries[0].version, 1);
    assert_eq!(plan.deliveries[0].state.status, Status::Created);
}

#[test]
fn reassignment_moves_the_active_delivery_to_the_new_rider() {
    let current = projected(stream(id(1), vec![created(), assigned("rider-a")]));
    let plan = plan(
        current,
        vec![message(2, &envelope(id(1), 3, assigned("rider-b")))],
    );
    assert_eq!(plan.rider_changes[&rider("rider-a")].active, -1);
    assert_eq!(plan.rider_changes[&rider("rider-b")].active, 1);
    assert!(plan.status_changes.is_empty(), "still rider_assigned");
}

#[test]
fn cancelling_an_assigned_delivery_frees_its_rider() {
    let current = projected(stream(id(1), vec![created(), assigned("rider-a")]));
    let plan = plan(current, vec![message(2, &envelope(id(1), 3, cancelled()))]);
    assert_eq!(
        plan.rider_changes[&rider("rider-a")],
        RiderChange {
            active: -1,
            completed: 0,
            last_event_at: Some(t(3)),
        }
    );
    assert_eq!(
        plan.status_changes,
        BTreeMap::from([(Status::RiderAssigned, -1), (Status::Cancelled, 1)])
    );
}

#[test]
fn deliveries_on_several_partitions_keep_their_own_offsets() {
    let mut messages = stream(id(1), vec![created()]);
    let mut other = stream(id(2), vec![created(), assigned("rider-1")]);
    for m in &mut other {
        m.partition = 5;
        m.offset += 40;
    }
    messages.extend(other);
    let plan = plan(Current::default(), messages);
    assert_eq!(plan.next_offsets, BTreeMap::from([(0, 1), (5, 42)]));
    assert_eq!(plan.deliveries.len(), 2);
    assert_eq!(
        plan.status_changes,
        BTreeMap::from([(Status::Created, 1), (Status::RiderAssigned, 1)])
    );
}

#[test]
fn notifications_name_every_changed_delivery_within_the_payload_limit() {
    let messages: Vec<Incoming> = (1..=400)
        .map(|n| message(n as i64, &envelope(id(n), 1, created())))
        .collect();
    let plan = plan(Current::default(), messages);
    let payloads = projector::batch::notifications(&plan);
    assert!(
        payloads.len() > 1,
        "400 deliveries need more than one payload"
    );
    assert!(payloads.iter().all(|p| p.len() < 8000));
    let named: Vec<String> = payloads
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = (1..=400u128).map(|n| format!("{}:1", id(n))).collect();
    let mut sorted = named.clone();
    sorted.sort();
    let mut expected_sorted = expected;
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "each delivery named once");
}

#[test]
fn a_batch_that_moved_no_delivery_still_says_something_moved() {
    let events = stream(id(1), vec![created()]);
    let plan = plan(projected(events.clone()), events);
    assert_eq!(projector::batch::notifications(&plan), [String::new()]);
}
