//! The delivery lifecycle as sentences: given these facts, when this command by this actor,
//! then these facts (or this refusal). Every transition and every refusal in `decide` is here,
//! then `evolve`/`replay` on true and impossible histories, then the event envelope.
//!
//! Times and ids are fixed, so every expectation is exact.
//!
//! (Long on purpose: one file holds every rule of `decide` as a sentence, so a missing one shows.)

use chrono::{DateTime, Utc};
use domain::fixtures::{
    admin, as_rider, assign, assigned, at, cancel, cancelled, complete, completed, create, created,
    customer, details, dispatcher, envelope_of, id, pick_up, picked_up, reason, reassigned, rider,
    system,
};
use domain::{
    Actor, Command, Completed, DecodeError, Delivery, DeliveryError, DeliveryEvent, Event,
    EventEnvelope, HistoryError, PickedUp, Role, SCHEMA_VERSION, Status, UnknownEventType,
};

// ---------------------------------------------------------------------------------------------
// Fixtures: the shared kit (`domain::fixtures`), about delivery `id(1)`.
// ---------------------------------------------------------------------------------------------

/// When the command under test is decided.
fn now() -> DateTime<Utc> {
    at(12, 0)
}

/// A fact of this delivery, at a time, caused by whoever would plausibly have caused it.
fn fact(change: DeliveryEvent, occurred_at: DateTime<Utc>) -> Event {
    let actor = match &change {
        DeliveryEvent::PickedUp(PickedUp { rider_id })
        | DeliveryEvent::Completed(Completed { rider_id }) => as_rider(rider_id.as_str()),
        _ => dispatcher(),
    };
    Event {
        delivery_id: id(1),
        occurred_at,
        actor,
        change,
    }
}

