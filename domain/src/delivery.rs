//! The aggregate: `decide` holds every business rule, `evolve` folds facts into state.

use crate::event::{Cancelled, Completed, Created, PickedUp, RiderAssigned};
use crate::{
    Actor, Address, CancelReason, CustomerId, DeliveryError, DeliveryEvent, DeliveryId, Event,
    HistoryError, OrderRef, RiderId, Role,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a delivery is in its lifecycle, ordered as the lifecycle goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    RiderAssigned,
    PickedUp,
    Completed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Created,
        Status::RiderAssigned,
        Status::PickedUp,
        Status::Completed,
        Status::Cancelled,
    ];

    /// The stable name used in JSON, SQL and query parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::RiderAssigned => "rider_assigned",
            Status::PickedUp => "picked_up",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

/// What a caller asks of a delivery. Time and actor come beside it, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        delivery_id: DeliveryId,
        order_ref: OrderRef,
        customer_id: CustomerId,
        pickup: Address,
        dropoff: Address,
    },
    AssignRider {
        rider_id: RiderId,
    },
    PickUp,
    Complete,
    Cancel {
        reason: CancelReason,
    },
}

/// The state of one delivery that exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub delivery_id: DeliveryId,
    pub status: Status,
    pub order_ref: OrderRef,
    pub customer_id: CustomerId,
    pub pickup: Address,
    pub dropoff: Address,
    pub rider_id: Option<RiderId>,
    pub cancel_reason: Option<CancelReason>,
    pub created_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// A delivery as folded from its history: `version` counts the events applied (0 = none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    pub version: i64,
    pub state: Option<DeliveryState>,
}

impl Delivery {
    /// Folds a whole history, checking that each fact could follow the one before.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Self, HistoryError> {
        events
            .into_iter()
            .try_fold(Delivery::default(), |delivery, event| {
                delivery.evolve(event)
            })
    }

    pub fn status(&self) -> Option<Status> {
        self.state.as_ref().map(|state| state.status)
    }

    /// Every business rule lives here: who may do what, in which state.
    pub fn decide(
        &self,
        command: Command,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Vec<Event>, DeliveryError> {
        if let Command::Create {
            delivery_id,
            order_ref,
            customer_id,
            pickup,
            dropoff,
        } = command
        {
            require_role(actor, "create", &[Role::Dispatcher, Role::Admin])?;
            if self.state.is_some() {
                return Err(DeliveryError::AlreadyExists);
            }
            let created = Created {
                order_ref,
                customer_id,
                pickup,
                dropoff,
            };
            return Ok(vec![event(
                delivery_id,
                at,
                actor,
                DeliveryEvent::Created(created),
            )]);
        }

        let state = self.state.as_ref().ok_or(DeliveryError::NotFound)?;
        let change = match command {
            Command::Create { .. } => unreachable!("handled above"),
            Command::AssignRider { rider_id } => {
                const ACTION: &str = "assign a rider to";
                require_role(actor, ACTION, &[Role::Dispatcher, Role::Admin])?;
                match (state.status, &state.rider_id) {
                    (Status::Created, _) => DeliveryEvent::RiderAssigned(RiderAssigned {
                        rider_id,
                        previous_rider_id: None,
                    }),
                    (Status::RiderAssigned, Some(current)) if *current == rider_id => {
                        return Err(DeliveryError::RiderAlreadyAssigned);
                    }
                    (Status::RiderAssigned, current) => {
                        DeliveryEvent::RiderAssigned(RiderAssigned {
                            rider_id,
                            previous_rider_id: current.clone(),
                        })
                    }
                    (status, _) => return Err(invalid(ACTION, status)),
                }
            }
            Command::PickUp => {
                const ACTION: &str = "pick up";
                let rider_id = require_assigned_rider(state, actor, ACTION)?;
                if state.status != Status::RiderAssigned {
                    return Err(invalid(ACTION, state.status));
                }
                DeliveryEvent::PickedUp(PickedUp { rider_id })
            }
            Command::Complete => {
                const ACTION: &str = "complete";
                let rider_id = require_assigned_rider(state, actor, ACTION)?;
                if state.status != Status::PickedUp {
                    return Err(invalid(ACTION, state.status));
                }
                DeliveryEvent::Completed(Completed { rider_id })
            }
            Command::Cancel { reason } => {
                const ACTION: &str = "cancel";
                require_role(
                    actor,
                    ACTION,
                    &[Role::Dispatcher, Role::Admin, Role::System],
                )?;
                if !matches!(state.status, Status::Created | Status::RiderAssigned) {
                    return Err(invalid(ACTION, state.status));
                }
                DeliveryEvent::Cancelled(Cancelled { reason })
            }
        };
        Ok(vec![event(state.delivery_id, at, actor, change)])
    }

    /// Folds one fact into state. Rules are not re-checked (history is already true), but a
    /// fact that cannot follow the current state is reported, never silently absorbed.
    pub fn evolve(self, event: &Event) -> Result<Self, HistoryError> {
        let event_type = event.change.event_type();
        let impossible = |status: Option<Status>| HistoryError::Impossible { event_type, status };
        let version = self.version + 1;
        let at = event.occurred_at;

        let state = match (self.state, &event.change) {
            (None, DeliveryEvent::Created(created)) => DeliveryState {
                delivery_id: event.delivery_id,
                status: Status::Created,
                order_ref: created.order_ref.clone(),
                customer_id: created.customer_id.clone(),
                pickup: created.pickup.clone(),
                dropoff: created.dropoff.clone(),
                rider_id: None,
                cancel_reason: None,
                created_at: at,
                assigned_at: None,
                picked_up_at: None,
                completed_at: None,
                cancelled_at: None,
            },
            (None, _) => return Err(impossible(None)),
            (Some(state), _) if state.delivery_id != event.delivery_id => {
                return Err(HistoryError::WrongDelivery { event_type });
            }
            (Some(state), change) => {
                let status = state.status;
                let allowed = matches!(
                    (status, change),
                    (
                        Status::Created | Status::RiderAssigned,
                        DeliveryEvent::RiderAssigned(_) | DeliveryEvent::Cancelled(_)
                    ) | (Status::RiderAssigned, DeliveryEvent::PickedUp(_))
                        | (Status::PickedUp, DeliveryEvent::Completed(_))
                );
                if !allowed {
                    return Err(impossible(Some(status)));
                }
                apply(state, change, at)
            }
        };
        Ok(Delivery {
            version,
            state: Some(state),
        })
    }
}

