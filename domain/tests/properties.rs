//! Invariants that hold for any sequence of commands by any actors.
//!
//! Random sequences of (command, actor) from a small pool are decided one after the other;
//! accepted events are folded into the delivery, refused commands change nothing. Whatever
//! the sequence, the accepted history is a possible one and follows the lifecycle.

use chrono::{DateTime, Duration, Utc};
use domain::fixtures::{
    admin, as_rider, assign, assigned, at, cancel, cancelled, complete, completed, create, created,
    customer, dispatcher, id, pick_up, picked_up, system,
};
use domain::{Actor, Command, Completed, Delivery, DeliveryEvent, Event, PickedUp, Role, Status};
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------------
// The pool.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Dispatcher,
    Admin,
    System,
    Rider1,
    Rider2,
    Customer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Create,
    AssignRider1,
    AssignRider2,
    PickUp,
    Complete,
    Cancel,
}

fn start() -> DateTime<Utc> {
    at(8, 0)
}

fn actor(who: Who) -> Actor {
    match who {
        Who::Dispatcher => dispatcher(),
        Who::Admin => admin(),
        Who::System => system(),
        Who::Rider1 => as_rider("rider-1"),
        Who::Rider2 => as_rider("rider-2"),
        Who::Customer => customer(),
    }
}

fn command(what: What) -> Command {
    match what {
        What::Create => create(id(1)),
        What::AssignRider1 => assign("rider-1"),
        What::AssignRider2 => assign("rider-2"),
        What::PickUp => pick_up(),
        What::Complete => complete(),
        What::Cancel => cancel(),
    }
}

/// Weighted so that many sequences create the delivery early and walk it to its end,
/// while every command and actor still shows up often.
fn what() -> impl Strategy<Value = What> {
    prop_oneof![
        3 => Just(What::Create),
        2 => Just(What::AssignRider1),
        2 => Just(What::AssignRider2),
        3 => Just(What::PickUp),
        3 => Just(What::Complete),
        1 => Just(What::Cancel),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => Just(Who::Dispatcher),
        1 => Just(Who::Admin),
        1 => Just(Who::System),
        3 => Just(Who::Rider1),
        2 => Just(Who::Rider2),
        1 => Just(Who::Customer),
    ]
}

/// Up to 30 steps. Three sequences in four open with a dispatcher creating the delivery,
/// so that most of them get to exercise the later commands.
fn steps() -> impl Strategy<Value = Vec<(What, Who)>> {
    (
        prop::bool::weighted(0.75),
        prop::collection::vec((what(), who()), 0..=29),
    )
        .prop_map(|(opens_with_create, rest)| {
            let opening = opens_with_create.then_some((What::Create, Who::Dispatcher));
            opening.into_iter().chain(rest).collect()
        })
}

// ---------------------------------------------------------------------------------------------
// Running a sequence.
// ---------------------------------------------------------------------------------------------

struct Run {
    /// The state folded event by event.
    delivery: Delivery,
    /// Every accepted event, in order.
    accepted: Vec<Event>,
}

fn run(steps: &[(What, Who)]) -> Result<Run, TestCaseError> {
    let mut delivery = Delivery::default();
    let mut accepted = Vec::new();
    for (&(what, who), minute) in steps.iter().zip(0..) {
        let actor = actor(who);
        let at = start() + Duration::minutes(minute);
        let decided = delivery.decide(command(what), &actor, at);
        // Deciding is pure: the same question gets the same answer.
        prop_assert_eq!(&decided, &delivery.decide(command(what), &actor, at));
        let Ok(events) = decided else { continue };
        prop_assert_eq!(events.len(), 1, "each command records one fact");
        for event in events {
            prop_assert_eq!(event.delivery_id, id(1));
            prop_assert_eq!(event.occurred_at, at);
            prop_assert_eq!(&event.actor, &actor);
            delivery = delivery
                .evolve(&event)
                .map_err(|e| TestCaseError::fail(format!("decided {event:?} but: {e}")))?;
            accepted.push(event);
        }
    }
    Ok(Run { delivery, accepted })
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.change.event_type()).collect()
}

/// The lifecycle, written independently of `evolve`: which fact may follow which.
fn may_follow(previous: Option<&'static str>, next: &'static str) -> bool {
    use DeliveryEvent as E;
    match previous {
        None => next == E::CREATED,
        Some(E::CREATED) => matches!(next, E::RIDER_ASSIGNED | E::CANCELLED),
        Some(E::RIDER_ASSIGNED) => matches!(next, E::RIDER_ASSIGNED | E::PICKED_UP | E::CANCELLED),
        Some(E::PICKED_UP) => next == E::COMPLETED,
        Some(_) => false,
    }
}