/// Facts one after the other, a minute apart from 08:00.
fn history(changes: impl IntoIterator<Item = DeliveryEvent>) -> Vec<Event> {
    changes
        .into_iter()
        .zip(0..)
        .map(|(change, minute)| fact(change, at(8, minute)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// given / when / by / then.
// ---------------------------------------------------------------------------------------------

struct Given {
    delivery: Delivery,
}

struct When {
    delivery: Delivery,
    command: Command,
}

struct Outcome {
    delivery: Delivery,
    actor: Actor,
    result: Result<Vec<Event>, DeliveryError>,
}

/// The delivery as its history made it. An empty history is a delivery that does not exist.
#[track_caller]
fn given<const N: usize>(changes: [DeliveryEvent; N]) -> Given {
    let delivery = Delivery::replay(&history(changes)).expect("the given history is possible");
    Given { delivery }
}

impl Given {
    fn when(self, command: Command) -> When {
        When {
            delivery: self.delivery,
            command,
        }
    }
}

impl When {
    /// Decides the command for this actor, at `now()`.
    fn by(self, actor: Actor) -> Outcome {
        let result = self.delivery.decide(self.command, &actor, now());
        Outcome {
            delivery: self.delivery,
            actor,
            result,
        }
    }
}

impl Outcome {
    /// The command is accepted and records exactly these facts, about this delivery, at `now()`,
    /// caused by the actor; and the facts fold onto the history.
    #[track_caller]
    fn then<const N: usize>(self, changes: [DeliveryEvent; N]) {
        let expected: Vec<Event> = changes
            .into_iter()
            .map(|change| Event {
                delivery_id: id(1),
                occurred_at: now(),
                actor: self.actor.clone(),
                change,
            })
            .collect();
        assert_eq!(self.result, Ok(expected.clone()));
        let folded = expected
            .iter()
            .try_fold(self.delivery, |delivery, event| delivery.evolve(event));
        assert!(
            folded.is_ok(),
            "decided facts must fold onto the history: {folded:?}"
        );
    }

    /// The command is refused with exactly this error.
    #[track_caller]
    fn then_err(self, error: DeliveryError) {
        assert_eq!(self.result, Err(error));
    }
}

fn invalid(action: &'static str, status: Status) -> DeliveryError {
    DeliveryError::InvalidTransition { action, status }
}

fn role_not_allowed(action: &'static str, role: Role) -> DeliveryError {
    DeliveryError::RoleNotAllowed { action, role }
}

fn not_assigned_rider(action: &'static str) -> DeliveryError {
    DeliveryError::NotAssignedRider { action }
}

const ASSIGN: &str = "assign a rider to";
const PICK_UP: &str = "pick up";
const COMPLETE: &str = "complete";
const CANCEL: &str = "cancel";

// ---------------------------------------------------------------------------------------------
// Create.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dispatcher_creates_a_delivery() {
    given([])
        .when(create(id(1)))
        .by(dispatcher())
        .then([created()]);
}

#[test]
fn an_admin_creates_a_delivery() {
    given([]).when(create(id(1))).by(admin()).then([created()]);
}

#[test]
fn a_rider_may_not_create_a_delivery() {
    given([])
        .when(create(id(1)))
        .by(as_rider("rider-1"))
        .then_err(role_not_allowed("create", Role::Rider));
}

#[test]
fn a_customer_may_not_create_a_delivery() {
    given([])
        .when(create(id(1)))
        .by(customer())
        .then_err(role_not_allowed("create", Role::Customer));
}

#[test]
fn the_system_may_not_create_a_delivery() {
    given([])
        .when(create(id(1)))
        .by(system())
        .then_err(role_not_allowed("create", Role::System));
}

#[test]
fn a_delivery_cannot_be_created_twice() {
    given([created()])
        .when(create(id(1)))
        .by(dispatcher())
        .then_err(DeliveryError::AlreadyExists);
}

#[test]
fn a_finished_delivery_cannot_be_created_again() {
    given([created(), cancelled()])
        .when(create(id(1)))
        .by(admin())
        .then_err(DeliveryError::AlreadyExists);
}

#[test]
fn a_rider_creating_an_existing_delivery_is_refused_for_their_role_first() {
    given([created()])
        .when(create(id(1)))
        .by(as_rider("rider-1"))
        .then_err(role_not_allowed("create", Role::Rider));
}

// ---------------------------------------------------------------------------------------------
// A delivery that does not exist.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rider_cannot_be_assigned_to_a_delivery_that_does_not_exist() {
    given([])
        .when(assign("rider-1"))
        .by(dispatcher())
        .then_err(DeliveryError::NotFound);
}

#[test]
fn a_delivery_that_does_not_exist_cannot_be_picked_up() {
    given([])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then_err(DeliveryError::NotFound);
}

#[test]
fn a_delivery_that_does_not_exist_cannot_be_completed() {
    given([])
        .when(complete())
        .by(admin())
        .then_err(DeliveryError::NotFound);
}

#[test]
fn a_delivery_that_does_not_exist_cannot_be_cancelled() {
    given([])
        .when(cancel())
        .by(dispatcher())
        .then_err(DeliveryError::NotFound);
}

#[test]
fn a_delivery_that_does_not_exist_is_not_found_whoever_asks() {
    given([])
        .when(cancel())
        .by(customer())
        .then_err(DeliveryError::NotFound);
}

// ---------------------------------------------------------------------------------------------
// Assign a rider.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dispatcher_assigns_a_rider_to_a_created_delivery() {
    given([created()])
        .when(assign("rider-1"))
        .by(dispatcher())
        .then([assigned("rider-1")]);
}

#[test]
fn an_admin_assigns_a_rider_to_a_created_delivery() {
    given([created()])
        .when(assign("rider-1"))
        .by(admin())
        .then([assigned("rider-1")]);
}

#[test]
fn reassigning_a_delivery_records_the_previous_rider() {
    given([created(), assigned("rider-1")])
        .when(assign("rider-2"))
        .by(dispatcher())
        .then([reassigned("rider-2", "rider-1")]);
}

