use crate::Status;

/// Why a command was refused, in the domain's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the delivery already exists")]
    AlreadyExists,
    #[error("the delivery does not exist")]
    NotFound,
    #[error("cannot {action} a delivery that is {status}")]
    InvalidTransition {
        action: &'static str,
        status: Status,
    },
    #[error("the rider is already assigned to this delivery")]
    RiderAlreadyAssigned,
    #[error("a {role} may not {action} a delivery")]
    RoleNotAllowed {
        action: &'static str,
        role: crate::Role,
    },
    #[error("only the assigned rider may {action} this delivery")]
    NotAssignedRider { action: &'static str },
}

/// A stored history that cannot have happened: a fact that does not fit the state before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("event {event_type} belongs to another delivery")]
    WrongDelivery { event_type: &'static str },
    #[error("event {event_type} cannot follow a delivery that is {status:?}")]
    Impossible {
        event_type: &'static str,
        status: Option<Status>,
    },
    #[error("version {found} does not follow version {expected_after}")]
    VersionGap { expected_after: i64, found: i64 },
}
