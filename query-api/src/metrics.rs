//! The query API's metrics: latency by route template (never the raw path, so no delivery or
//! rider id becomes a label), and read-your-writes reads by outcome with their wait.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::{Duration, Instant};

/// Time from a request to its response's head, by `route` (template), `method` and `status`.
pub const REQUEST_DURATION: &str = "query_api_request_duration_seconds";
/// `?min_version=` reads, by `outcome`: fresh, timed_out, too_many_waiters, failed.
pub const READ_YOUR_WRITES: &str = "query_api_read_your_writes_total";
/// How long `?min_version=` reads waited for the projector, by `outcome`.
pub const READ_YOUR_WRITES_WAIT: &str = "query_api_read_your_writes_wait_seconds";

/// What became of a read that waited for a version.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Freshness {
    /// It saw the version it asked for (at once, or after waiting).
    Fresh,
    /// The wait ran out first: 503 not-yet-projected.
    TimedOut,
    /// Too many reads were waiting already: 503 at once.
    TooManyWaiters,
    /// The database failed it.
    Failed,
}

impl Freshness {
    const ALL: [Freshness; 4] = [
        Self::Fresh,
        Self::TimedOut,
        Self::TooManyWaiters,
        Self::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::TimedOut => "timed_out",
            Self::TooManyWaiters => "too_many_waiters",
            Self::Failed => "failed",
        }
    }
}

/// Installs the process's recorder (once), describes the metrics, and shows every
/// read-your-writes outcome at 0 from the start.
pub fn register() {
    platform::service::metrics::install();
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a request, by route template, method and status"
    );
    metrics::describe_counter!(READ_YOUR_WRITES, "min_version reads, by outcome");
    metrics::describe_histogram!(
        READ_YOUR_WRITES_WAIT,
        metrics::Unit::Seconds,
        "How long min_version reads waited, by outcome"
    );
    for outcome in Freshness::ALL {
        metrics::counter!(READ_YOUR_WRITES, "outcome" => outcome.label()).increment(0);
    }
}

/// A read that waited `waited` for a version, and how it ended.
pub(crate) fn read_your_writes(outcome: Freshness, waited: Duration) {
    metrics::counter!(READ_YOUR_WRITES, "outcome" => outcome.label()).increment(1);
    metrics::histogram!(READ_YOUR_WRITES_WAIT, "outcome" => outcome.label()).record(waited);
}

/// Times a request of a matched route (a route layer: unmatched paths are not labelled).
pub(crate) async fn track_route(route: MatchedPath, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Only the methods the routes serve are labels; anything else is "other".
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    };
    let response = next.run(request).await;
    let labels = [
        ("route", route.as_str().to_owned()),
        ("method", method.to_owned()),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::histogram!(REQUEST_DURATION, &labels).record(started.elapsed());
    response
}