#[test]
fn reassigning_twice_records_the_rider_just_replaced() {
    given([
        created(),
        assigned("rider-1"),
        reassigned("rider-2", "rider-1"),
    ])
    .when(assign("rider-1"))
    .by(admin())
    .then([reassigned("rider-1", "rider-2")]);
}

#[test]
fn assigning_the_rider_already_assigned_is_refused() {
    given([created(), assigned("rider-1")])
        .when(assign("rider-1"))
        .by(dispatcher())
        .then_err(DeliveryError::RiderAlreadyAssigned);
}

#[test]
fn a_rider_cannot_be_assigned_once_the_delivery_is_picked_up() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(assign("rider-2"))
        .by(dispatcher())
        .then_err(invalid(ASSIGN, Status::PickedUp));
}

#[test]
fn a_rider_cannot_be_assigned_to_a_completed_delivery() {
    given([
        created(),
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
    ])
    .when(assign("rider-2"))
    .by(dispatcher())
    .then_err(invalid(ASSIGN, Status::Completed));
}

#[test]
fn a_rider_cannot_be_assigned_to_a_cancelled_delivery() {
    given([created(), cancelled()])
        .when(assign("rider-1"))
        .by(dispatcher())
        .then_err(invalid(ASSIGN, Status::Cancelled));
}

#[test]
fn a_rider_may_not_assign_themself() {
    given([created()])
        .when(assign("rider-1"))
        .by(as_rider("rider-1"))
        .then_err(role_not_allowed(ASSIGN, Role::Rider));
}

#[test]
fn a_customer_may_not_assign_a_rider() {
    given([created()])
        .when(assign("rider-1"))
        .by(customer())
        .then_err(role_not_allowed(ASSIGN, Role::Customer));
}

#[test]
fn the_system_may_not_assign_a_rider() {
    given([created()])
        .when(assign("rider-1"))
        .by(system())
        .then_err(role_not_allowed(ASSIGN, Role::System));
}

// ---------------------------------------------------------------------------------------------
// Pick up.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_assigned_rider_picks_up_the_delivery() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then([picked_up("rider-1")]);
}

#[test]
fn an_admin_picks_up_for_the_assigned_rider() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(admin())
        .then([picked_up("rider-1")]);
}

#[test]
fn another_rider_may_not_pick_up_the_delivery() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(as_rider("rider-2"))
        .then_err(not_assigned_rider(PICK_UP));
}

#[test]
fn the_replaced_rider_may_not_pick_up_the_delivery() {
    given([
        created(),
        assigned("rider-1"),
        reassigned("rider-2", "rider-1"),
    ])
    .when(pick_up())
    .by(as_rider("rider-1"))
    .then_err(not_assigned_rider(PICK_UP));
}

#[test]
fn the_newly_assigned_rider_picks_up_the_delivery() {
    given([
        created(),
        assigned("rider-1"),
        reassigned("rider-2", "rider-1"),
    ])
    .when(pick_up())
    .by(as_rider("rider-2"))
    .then([picked_up("rider-2")]);
}

#[test]
fn a_rider_may_not_pick_up_a_delivery_nobody_is_assigned_to() {
    given([created()])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then_err(not_assigned_rider(PICK_UP));
}

#[test]
fn not_even_an_admin_can_pick_up_a_delivery_nobody_is_assigned_to() {
    given([created()])
        .when(pick_up())
        .by(admin())
        .then_err(invalid(PICK_UP, Status::Created));
}

#[test]
fn a_dispatcher_may_not_pick_up_a_delivery() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(dispatcher())
        .then_err(role_not_allowed(PICK_UP, Role::Dispatcher));
}

#[test]
fn a_customer_may_not_pick_up_a_delivery() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(customer())
        .then_err(role_not_allowed(PICK_UP, Role::Customer));
}

#[test]
fn the_system_may_not_pick_up_a_delivery() {
    given([created(), assigned("rider-1")])
        .when(pick_up())
        .by(system())
        .then_err(role_not_allowed(PICK_UP, Role::System));
}

