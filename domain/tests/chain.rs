//! The hash chain as sentences: given a stored history sealed at append time, when someone
//! changes, removes or reorders it, then `verify_chain` names the version where it breaks.

use chrono::Duration;
use domain::fixtures::{
    as_rider, assigned, created, details, dispatcher, envelope, id, picked_up, seal, t,
};
use domain::{
    Actor, Address, CancelReason, Cancelled, ChainError, Created, DeliveryEvent, DeliveryId,
    EventEnvelope, Role, verify_chain,
};
use sha2::Digest;
use uuid::Uuid;

/// Versions 1..=3 of one delivery (created, assigned, picked up by the rider), hashed in order
/// as the store does when appending. Its ids are spelled out here: the canonical form and the
/// hash below were computed for exactly these.
fn sealed() -> Vec<EventEnvelope> {
    let changes = [created(), assigned("rider-1"), picked_up("rider-1")];
    let mut events: Vec<EventEnvelope> = changes
        .into_iter()
        .zip(1..)
        .map(|(change, version): (DeliveryEvent, i64)| EventEnvelope {
            event_id: Uuid::from_u128(0xe0 + u128::from(version.unsigned_abs())),
            recorded_at: t(30),
            correlation_id: Uuid::from_u128(0xc0),
            causation_id: Uuid::from_u128(0xca),
            ..envelope(id(0xd1), version, change)
        })
        .collect();
    events[2].actor = as_rider("rider-1");
    seal(&mut events);
    events
}

#[test]
fn an_untouched_chain_verifies() {
    assert_eq!(verify_chain(&sealed()), Ok(()));
}

#[test]
fn a_delivery_without_events_has_nothing_to_verify() {
    assert_eq!(verify_chain(&[]), Ok(()));
}

#[test]
fn changed_data_is_detected_at_its_version() {
    let mut events = sealed();
    events[1].data = serde_json::json!({ "rider_id": "rider-9" });
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 2 })
    );
}

#[test]
fn a_changed_actor_is_detected() {
    let mut events = sealed();
    events[2].actor = Actor::new(Role::Admin, "rider-1");
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 3 })
    );

    let mut events = sealed();
    events[0].actor.id = "desk-2".to_owned();
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 1 })
    );
}

#[test]
fn a_changed_time_is_detected_down_to_the_microsecond() {
    let mut events = sealed();
    events[0].occurred_at += Duration::microseconds(1);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 1 })
    );
}

#[test]
fn digits_below_the_microsecond_are_not_part_of_the_hash() {
    // Postgres keeps microseconds: what the store reads back must still verify.
    let mut events = sealed();
    events[0].occurred_at += Duration::nanoseconds(999);
    assert_eq!(verify_chain(&events), Ok(()));
}

#[test]
fn the_recorded_time_is_not_part_of_the_hash() {
    // The database sets it after the hash is computed.
    let mut events = sealed();
    events[1].recorded_at = t(59);
    assert_eq!(verify_chain(&events), Ok(()));
}

#[test]
fn changed_ids_type_and_schema_version_are_detected() {
    let tamperings: [fn(&mut EventEnvelope); 6] = [
        |e| e.event_id = Uuid::from_u128(1),
        |e| e.delivery_id = DeliveryId::from_uuid(Uuid::from_u128(2)),
        |e| e.event_type = DeliveryEvent::CANCELLED.to_owned(),
        |e| e.schema_version += 1,
        |e| e.correlation_id = Uuid::from_u128(3),
        |e| e.causation_id = Uuid::from_u128(4),
    ];
    for tamper in tamperings {
        let mut events = sealed();
        tamper(&mut events[1]);
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::Changed { version: 2 })
        );
    }
}

#[test]
fn rehashing_a_changed_event_breaks_the_link_to_the_next_one() {
    let mut events = sealed();
    events[1].data = serde_json::json!({ "rider_id": "rider-9" });
    events[1].hash = Some(events[1].chain_hash(events[0].hash.as_deref()));
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 3 })
    );
}

#[test]
fn a_chain_rehashed_from_the_change_onward_verifies_on_its_own() {
    // The hashes are not secret: whoever can rewrite every later row can rewrite the chain.
    // What shows it is a copy of the old hashes elsewhere (the topic, the read model), which
    // is why the audit compares hashes across all three.
    let mut events = sealed();
    events[1].data = serde_json::json!({ "rider_id": "rider-9" });
    for index in 1..events.len() {
        let previous = events[index - 1].hash.clone();
        events[index].hash = Some(events[index].chain_hash(previous.as_deref()));
    }
    assert_eq!(verify_chain(&events), Ok(()));
    assert_ne!(events[1].hash, sealed()[1].hash);
}

#[test]
fn a_removed_event_is_detected_as_a_missing_version() {
    let mut events = sealed();
    events.remove(1);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Missing { version: 2 })
    );

    let mut events = sealed();
    events.remove(0);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Missing { version: 1 })
    );
}

#[test]
fn a_removed_event_renumbered_to_close_the_gap_is_detected() {
    let mut events = sealed();
    events.remove(1);
    events[1].version = 2;
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 2 })
    );
}

#[test]
fn reordered_events_are_detected() {
    let mut events = sealed();
    events.swap(1, 2);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Missing { version: 2 })
    );

    // Swapping the facts but keeping the version numbers in place.
    let mut events = sealed();
    events.swap(1, 2);
    events[1].version = 2;
    events[2].version = 3;
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 2 })
    );
}

