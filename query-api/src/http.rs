//! The router, the state every handler shares, and the extractors and helpers they have in common.

use crate::auth::{Tokens, require_token};
use crate::bounds::{Gate, HttpBounds, bound};
use crate::error::ApiError;
use crate::freshness::{FreshnessWatch, Waited};
use crate::live::{Live, StreamAccess, require_token_or_session};
use crate::metrics::{self, Freshness};
use crate::openapi::ApiDoc;
use crate::{dashboard, deliveries, history, live, riders, stats};
use axum::extract::{FromRef, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::{Router, middleware};
use chrono::{DateTime, Utc};
use domain::{DeliveryId, RiderId};
use serde::Deserialize;
use sqlx::PgPool;
use std::future::Future;
use std::time::{Duration, Instant};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// What every handler shares.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The read database, as a role that can only read.
    pub pool: PgPool,
    pub tokens: Tokens,
    /// The longest a `?min_version=` read waits for the projector before answering 503.
    pub max_wait: Duration,
    pub freshness: FreshnessWatch,
    /// The live streams' bound, shutdown switch and dashboard sessions.
    pub live: Live,
}

/// The query API as a router with the default [`HttpBounds`], ready to serve or to drive in
/// tests.
pub fn app(state: AppState) -> Router {
    app_with_bounds(state, HttpBounds::default())
}

/// The query API as a router with the given bounds.
pub fn app_with_bounds(state: AppState, bounds: HttpBounds) -> Router {
    metrics::register();
    let (routes, spec) = routes(&state.tokens, &state.live, &bounds);
    routes
        .merge(platform::openapi::docs_router(spec))
        .fallback(|| async { ApiError::RouteNotFound })
        // After every route: it applies to the routes registered so far. axum still adds the
        // `Allow` header naming the methods the path has.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // `ApiError` logs the 5xx worth logging, once (internal at error, an unavailable
        // database at warn); the layer would log every 503 again at error, a line per shed
        // request when a crowd is being shed.
        .layer(TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}

/// The OpenAPI contract of the query API, exactly as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(&Tokens::none(), &Live::default(), &HttpBounds::default()).1
}

/// Every route the API serves, each with its spec entry: a handler joins the router only
/// through `routes!`, which needs its `#[utoipa::path]`, so none can be served undocumented.
fn routes(
    tokens: &Tokens,
    live: &Live,
    bounds: &HttpBounds,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let reads = OpenApiRouter::new()
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries::get))
        .routes(routes!(history::get))
        .routes(routes!(riders::get))
        .routes(routes!(stats::get))
        // Route layers: an unknown path is a 404 without asking for a token, and neither it
        // nor a health check counts against the concurrency limit.
        .route_layer(middleware::from_fn_with_state(
            tokens.clone(),
            require_token,
        ))
        // Outermost, so a crowd is shed before any other work.
        .route_layer(middleware::from_fn_with_state(Gate::new(bounds), bound))
        // Around even that, so shed requests are timed too.
        .route_layer(middleware::from_fn(metrics::track_route));
    // Neither bounded nor timed like the reads: a stream lasts, and counts against its own
    // bound (`Live`). Taken with a token or a dashboard session.
    let streams = OpenApiRouter::new()
        .routes(routes!(live::delivery::stream))
        .routes(routes!(live::stats_stream))
        .routes(routes!(live::feed_stream))
        .routes(routes!(live::session::check))
        .route_layer(middleware::from_fn_with_state(
            StreamAccess::new(tokens.clone(), live.clone()),
            require_token_or_session,
        ));
    // Opening a session needs the bearer token itself (checked by the handler), ending one
    // only the cookie; the page needs nothing.
    let dashboard = OpenApiRouter::new()
        .routes(routes!(live::session::create, live::session::end))
        .routes(routes!(dashboard::root))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style));
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(reads)
        .merge(streams)
        .merge(dashboard)
        .routes(routes!(platform::openapi::health))
        .routes(routes!(platform::openapi::metrics))
        .split_for_parts();
    platform::openapi::add_shared_components(&mut spec);
    crate::openapi::add_session_scheme(&mut spec);
    crate::openapi::link_reads(&mut spec);
    (router, spec)
}

/// Query parameters whose every rejection is an `invalid-query` problem.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct QueryParams<T>(pub T);

/// The `{id}` of a delivery route. A malformed id names no delivery that could exist, so it
/// is a 404 like an unknown one (and so is a segment that is not even UTF-8).
pub(crate) struct DeliveryPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for DeliveryPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::DeliveryNotFound)?;
        DeliveryId::parse(&raw)
            .map(|id| Self(id.as_uuid()))
            .map_err(|_| ApiError::DeliveryNotFound)
    }
}

/// The `{id}` of a rider route; malformed is unknown, as for deliveries.
pub(crate) struct RiderPath(pub RiderId);

impl<S: Send + Sync> FromRequestParts<S> for RiderPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::RiderNotFound)?;
        RiderId::parse(raw)
            .map(Self)
            .map_err(|_| ApiError::RiderNotFound)
    }
}

/// `?min_version=N[&wait_ms=M]`: answer only once the read model holds version N.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinVersion {
    version: i64,
    wait: Duration,
}

impl MinVersion {
    /// `wait_ms` only shortens the server's own limit; without `min_version` it means nothing.
    pub(crate) fn from_query(
        min_version: Option<i64>,
        wait_ms: Option<u64>,
        max_wait: Duration,
    ) -> Result<Option<Self>, ApiError> {
        let Some(version) = min_version else {
            return Ok(None);
        };
        if version < 1 {
            return Err(ApiError::invalid_query(
                "min_version must be a version number, 1 or more",
            ));
        }
        let wait = wait_ms.map_or(max_wait, |ms| Duration::from_millis(ms).min(max_wait));
        Ok(Some(Self { version, wait }))
    }
}

/// Reads once, or with a `MinVersion`, until the read is at least that version: never answers
/// with older data than the client asked for.
pub(crate) async fn read_fresh<T, F, Fut>(
    state: &AppState,
    delivery_id: Uuid,
    wanted: Option<MinVersion>,
    mut read: F,
    version: impl Fn(&T) -> i64,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let Some(wanted) = wanted else {
        return read().await;
    };
    let started = Instant::now();
    let waited = state
        .freshness
        .read_until(
            wanted.wait,
            Some((delivery_id, wanted.version)),
            read,
            |value| version(value) >= wanted.version,
        )
        .await;
    let outcome = match &waited {
        Ok(Waited::Ready(_)) => Freshness::Fresh,
        Ok(Waited::TimedOut(_)) => Freshness::TimedOut,
        Err(ApiError::TooManyWaiters) => Freshness::TooManyWaiters,
        Err(_) => Freshness::Failed,
    };
    metrics::read_your_writes(outcome, started.elapsed());
    match waited? {
        Waited::Ready(value) => Ok(value),
        Waited::TimedOut(value) => Err(ApiError::NotYetProjected {
            projected: version(&value),
            requested: wanted.version,
        }),
    }
}

/// Deserializes an optional RFC 3339 time from a query string, with a message that helps.
pub(crate) fn rfc3339<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = String::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&raw)
        .map(|time| Some(time.with_timezone(&Utc)))
        .map_err(|_| {
            serde::de::Error::custom(
                "expected an RFC 3339 time such as 2026-03-02T09:00:00Z \
                 (send a '+' offset as %2B: a bare '+' in a query string is a space)",
            )
        })
}

/// For failures that are ours, not the client's.
pub(crate) fn internal(error: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(error.into())
}