#[test]
fn a_delivery_cannot_be_picked_up_twice() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then_err(invalid(PICK_UP, Status::PickedUp));
}

#[test]
fn a_completed_delivery_cannot_be_picked_up() {
    given([
        created(),
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
    ])
    .when(pick_up())
    .by(as_rider("rider-1"))
    .then_err(invalid(PICK_UP, Status::Completed));
}

#[test]
fn a_cancelled_delivery_cannot_be_picked_up_by_its_rider() {
    given([created(), assigned("rider-1"), cancelled()])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then_err(invalid(PICK_UP, Status::Cancelled));
}

#[test]
fn a_cancelled_delivery_cannot_be_picked_up_by_an_admin() {
    given([created(), assigned("rider-1"), cancelled()])
        .when(pick_up())
        .by(admin())
        .then_err(invalid(PICK_UP, Status::Cancelled));
}

#[test]
fn a_delivery_cancelled_before_assignment_has_no_rider_to_pick_it_up() {
    given([created(), cancelled()])
        .when(pick_up())
        .by(as_rider("rider-1"))
        .then_err(not_assigned_rider(PICK_UP));
    given([created(), cancelled()])
        .when(pick_up())
        .by(admin())
        .then_err(invalid(PICK_UP, Status::Cancelled));
}

// ---------------------------------------------------------------------------------------------
// Complete.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_assigned_rider_completes_a_picked_up_delivery() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(as_rider("rider-1"))
        .then([completed("rider-1")]);
}

#[test]
fn an_admin_completes_a_picked_up_delivery_for_its_rider() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(admin())
        .then([completed("rider-1")]);
}

#[test]
fn another_rider_may_not_complete_the_delivery() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(as_rider("rider-2"))
        .then_err(not_assigned_rider(COMPLETE));
}

#[test]
fn a_delivery_cannot_be_completed_before_it_is_picked_up() {
    given([created(), assigned("rider-1")])
        .when(complete())
        .by(as_rider("rider-1"))
        .then_err(invalid(COMPLETE, Status::RiderAssigned));
}

#[test]
fn an_admin_cannot_complete_a_delivery_before_it_is_picked_up() {
    given([created(), assigned("rider-1")])
        .when(complete())
        .by(admin())
        .then_err(invalid(COMPLETE, Status::RiderAssigned));
}

#[test]
fn a_delivery_nobody_is_assigned_to_cannot_be_completed() {
    given([created()])
        .when(complete())
        .by(as_rider("rider-1"))
        .then_err(not_assigned_rider(COMPLETE));
    given([created()])
        .when(complete())
        .by(admin())
        .then_err(invalid(COMPLETE, Status::Created));
}

#[test]
fn a_delivery_cannot_be_completed_twice() {
    given([
        created(),
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
    ])
    .when(complete())
    .by(as_rider("rider-1"))
    .then_err(invalid(COMPLETE, Status::Completed));
}

#[test]
fn a_cancelled_delivery_cannot_be_completed() {
    given([created(), assigned("rider-1"), cancelled()])
        .when(complete())
        .by(admin())
        .then_err(invalid(COMPLETE, Status::Cancelled));
}

#[test]
fn a_dispatcher_may_not_complete_a_delivery() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(dispatcher())
        .then_err(role_not_allowed(COMPLETE, Role::Dispatcher));
}

#[test]
fn a_customer_may_not_complete_a_delivery() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(customer())
        .then_err(role_not_allowed(COMPLETE, Role::Customer));
}

#[test]
fn the_system_may_not_complete_a_delivery() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(complete())
        .by(system())
        .then_err(role_not_allowed(COMPLETE, Role::System));
}

// ---------------------------------------------------------------------------------------------
// Cancel.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dispatcher_cancels_a_created_delivery_with_a_reason() {
    given([created()])
        .when(cancel())
        .by(dispatcher())
        .then([cancelled()]);
}