#[test]
fn a_repeated_version_is_out_of_order() {
    let mut events = sealed();
    let again = events[1].clone();
    events.insert(2, again);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::OutOfOrder {
            version: 2,
            expected: 3
        })
    );
}

#[test]
fn an_event_without_a_hash_is_reported() {
    let mut events = sealed();
    events[1].hash = None;
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Unhashed { version: 2 })
    );
}

#[test]
fn an_appended_event_that_does_not_follow_the_chain_is_detected() {
    let mut events = sealed();
    let (change, actor) = (
        DeliveryEvent::Cancelled(Cancelled {
            reason: CancelReason::parse("forged").expect("valid"),
        }),
        dispatcher(),
    );
    let mut forged = events[2].clone();
    forged.version = 4;
    forged.event_type = change.event_type().to_owned();
    forged.data = change.data();
    forged.actor = actor;
    // Chained to version 2 instead of 3.
    forged.hash = Some(forged.chain_hash(events[1].hash.as_deref()));
    events.push(forged);
    assert_eq!(
        verify_chain(&events),
        Err(ChainError::Changed { version: 4 })
    );
}

#[test]
fn the_canonical_form_is_fixed() {
    let events = sealed();
    assert_eq!(
        events[1].canonical_form(Some("ab")),
        concat!(
            r#"{"actor":{"id":"desk-1","role":"dispatcher"},"#,
            r#""causation_id":"00000000-0000-0000-0000-0000000000ca","#,
            r#""correlation_id":"00000000-0000-0000-0000-0000000000c0","#,
            r#""data":{"rider_id":"rider-1"},"#,
            r#""delivery_id":"00000000-0000-0000-0000-0000000000d1","#,
            r#""event_id":"00000000-0000-0000-0000-0000000000e2","#,
            r#""occurred_at":"2026-11-23T12:02:00.000000Z","#,
            r#""previous_hash":"ab","schema_version":1,"type":"delivery.rider_assigned","version":2}"#,
        )
    );
    // Nested objects are sorted too; numbers keep serde_json's shortest spelling.
    let created = &events[0].canonical_form(None);
    assert!(
        created.contains(
            r#""data":{"customer_id":"customer-1","dropoff":{"lat":52.5,"line":"Main St 1","lon":13.4},"#
        ),
        "{created}"
    );
    assert!(created.contains(r#""previous_hash":null"#), "{created}");
}

#[test]
fn the_hash_is_the_hex_sha256_of_the_canonical_form() {
    // Computed independently: printf '%s' "<canonical form>" | sha256sum
    let events = sealed();
    assert_eq!(
        events[1].chain_hash(Some("ab")),
        "3430d4c980dbe9f1baf8e1363783170df978a13199f1024d236af937aeefa6f3"
    );
}

#[test]
fn the_same_event_after_another_previous_hash_has_another_hash() {
    let events = sealed();
    assert_ne!(
        events[1].chain_hash(Some("ab")),
        events[1].chain_hash(Some("cd"))
    );
    assert_ne!(events[1].chain_hash(Some("ab")), events[1].chain_hash(None));
}

/// A delivery created at (-0.0, -0.0): a place on the equator and the prime meridian that
/// clients may well send with a sign.
fn sealed_at_negative_zero() -> EventEnvelope {
    let address = Address::new("Null Island", -0.0, -0.0).expect("a valid address");
    let change = DeliveryEvent::Created(Created {
        pickup: address.clone(),
        dropoff: address,
        ..details()
    });
    let mut envelope = sealed().swap_remove(0);
    envelope.data = change.data();
    envelope.hash = Some(envelope.chain_hash(None));
    envelope
}

/// The event as the store gives it back: `jsonb` keeps numbers as `numeric`, which has no
/// negative zero, so `-0.0` reads back as `0.0`.
fn as_stored(mut event: EventEnvelope) -> EventEnvelope {
    let text = event.data.to_string().replace("-0.0", "0.0");
    event.data = serde_json::from_str(&text).expect("still JSON");
    event
}

#[test]
fn a_negative_zero_coordinate_verifies_after_the_store_drops_its_sign() {
    let event = sealed_at_negative_zero();
    assert!(event.data.to_string().contains("-0.0"), "in memory: signed");
    assert_eq!(verify_chain(&[as_stored(event)]), Ok(()));
}

#[test]
fn a_hash_taken_when_the_form_still_wrote_minus_zero_verifies() {
    // Events appended before the form dropped the sign of zero were hashed over `-0.0`.
    let mut event = as_stored(sealed_at_negative_zero());
    let form = event.canonical_form(None);
    for legacy in [
        form.replace(r#""lat":0.0"#, r#""lat":-0.0"#),
        form.replace(r#""lon":0.0"#, r#""lon":-0.0"#),
        form.replace(":0.0", ":-0.0"),
    ] {
        assert_ne!(legacy, form);
        let digest = sha2::Sha256::digest(legacy.as_bytes());
        event.hash = Some(digest.iter().map(|b| format!("{b:02x}")).collect());
        assert_eq!(
            verify_chain(std::slice::from_ref(&event)),
            Ok(()),
            "{legacy}"
        );
    }
}

#[test]
fn a_zero_coordinate_changed_to_another_number_is_still_detected() {
    let mut event = as_stored(sealed_at_negative_zero());
    event.data["pickup"]["lat"] = serde_json::json!(0.5);
    assert_eq!(
        verify_chain(&[event]),
        Err(ChainError::Changed { version: 1 })
    );
}
