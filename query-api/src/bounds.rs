//! The bounds on the work the query API takes on: how many requests run at once, how long one
//! may take, how long a read may wait for a pooled connection and how long one statement may
//! run. (How many reads may wait for the projector is the `FreshnessWatch`'s own bound.) Past
//! any bound the answer is a 503 problem with `Retry-After`, at once: a crowd is shed, never
//! queued behind plain reads.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Requests served at once unless configured (`--max-concurrent-requests`): room for every
/// waiting read (`DEFAULT_MAX_WAITERS`) and as many plain ones beside them.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 2 * crate::freshness::DEFAULT_MAX_WAITERS;

/// The HTTP side's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpBounds {
    /// Requests served at once (health checks aside); the next one is shed with 503.
    pub max_concurrent_requests: usize,
    /// The longest a request may take, read-your-writes waits included.
    pub request_timeout: Duration,
}

impl Default for HttpBounds {
    fn default() -> Self {
        Self {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The read pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Connections in the pool, the LISTEN connection included.
    pub connections: u32,
    /// The longest a read waits for a pooled connection before answering 503. Kept below the
    /// read-your-writes wait, so a full pool or a database that is down is reported rather
    /// than holding a request longer than any wait would.
    pub acquire_timeout: Duration,
    /// Postgres' `statement_timeout` on every connection: one slow or blocked statement
    /// cannot hold a connection (and a request) for long.
    pub statement_timeout: Duration,
}

impl Default for PoolBounds {
    fn default() -> Self {
        Self {
            connections: 16,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(3),
        }
    }
}

impl PoolBounds {
    /// `options` with what every read connection sets: read only, and the statement timeout.
    pub fn connect_options(&self, options: PgConnectOptions) -> PgConnectOptions {
        // Belt and braces: the role can only read, and every transaction says so too.
        options.options([
            ("default_transaction_read_only", "on".to_owned()),
            (
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ),
        ])
    }

    /// A pool of this size that gives up on a connection after the acquire timeout.
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.connections)
            .acquire_timeout(self.acquire_timeout)
            // A connection a restart killed is found out before a read gets it, not by the read.
            .test_before_acquire(true)
    }
}

/// What the bounding middleware needs: one semaphore for every clone of the router.
#[derive(Clone)]
pub(crate) struct Gate {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
}

impl Gate {
    pub(crate) fn new(bounds: &HttpBounds) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(bounds.max_concurrent_requests.max(1))),
            request_timeout: bounds.request_timeout,
        }
    }
}

/// Sheds a request past the concurrency limit at once, and ends one that outlives the request
/// timeout. Either way a 503 problem with `Retry-After`, so clients retry as they would for any
/// other passing outage.
pub(crate) async fn bound(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Bodies are written whole before `run` returns, so the permit covers all the work.
    let Ok(_permit) = gate.in_flight.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded);
    };
    tokio::time::timeout(gate.request_timeout, next.run(request))
        .await
        .map_err(|_| ApiError::RequestTimedOut)
}