#[test]
fn a_dispatcher_cancels_a_delivery_with_a_rider_assigned() {
    given([created(), assigned("rider-1")])
        .when(cancel())
        .by(dispatcher())
        .then([cancelled()]);
}

#[test]
fn an_admin_cancels_a_delivery() {
    given([created(), assigned("rider-1")])
        .when(cancel())
        .by(admin())
        .then([cancelled()]);
}

#[test]
fn the_system_cancels_a_delivery() {
    given([created()])
        .when(cancel())
        .by(system())
        .then([cancelled()]);
}

#[test]
fn a_picked_up_delivery_cannot_be_cancelled() {
    given([created(), assigned("rider-1"), picked_up("rider-1")])
        .when(cancel())
        .by(dispatcher())
        .then_err(invalid(CANCEL, Status::PickedUp));
}

#[test]
fn a_completed_delivery_cannot_be_cancelled() {
    given([
        created(),
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
    ])
    .when(cancel())
    .by(admin())
    .then_err(invalid(CANCEL, Status::Completed));
}

#[test]
fn a_delivery_cannot_be_cancelled_twice() {
    given([created(), cancelled()])
        .when(cancel())
        .by(system())
        .then_err(invalid(CANCEL, Status::Cancelled));
}

#[test]
fn a_rider_may_not_cancel_a_delivery() {
    given([created(), assigned("rider-1")])
        .when(cancel())
        .by(as_rider("rider-1"))
        .then_err(role_not_allowed(CANCEL, Role::Rider));
}

#[test]
fn a_customer_may_not_cancel_a_delivery() {
    given([created()])
        .when(cancel())
        .by(customer())
        .then_err(role_not_allowed(CANCEL, Role::Customer));
}

// ---------------------------------------------------------------------------------------------
// Evolve and replay.
// ---------------------------------------------------------------------------------------------

#[test]
fn nothing_replayed_is_a_delivery_that_does_not_exist() {
    let delivery = Delivery::replay(&[]).expect("an empty history is possible");
    assert_eq!(delivery, Delivery::default());
    assert_eq!(delivery.version, 0);
    assert_eq!(delivery.status(), None);
}

#[test]
fn a_created_delivery_holds_its_details_and_no_rider() {
    let delivery = Delivery::replay(&[fact(created(), at(8, 0))]).expect("a possible history");
    let state = delivery.state.clone().expect("the delivery exists");
    let details = details();
    assert_eq!(delivery.version, 1);
    assert_eq!(state.delivery_id, id(1));
    assert_eq!(state.status, Status::Created);
    assert_eq!(state.order_ref, details.order_ref);
    assert_eq!(state.customer_id, details.customer_id);
    assert_eq!(state.pickup, details.pickup);
    assert_eq!(state.dropoff, details.dropoff);
    assert_eq!(state.rider_id, None);
    assert_eq!(state.cancel_reason, None);
    assert_eq!(state.created_at, at(8, 0));
    assert_eq!(state.assigned_at, None);
    assert_eq!(state.picked_up_at, None);
    assert_eq!(state.completed_at, None);
    assert_eq!(state.cancelled_at, None);
}

#[test]
fn a_completed_delivery_records_its_rider_and_the_time_of_each_step() {
    let events = [
        fact(created(), at(8, 0)),
        fact(assigned("rider-1"), at(8, 5)),
        fact(picked_up("rider-1"), at(8, 30)),
        fact(completed("rider-1"), at(9, 10)),
    ];
    let delivery = Delivery::replay(&events).expect("a possible history");
    let state = delivery.state.clone().expect("the delivery exists");
    assert_eq!(delivery.version, 4);
    assert_eq!(delivery.status(), Some(Status::Completed));
    assert_eq!(state.rider_id, Some(rider("rider-1")));
    assert_eq!(state.created_at, at(8, 0));
    assert_eq!(state.assigned_at, Some(at(8, 5)));
    assert_eq!(state.picked_up_at, Some(at(8, 30)));
    assert_eq!(state.completed_at, Some(at(9, 10)));
    assert_eq!(state.cancelled_at, None);
    assert_eq!(state.cancel_reason, None);
}