fn follows_lifecycle(kinds: &[&'static str]) -> bool {
    let mut previous = None;
    kinds.iter().all(|&kind| {
        let ok = may_follow(previous, kind);
        previous = Some(kind);
        ok
    })
}

fn status_after(kind: &'static str) -> Status {
    match kind {
        DeliveryEvent::CREATED => Status::Created,
        DeliveryEvent::RIDER_ASSIGNED => Status::RiderAssigned,
        DeliveryEvent::PICKED_UP => Status::PickedUp,
        DeliveryEvent::COMPLETED => Status::Completed,
        _ => Status::Cancelled,
    }
}

fn count(kinds: &[&'static str], kind: &'static str) -> usize {
    kinds.iter().filter(|&&k| k == kind).count()
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replaying_the_accepted_events_gives_the_folded_state(steps in steps()) {
        let Run { delivery, accepted } = run(&steps)?;
        let replayed = Delivery::replay(&accepted);
        prop_assert_eq!(replayed, Ok(delivery));
    }

    #[test]
    fn versions_count_the_accepted_events(steps in steps()) {
        let Run { delivery, accepted } = run(&steps)?;
        prop_assert_eq!(delivery.version, i64::try_from(accepted.len()).expect("a small count"));
        // Dense: every prefix replays to exactly its length.
        for (len, expected) in (0..=accepted.len()).zip(0_i64..) {
            let prefix = Delivery::replay(&accepted[..len])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(prefix.version, expected);
        }
    }

    #[test]
    fn a_delivery_is_created_once_and_finished_at_most_once(steps in steps()) {
        let Run { accepted, .. } = run(&steps)?;
        let kinds = kinds(&accepted);
        let finishes = count(&kinds, DeliveryEvent::COMPLETED) + count(&kinds, DeliveryEvent::CANCELLED);
        prop_assert!(count(&kinds, DeliveryEvent::CREATED) <= 1, "{:?}", kinds);
        prop_assert!(finishes <= 1, "completed or cancelled more than once: {:?}", kinds);
        prop_assert!(count(&kinds, DeliveryEvent::PICKED_UP) <= 1, "{:?}", kinds);
    }

    #[test]
    fn accepted_events_follow_the_lifecycle(steps in steps()) {
        let Run { delivery, accepted } = run(&steps)?;
        let kinds = kinds(&accepted);
        if let Some(first) = kinds.first() {
            prop_assert_eq!(*first, DeliveryEvent::CREATED);
        }
        for (i, kind) in kinds.iter().enumerate() {
            let previous = i.checked_sub(1).map(|p| kinds[p]);
            if matches!(previous, Some(DeliveryEvent::COMPLETED | DeliveryEvent::CANCELLED)) {
                prop_assert!(false, "{} after a final event: {:?}", kind, kinds);
            }
            if *kind == DeliveryEvent::PICKED_UP {
                prop_assert_eq!(previous, Some(DeliveryEvent::RIDER_ASSIGNED), "{:?}", kinds);
            }
            if *kind == DeliveryEvent::COMPLETED {
                prop_assert_eq!(previous, Some(DeliveryEvent::PICKED_UP), "{:?}", kinds);
            }
            prop_assert!(may_follow(previous, kind), "{:?}", kinds);
        }
        prop_assert_eq!(delivery.status(), kinds.last().map(|&k| status_after(k)));
    }

    #[test]
    fn riders_only_ever_act_for_themselves(steps in steps()) {
        let Run { accepted, .. } = run(&steps)?;
        for event in accepted.iter().filter(|e| e.actor.role == Role::Rider) {
            let rider = match &event.change {
                DeliveryEvent::PickedUp(PickedUp { rider_id })
                | DeliveryEvent::Completed(Completed { rider_id }) => rider_id,
                other => return Err(TestCaseError::fail(format!("a rider recorded {other:?}"))),
            };
            prop_assert_eq!(rider.as_str(), event.actor.id.as_str());
        }
    }

    #[test]
    fn the_rider_who_completes_is_the_rider_who_picked_up(steps in steps()) {
        let Run { delivery, accepted } = run(&steps)?;
        let picked_up_by = accepted.iter().find_map(|e| match &e.change {
            DeliveryEvent::PickedUp(p) => Some(p.rider_id.clone()),
            _ => None,
        });
        for event in &accepted {
            if let DeliveryEvent::Completed(c) = &event.change {
                prop_assert_eq!(Some(&c.rider_id), picked_up_by.as_ref());
            }
        }
        if let (Some(state), Some(rider)) = (&delivery.state, &picked_up_by) {
            prop_assert_eq!(state.rider_id.as_ref(), Some(rider));
        }
    }

    /// `evolve` accepts a history exactly when it follows the lifecycle, whatever the facts.
    #[test]
    fn replay_accepts_exactly_the_histories_that_follow_the_lifecycle(
        changes in prop::collection::vec(select(DeliveryEvent::TYPES.to_vec()), 0..=8),
    ) {
        let events: Vec<Event> = changes
            .iter()
            .zip(0..)
            .map(|(&kind, minute)| Event {
                delivery_id: id(1),
                occurred_at: start() + Duration::minutes(minute),
                actor: actor(Who::Admin),
                change: fact(kind),
            })
            .collect();
        let replayed = Delivery::replay(&events);
        prop_assert_eq!(replayed.is_ok(), follows_lifecycle(&changes), "{:?}", changes);
        if let Ok(delivery) = replayed {
            prop_assert_eq!(delivery.version, i64::try_from(events.len()).expect("a small count"));
        }
    }
}

fn fact(kind: &'static str) -> DeliveryEvent {
    match kind {
        DeliveryEvent::CREATED => created(),
        DeliveryEvent::RIDER_ASSIGNED => assigned("rider-1"),
        DeliveryEvent::PICKED_UP => picked_up("rider-1"),
        DeliveryEvent::COMPLETED => completed("rider-1"),
        _ => cancelled(),
    }
}
