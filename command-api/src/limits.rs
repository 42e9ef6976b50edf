//! Bounds on what one command API process takes on: requests in flight and time per request.
//! Past either bound the client gets a 503 problem with `Retry-After` at once, instead of
//! queueing behind a crowd until every request is slow.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The bounds of one command API process, with the defaults `serve` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Commands in progress at once; one more is shed with `503 overloaded`.
    pub max_in_flight: usize,
    /// The longest one command may take, body included; then `503 request-timeout` (the
    /// command's transaction is dropped, so it rolls back unless it had already committed).
    pub request_timeout: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Group-commit statements in progress at once; 0 gives each command a transaction of
    /// its own (`group_commit`).
    pub group_commit_writers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            request_timeout: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            group_commit_writers: crate::service::DEFAULT_GROUP_COMMIT_WRITERS,
        }
    }
}

/// The shared state of the guard layer.
#[derive(Clone)]
pub(crate) struct Guard {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
}

impl Guard {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(
                limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            request_timeout: limits.request_timeout,
        }
    }
}

/// Sheds a request beyond the in-flight bound (no queue: a queue only makes every waiter late)
/// and answers a request that outlives its time with a problem, not an empty body.
pub(crate) async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let Ok(_permit) = guard.in_flight.try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}