fn apply(mut state: DeliveryState, change: &DeliveryEvent, at: DateTime<Utc>) -> DeliveryState {
    match change {
        DeliveryEvent::Created(_) => {}
        DeliveryEvent::RiderAssigned(assigned) => {
            state.status = Status::RiderAssigned;
            state.rider_id = Some(assigned.rider_id.clone());
            state.assigned_at = Some(at);
        }
        DeliveryEvent::PickedUp(_) => {
            state.status = Status::PickedUp;
            state.picked_up_at = Some(at);
        }
        DeliveryEvent::Completed(_) => {
            state.status = Status::Completed;
            state.completed_at = Some(at);
        }
        DeliveryEvent::Cancelled(cancelled) => {
            state.status = Status::Cancelled;
            state.cancel_reason = Some(cancelled.reason.clone());
            state.cancelled_at = Some(at);
        }
    }
    state
}

fn event(
    delivery_id: DeliveryId,
    at: DateTime<Utc>,
    actor: &Actor,
    change: DeliveryEvent,
) -> Event {
    Event {
        delivery_id,
        occurred_at: at,
        actor: actor.clone(),
        change,
    }
}

fn invalid(action: &'static str, status: Status) -> DeliveryError {
    DeliveryError::InvalidTransition { action, status }
}

fn require_role(
    actor: &Actor,
    action: &'static str,
    allowed: &[Role],
) -> Result<(), DeliveryError> {
    if allowed.contains(&actor.role) {
        Ok(())
    } else {
        Err(DeliveryError::RoleNotAllowed {
            action,
            role: actor.role,
        })
    }
}

/// Riders act only on deliveries assigned to them; admins may act for any rider.
/// Returns the rider the event is about.
fn require_assigned_rider(
    state: &DeliveryState,
    actor: &Actor,
    action: &'static str,
) -> Result<RiderId, DeliveryError> {
    require_role(actor, action, &[Role::Rider, Role::Admin])?;
    let assigned = state.rider_id.as_ref();
    match (actor.role, assigned) {
        (Role::Rider, Some(rider)) if rider.as_str() == actor.id => Ok(rider.clone()),
        (Role::Rider, _) => Err(DeliveryError::NotAssignedRider { action }),
        (_, Some(rider)) => Ok(rider.clone()),
        (_, None) => Err(invalid(action, state.status)),
    }
}