#[test]
fn each_step_moves_the_status_and_counts_a_version() {
    let events = history([
        created(),
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
    ]);
    let expected = [
        Status::Created,
        Status::RiderAssigned,
        Status::PickedUp,
        Status::Completed,
    ];
    let mut delivery = Delivery::default();
    for ((event, status), version) in events.iter().zip(expected).zip(1..) {
        delivery = delivery.evolve(event).expect("a possible fact");
        assert_eq!(delivery.status(), Some(status));
        assert_eq!(delivery.version, version);
    }
    assert_eq!(Delivery::replay(&events), Ok(delivery));
}

#[test]
fn a_reassignment_replaces_the_rider_and_the_assignment_time() {
    let events = [
        fact(created(), at(8, 0)),
        fact(assigned("rider-1"), at(8, 5)),
        fact(reassigned("rider-2", "rider-1"), at(8, 20)),
    ];
    let delivery = Delivery::replay(&events).expect("a possible history");
    let state = delivery.state.expect("the delivery exists");
    assert_eq!(delivery.version, 3);
    assert_eq!(state.status, Status::RiderAssigned);
    assert_eq!(state.rider_id, Some(rider("rider-2")));
    assert_eq!(state.assigned_at, Some(at(8, 20)));
}

#[test]
fn a_cancelled_delivery_records_the_reason_and_time_and_keeps_its_rider() {
    let events = [
        fact(created(), at(8, 0)),
        fact(assigned("rider-1"), at(8, 5)),
        fact(cancelled(), at(8, 45)),
    ];
    let delivery = Delivery::replay(&events).expect("a possible history");
    let state = delivery.state.expect("the delivery exists");
    assert_eq!(delivery.version, 3);
    assert_eq!(state.status, Status::Cancelled);
    assert_eq!(state.cancel_reason, Some(reason()));
    assert_eq!(state.cancelled_at, Some(at(8, 45)));
    assert_eq!(state.rider_id, Some(rider("rider-1")));
    assert_eq!(state.picked_up_at, None);
    assert_eq!(state.completed_at, None);
}

#[test]
fn a_delivery_cannot_be_picked_up_before_it_was_created() {
    assert_eq!(
        Delivery::replay(&history([picked_up("rider-1")])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::PICKED_UP,
            status: None,
        })
    );
}

#[test]
fn every_fact_but_creation_needs_an_existing_delivery() {
    for change in [
        assigned("rider-1"),
        picked_up("rider-1"),
        completed("rider-1"),
        cancelled(),
    ] {
        let event_type = change.event_type();
        assert_eq!(
            Delivery::default().evolve(&fact(change, at(8, 0))),
            Err(HistoryError::Impossible {
                event_type,
                status: None,
            })
        );
    }
}

#[test]
fn a_delivery_cannot_be_created_twice_in_history() {
    assert_eq!(
        Delivery::replay(&history([created(), created()])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::CREATED,
            status: Some(Status::Created),
        })
    );
}

#[test]
fn a_delivery_cannot_be_picked_up_before_a_rider_is_assigned_in_history() {
    assert_eq!(
        Delivery::replay(&history([created(), picked_up("rider-1")])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::PICKED_UP,
            status: Some(Status::Created),
        })
    );
}

#[test]
fn a_delivery_cannot_be_completed_before_it_is_picked_up_in_history() {
    assert_eq!(
        Delivery::replay(&history([
            created(),
            assigned("rider-1"),
            completed("rider-1"),
        ])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::COMPLETED,
            status: Some(Status::RiderAssigned),
        })
    );
}

#[test]
fn a_delivery_cannot_be_completed_twice_in_history() {
    assert_eq!(
        Delivery::replay(&history([
            created(),
            assigned("rider-1"),
            picked_up("rider-1"),
            completed("rider-1"),
            completed("rider-1"),
        ])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::COMPLETED,
            status: Some(Status::Completed),
        })
    );
}

