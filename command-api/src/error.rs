//! The one error type of the HTTP boundary, written as `application/problem+json` (RFC 9457)
//! by `platform::problem`.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::DeliveryError;
use platform::problem::{self, Problem};

/// What a 503 tells the client to wait before retrying, in seconds. Every 503 is a passing
/// condition (a database outage, a crowd, a slow statement), so every 503 carries it.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Every way a command can fail. `code` is the stable contract; `detail` is for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("the request body does not describe a valid command: {0}")]
    InvalidBody(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than the limit")]
    BodyTooLarge,
    #[error("{0}")]
    InvalidHeader(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("no delivery has this id")]
    NotFound,
    #[error("no route has this path")]
    RouteNotFound,
    #[error("this route does not accept this method")]
    MethodNotAllowed,
    #[error("expected version {expected}, but the delivery is at version {actual}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("a delivery with this id already exists")]
    AlreadyExists,
    #[error("{0}")]
    InvalidTransition(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// No connection to the write database could be had or kept (down, restarting, refusing
    /// connections, pool exhausted for longer than the acquire timeout).
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// The database is up but did not finish in time (statement timeout, lock wait, deadlock).
    #[error("the database is busy; retry later")]
    DatabaseBusy(#[source] sqlx::Error),
    #[error("too many requests are in progress; retry later")]
    Overloaded,
    #[error("the request took longer than the limit; retry later")]
    RequestTimeout,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedBody(_) | ApiError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::VersionConflict { .. }
            | ApiError::AlreadyExists
            | ApiError::InvalidTransition(_) => StatusCode::CONFLICT,
            ApiError::DatabaseUnavailable(_)
            | ApiError::DatabaseBusy(_)
            | ApiError::Overloaded
            | ApiError::RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code; the problem `type` is derived from it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedBody(_) => "malformed-body",
            ApiError::InvalidBody(_) => "invalid-body",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::BodyTooLarge => "body-too-large",
            ApiError::InvalidHeader(_) => "invalid-header",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "delivery-not-found",
            ApiError::RouteNotFound => "route-not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::VersionConflict { .. } => "version-conflict",
            ApiError::AlreadyExists => "delivery-already-exists",
            ApiError::InvalidTransition(_) => "invalid-transition",
            ApiError::IdempotencyKeyReused => "idempotency-key-reused",
            ApiError::DatabaseUnavailable(_) => "database-unavailable",
            ApiError::DatabaseBusy(_) => "database-busy",
            ApiError::Overloaded => "overloaded",
            ApiError::RequestTimeout => "request-timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document (without headers): what the client reads, and what an idempotency
    /// key records for a refused command so a retry replays the very same body.
    pub fn problem(&self) -> serde_json::Value {
        problem::document(self)
    }

    /// Every 503 tells the client when to retry; nothing else does.
    pub fn retry_after(&self) -> Option<u32> {
        retry_after(self.status_code())
    }

    /// A recorded problem document, answered again with the headers its status calls for.
    pub(crate) fn recorded_response(status: StatusCode, document: &serde_json::Value) -> Response {
        problem::response(status, document, retry_after(status))
    }
}

fn retry_after(status: StatusCode) -> Option<u32> {
    (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS)
}

impl Problem for ApiError {
    fn status(&self) -> StatusCode {
        self.status_code()
    }

    fn code(&self) -> &'static str {
        ApiError::code(self)
    }

    fn retry_after(&self) -> Option<u32> {
        ApiError::retry_after(self)
    }
}

/// Which database failures pass by themselves. A client that retries them later may well
/// succeed, so they are 503s with `Retry-After`, never `500 internal`.
fn transient(error: &sqlx::Error) -> Option<fn(sqlx::Error) -> ApiError> {
    match error {
        // Connecting failed or timed out, the connection broke (a restart shows up as an
        // unexpected EOF here), or the pool had no connection to give within its timeout.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Some(ApiError::DatabaseUnavailable),
        sqlx::Error::Database(e) => {
            let code = e.code()?;
            match code.as_ref() {
                // statement_timeout or a cancel, lock_timeout, serialization failure, deadlock.
                "57014" | "55P03" | "40001" | "40P01" => Some(ApiError::DatabaseBusy),
                // admin_shutdown (also what pg_terminate_backend sends), crash_shutdown,
                // cannot_connect_now (starting up or shutting down).
                "57P01" | "57P02" | "57P03" => Some(ApiError::DatabaseUnavailable),
                // Class 08: connection exceptions; class 53: insufficient resources
                // (too_many_connections, out of memory, disk full).
                c if c.starts_with("08") || c.starts_with("53") => {
                    Some(ApiError::DatabaseUnavailable)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl From<DeliveryError> for ApiError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::AlreadyExists => ApiError::AlreadyExists,
            DeliveryError::NotFound => ApiError::NotFound,
            DeliveryError::RoleNotAllowed { .. } | DeliveryError::NotAssignedRider { .. } => {
                ApiError::Forbidden(error.to_string())
            }
            DeliveryError::InvalidTransition { .. } | DeliveryError::RiderAlreadyAssigned => {
                ApiError::InvalidTransition(error.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match transient(&error) {
            Some(variant) => variant(error),
            None => ApiError::Internal(error.into()),
        }
    }
}

/// A failure shared by every command of one group commit (`group_commit`). The variants own
/// their source, so each command gets the failure's message as its own copy.
impl From<std::sync::Arc<sqlx::Error>> for ApiError {
    fn from(error: std::sync::Arc<sqlx::Error>) -> Self {
        match transient(&error) {
            Some(variant) => variant(sqlx::Error::Protocol(error.to_string())),
            None => ApiError::Internal(anyhow::anyhow!("writing a group of commands: {error}")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedBody(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged once, inside the request span; the client never sees internal text.
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "command failed"),
            ApiError::DatabaseUnavailable(cause) | ApiError::DatabaseBusy(cause) => {
                tracing::warn!(error = %cause, code = self.code(), "command not served");
            }
            // Shedding is the bound working, and can happen thousands of times a second:
            // a warning each would flood the log exactly when the process is busiest.
            ApiError::Overloaded => tracing::debug!(code = self.code(), "command shed"),
            ApiError::RequestTimeout => {
                tracing::warn!(code = self.code(), "command not served");
            }
            _ => {}
        }
        let mut response = problem::respond(&self);
        (response.extensions_mut()).insert(crate::metrics::CommandOutcome::of_error(&self));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn connection_failures_are_unavailable_and_never_internal() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "expected 5 bytes");
        for error in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(eof)] {
            let api = ApiError::from(error);
            assert_eq!(api.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(api.code(), "database-unavailable");
        }
        let response = ApiError::Overloaded.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let other = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(other.code(), "internal");
    }
}
