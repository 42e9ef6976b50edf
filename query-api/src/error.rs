//! The one error type of the HTTP boundary, written as `application/problem+json` (RFC 9457)
//! by `platform::problem`, in the same shape as the command API's.

use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::problem::{self, Problem};

/// Every way a read can fail. `code` is the stable contract; `detail` is for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("no delivery has this id")]
    DeliveryNotFound,
    #[error("no rider has this id")]
    RiderNotFound,
    #[error("{0}")]
    InvalidQuery(String),
    /// A request header this API reads (`Last-Event-ID`) that it cannot read.
    #[error("{0}")]
    InvalidHeader(String),
    /// The read model is behind the version a client has already seen acknowledged.
    #[error(
        "version {requested} is not projected yet (the read model is at version {projected}); \
         retry shortly"
    )]
    NotYetProjected { projected: i64, requested: i64 },
    /// A projection this read needs has not been built in the read database (a projection
    /// added later, before `projector rebuild` has built it).
    #[error("this read needs a projection that is not built yet; retry once it has been rebuilt")]
    ProjectionUnavailable,
    /// As many reads as allowed already wait for the projector (`--max-waiters`). Refused at
    /// once rather than queued: a crowd of waiters must not starve plain reads.
    #[error("too many reads are waiting for the projector; retry shortly")]
    TooManyWaiters,
    /// As many requests as allowed are in flight (`--max-concurrent-requests`): shed, not queued.
    #[error("the query API is at its concurrency limit; retry shortly")]
    Overloaded,
    /// As many live streams as allowed are open (`--max-streams`).
    #[error("the query API has as many live streams open as it allows; retry shortly")]
    TooManyStreams,
    /// The whole request took longer than `--request-timeout-ms`.
    #[error("the read took longer than the request timeout; retry shortly")]
    RequestTimedOut,
    /// A statement ran into the pool's `statement_timeout` (or was cancelled by the server).
    #[error("the read database did not answer in time; retry shortly")]
    ReadTimedOut,
    /// The read database cannot be reached or used right now: no connection within the
    /// acquire timeout, a connection lost mid-read, a server shutting down or starting up.
    #[error("the read database is unavailable; retry shortly")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// No route has this path (the router's fallback).
    #[error("no resource at this path")]
    RouteNotFound,
    /// The path exists, the method does not (the `Allow` header lists those that do).
    #[error("this path does not support this method")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::DeliveryNotFound | ApiError::RiderNotFound | ApiError::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidQuery(_) | ApiError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::NotYetProjected { .. }
            | ApiError::ProjectionUnavailable
            | ApiError::TooManyWaiters
            | ApiError::Overloaded
            | ApiError::TooManyStreams
            | ApiError::RequestTimedOut
            | ApiError::ReadTimedOut
            | ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code; the problem `type` is derived from it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::DeliveryNotFound => "delivery-not-found",
            ApiError::RiderNotFound => "rider-not-found",
            ApiError::InvalidQuery(_) => "invalid-query",
            ApiError::InvalidHeader(_) => "invalid-header",
            ApiError::NotYetProjected { .. } => "not-yet-projected",
            ApiError::ProjectionUnavailable => "projection-unavailable",
            ApiError::TooManyWaiters => "too-many-waiters",
            ApiError::Overloaded => "overloaded",
            ApiError::TooManyStreams => "too-many-streams",
            ApiError::RequestTimedOut => "request-timed-out",
            ApiError::ReadTimedOut => "read-timed-out",
            ApiError::DatabaseUnavailable(_) => "database-unavailable",
            ApiError::RouteNotFound => "route-not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::Internal(_) => "internal",
        }
    }

    pub(crate) fn invalid_query(detail: impl Into<String>) -> Self {
        ApiError::InvalidQuery(detail.into())
    }

    /// Seconds a client should wait before retrying; every 503 has one (RFC 9110 `Retry-After`).
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            // A rebuild takes a while; asking every second helps nobody.
            ApiError::ProjectionUnavailable => Some(30),
            // The projector commits in small batches, a restart or a crowd passes in seconds:
            // a second is usually plenty.
            _ if self.status_code() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    /// Whether the same read may succeed a moment later: worth retrying inside a wait.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, ApiError::DatabaseUnavailable(_))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(e) => match e.code().as_deref() {
                // undefined_table: the query table is not there.
                Some("42P01") => ApiError::ProjectionUnavailable,
                // query_canceled: our statement_timeout (or an operator's pg_cancel_backend).
                Some("57014") => ApiError::ReadTimedOut,
                // Class 08 connection exception, class 53 insufficient resources (too many
                // connections, out of memory), and the server shutting down (57P01 admin,
                // 57P02 crash) or starting up (57P03): a restart or an outage, not a bug.
                Some(code)
                    if code.starts_with("08")
                        || code.starts_with("53")
                        || matches!(code, "57P01" | "57P02" | "57P03") =>
                {
                    ApiError::DatabaseUnavailable(error)
                }
                _ => ApiError::Internal(error.into()),
            },
            // No connection within the acquire timeout (the server is down or every
            // connection is busy), or the connection broke under the read.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => ApiError::DatabaseUnavailable(error),
            _ => ApiError::Internal(error.into()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            // Logged once, inside the request span; the client never sees internal text.
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "query failed"),
            // Expected during a database restart: loud enough to see, not an error of ours.
            ApiError::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "read database unavailable");
            }
            _ => {}
        }
        problem::respond(&self)
    }
}