#[test]
fn a_picked_up_delivery_cannot_be_cancelled_in_history() {
    assert_eq!(
        Delivery::replay(&history([
            created(),
            assigned("rider-1"),
            picked_up("rider-1"),
            cancelled(),
        ])),
        Err(HistoryError::Impossible {
            event_type: DeliveryEvent::CANCELLED,
            status: Some(Status::PickedUp),
        })
    );
}

#[test]
fn nothing_follows_a_cancellation_in_history() {
    for change in [created(), assigned("rider-1"), cancelled()] {
        let event_type = change.event_type();
        let cancelled_delivery =
            Delivery::replay(&history([created(), cancelled()])).expect("a possible history");
        assert_eq!(
            cancelled_delivery.evolve(&fact(change, at(9, 0))),
            Err(HistoryError::Impossible {
                event_type,
                status: Some(Status::Cancelled),
            })
        );
    }
}

#[test]
fn a_fact_about_another_delivery_is_refused() {
    let mut stray = fact(assigned("rider-1"), at(8, 5));
    stray.delivery_id = id(2);
    let events = [fact(created(), at(8, 0)), stray];
    assert_eq!(
        Delivery::replay(&events),
        Err(HistoryError::WrongDelivery {
            event_type: DeliveryEvent::RIDER_ASSIGNED,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Event envelope.
// ---------------------------------------------------------------------------------------------

fn every_kind_of_fact() -> Vec<Event> {
    history([
        created(),
        assigned("rider-1"),
        reassigned("rider-2", "rider-1"),
        picked_up("rider-2"),
        completed("rider-2"),
        cancelled(),
    ])
}

#[test]
fn the_event_type_names_are_a_stable_contract() {
    assert_eq!(
        DeliveryEvent::TYPES,
        [
            "delivery.created",
            "delivery.rider_assigned",
            "delivery.picked_up",
            "delivery.completed",
            "delivery.cancelled",
        ]
    );
}

#[test]
fn every_event_decodes_from_its_envelope_unchanged() {
    for (event, version) in every_kind_of_fact().into_iter().zip(1..) {
        let envelope = envelope_of(&event, version);
        assert_eq!(envelope.decode(), Ok(event));
    }
}

#[test]
fn every_event_survives_the_envelope_json_round_trip() {
    for (event, version) in every_kind_of_fact().into_iter().zip(1..) {
        let envelope = envelope_of(&event, version);
        let read = EventEnvelope::from_json(&envelope.to_json()).expect("valid envelope JSON");
        assert_eq!(read, envelope);
        assert_eq!(read.decode(), Ok(event));
    }
}

#[test]
fn a_first_assignment_has_no_previous_rider_in_its_data() {
    let data = assigned("rider-1").data();
    assert_eq!(data, serde_json::json!({ "rider_id": "rider-1" }));
}

#[test]
fn an_unknown_event_type_does_not_decode() {
    let mut envelope = envelope_of(&fact(created(), at(8, 0)), 1);
    envelope.event_type = "delivery.teleported".to_owned();
    assert_eq!(
        envelope.decode(),
        Err(DecodeError::UnknownType(UnknownEventType(
            "delivery.teleported".to_owned()
        )))
    );
}

#[test]
fn another_schema_version_does_not_decode() {
    let mut envelope = envelope_of(&fact(created(), at(8, 0)), 1);
    envelope.schema_version = SCHEMA_VERSION + 1;
    assert_eq!(
        envelope.decode(),
        Err(DecodeError::SchemaVersion(SCHEMA_VERSION + 1))
    );
}

#[test]
fn data_that_does_not_fit_its_type_does_not_decode() {
    let mut envelope = envelope_of(&fact(created(), at(8, 0)), 1);
    envelope.event_type = DeliveryEvent::PICKED_UP.to_owned();
    assert!(matches!(envelope.decode(), Err(DecodeError::Data(_))));
}
