//! The command API's metrics: every command request counted and timed by command and outcome.
//!
//! The outcome is decided where the answer is made, not guessed from the status code: the
//! `Outcome` and `ApiError` responses carry a [`CommandOutcome`] extension, which [`measure`]
//! (the outermost layer of the command routes, outside the in-flight bound, so shed requests
//! count too) reads. Labels are bounded: the command comes from the route template, never from
//! the path, so no delivery id becomes a label.

use crate::error::ApiError;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// Commands answered, by `command` and `outcome`.
pub const COMMANDS: &str = "command_api_commands_total";
/// Time from the request to its answer, by `command` and `outcome`.
pub const COMMAND_DURATION: &str = "command_api_command_duration_seconds";

/// Events written by one group-commit statement (`group_commit`): 1 when commands come one
/// at a time, larger as they crowd.
pub const GROUP_SIZE: &str = "command_api_group_commit_events";

/// The command of each command route, by route template: the `command` label's values.
const COMMAND_ROUTES: [(&str, &str); 5] = [
    ("/deliveries", "create"),
    ("/deliveries/{id}/assign", "assign"),
    ("/deliveries/{id}/pickup", "pickup"),
    ("/deliveries/{id}/complete", "complete"),
    ("/deliveries/{id}/cancel", "cancel"),
];

/// What became of a command request: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The command ran now: its events are stored.
    Accepted,
    /// An `Idempotency-Key` seen before: the first verdict answered again.
    Replayed,
    /// A concurrent writer got there first, or `If-Match` was stale (409 version-conflict,
    /// delivery-already-exists).
    Conflict,
    /// The rules said no: not allowed, not this rider, not in this state, no such delivery.
    Refused,
    /// The request itself is wrong (body, headers, size, a reused key).
    Invalid,
    /// Not served now: database down or busy, load shed, too slow (503).
    Unavailable,
    /// A bug or an unexpected failure (500).
    Failed,
}

impl CommandOutcome {
    pub const ALL: [CommandOutcome; 7] = [
        Self::Accepted,
        Self::Replayed,
        Self::Conflict,
        Self::Refused,
        Self::Invalid,
        Self::Unavailable,
        Self::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Replayed => "replayed",
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
            Self::Failed => "failed",
        }
    }

    /// The outcome of a request answered with `error`.
    pub fn of_error(error: &ApiError) -> Self {
        match error {
            ApiError::VersionConflict { .. } | ApiError::AlreadyExists => Self::Conflict,
            ApiError::InvalidTransition(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound
            | ApiError::Unauthorized => Self::Refused,
            ApiError::MalformedBody(_)
            | ApiError::InvalidBody(_)
            | ApiError::UnsupportedMediaType
            | ApiError::BodyTooLarge
            | ApiError::InvalidHeader(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::RouteNotFound
            | ApiError::MethodNotAllowed => Self::Invalid,
            ApiError::DatabaseUnavailable(_)
            | ApiError::DatabaseBusy(_)
            | ApiError::Overloaded
            | ApiError::RequestTimeout => Self::Unavailable,
            ApiError::Internal(_) => Self::Failed,
        }
    }
}

/// Installs the process's recorder (once), describes the metrics, and shows every command and
/// outcome at 0 from the start, so that a rate is 0, not missing, before the first one.
pub fn register() {
    platform::service::metrics::install();
    metrics::describe_counter!(
        COMMANDS,
        "Command requests answered, by command and outcome"
    );
    metrics::describe_histogram!(
        COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Time from a command request to its answer, by command and outcome"
    );
    metrics::describe_histogram!(
        GROUP_SIZE,
        "Events written together by one group-commit statement (one transaction, one WAL flush)"
    );
    for (_, command) in COMMAND_ROUTES {
        for outcome in CommandOutcome::ALL {
            metrics::counter!(COMMANDS, "command" => command, "outcome" => outcome.label())
                .increment(0);
        }
    }
}

/// Times a command request and counts it under its command and outcome.
pub(crate) async fn measure(route: MatchedPath, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let command = COMMAND_ROUTES
        .iter()
        .find(|(template, _)| *template == route.as_str())
        .map_or("other", |(_, command)| *command);
    // Every answer of a command route is an `Outcome` or an `ApiError`, and both say which
    // outcome they are; the status is only read if a response from elsewhere ever gets here.
    let outcome = match response.extensions().get::<CommandOutcome>() {
        Some(outcome) => *outcome,
        None if response.status().is_success() => CommandOutcome::Accepted,
        None if response.status().is_server_error() => CommandOutcome::Failed,
        None => CommandOutcome::Invalid,
    };
    let labels = [("command", command), ("outcome", outcome.label())];
    metrics::counter!(COMMANDS, &labels).increment(1);
    metrics::histogram!(COMMAND_DURATION, &labels).record(started.elapsed());
    response
}

/// One group-commit statement is about to write `events` events.
pub(crate) fn group_written(events: usize) {
    metrics::histogram!(GROUP_SIZE).record(events as f64);
}
