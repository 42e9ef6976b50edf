//! The query API's OpenAPI contract, generated from the handlers: each handler's
//! `#[utoipa::path]` states its parameters and answers, and `OpenApiRouter` puts every routed
//! handler in the spec (`http::routes`). This module holds what the handlers share: the
//! problems each kind of read can answer with, as `ApiError` values, so a documented code is
//! always a real one, and the dashboard's session cookie as a second security scheme.

use crate::error::ApiError;
use crate::live::session::COOKIE_NAME;
use crate::live::{FeedEvent, LiveStats};
use std::collections::BTreeMap;
use utoipa::IntoResponses;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, OpenApi, RefOr, Response};

/// The name of the security scheme of the dashboard's session cookie, which admits the live
/// streams (the operations' `security(("dashboard_session" = []))` spell it out).
pub(crate) const SESSION: &str = "dashboard_session";

/// The spec's fixed parts; `OpenApiRouter` adds the paths and their schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Delivery query API",
        description = "Reads of the query tables the projector builds from the event stream: \
                       eventually consistent, with read-your-writes by version \
                       (`?min_version=`). Errors are `application/problem+json` with a stable \
                       `code`.",
    ),
    // What the streams send as `data:` (a string schema cannot point at them).
    components(schemas(LiveStats, FeedEvent)),
    tags(
        (name = "reads", description = "Deliveries, their history, riders and live numbers"),
        (name = "live", description = "The same, pushed as server-sent events"),
        (name = "dashboard", description = "The live dashboard: its page and its session"),
        (name = "operations", description = "For load balancers and operators"),
    )
)]
pub(crate) struct ApiDoc;

/// Links each read to the reads its answer names: a listed delivery, its history, its rider.
pub(crate) fn link_reads(openapi: &mut OpenApi) {
    let listed = "$response.body#/items/0/delivery_id";
    platform::openapi::link(openapi, "list_deliveries", "get_delivery", "id", listed);
    platform::openapi::link(openapi, "list_deliveries", "get_history", "id", listed);
    let read = "$response.body#/delivery_id";
    platform::openapi::link(openapi, "get_delivery", "get_history", "id", read);
    let rider = "$response.body#/rider_id";
    platform::openapi::link(openapi, "get_delivery", "get_rider_deliveries", "id", rider);
}

/// The dashboard's session cookie (`live::session`), a second way into the live streams: an
/// `EventSource` cannot send `Authorization`.
pub(crate) fn add_session_scheme(openapi: &mut OpenApi) {
    let scheme = SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
        COOKIE_NAME,
        "A dashboard session, opened with `POST /dashboard/session`; admits the live \
         streams only",
    )));
    let components = openapi
        .components
        .take()
        .map_or_else(ComponentsBuilder::new, Into::into)
        .security_scheme(SESSION, scheme);
    openapi.components = Some(components.build());
}

/// What any read can be refused with.
fn any_read() -> Vec<ApiError> {
    vec![
        ApiError::Unauthorized,
        ApiError::ProjectionUnavailable,
        ApiError::Overloaded,
        ApiError::RequestTimedOut,
        ApiError::ReadTimedOut,
        ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut),
        ApiError::Internal(anyhow::anyhow!("documented")),
    ]
}

/// What a read of one delivery can be refused with besides, `?min_version=` included.
fn of_a_delivery() -> Vec<ApiError> {
    vec![
        ApiError::InvalidQuery(String::new()),
        ApiError::DeliveryNotFound,
        ApiError::NotYetProjected {
            projected: 0,
            requested: 0,
        },
        ApiError::TooManyWaiters,
    ]
}

fn responses(extra: Vec<ApiError>) -> BTreeMap<String, RefOr<Response>> {
    let problems: Vec<ApiError> = any_read().into_iter().chain(extra).collect();
    platform::openapi::problem_responses(&problems)
}

/// The problems of `GET /deliveries/{id}` and `GET /deliveries/{id}/history`.
pub(crate) struct DeliveryProblems;

impl IntoResponses for DeliveryProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(of_a_delivery())
    }
}

/// The problems of `GET /deliveries`.
pub(crate) struct ListProblems;

impl IntoResponses for ListProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(vec![ApiError::InvalidQuery(String::new())])
    }
}

/// The problems of `GET /riders/{id}/deliveries`.
pub(crate) struct RiderProblems;

impl IntoResponses for RiderProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(vec![ApiError::RiderNotFound])
    }
}

/// The problems of `GET /stats`.
pub(crate) struct StatsProblems;

impl IntoResponses for StatsProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(Vec::new())
    }
}

/// What opening any stream can be refused with: no token or session, or no slot.
fn any_stream() -> Vec<ApiError> {
    vec![ApiError::Unauthorized, ApiError::TooManyStreams]
}

/// The problems of `GET /stats/stream` and `GET /events/stream`: they read nothing before
/// they answer (their hub does, in the background).
pub(crate) struct StreamProblems;

impl IntoResponses for StreamProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        platform::openapi::problem_responses(&any_stream())
    }
}

/// The problems of `GET /deliveries/{id}/stream`, which reads the delivery before it answers:
/// not the gated reads' `overloaded` and `request-timed-out` (a stream counts against its own
/// bound), nor `?min_version=`'s.
pub(crate) struct DeliveryStreamProblems;

impl IntoResponses for DeliveryStreamProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut problems = any_stream();
        problems.extend([
            ApiError::InvalidHeader(String::new()),
            ApiError::DeliveryNotFound,
            ApiError::ProjectionUnavailable,
            ApiError::ReadTimedOut,
            ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut),
            ApiError::Internal(anyhow::anyhow!("documented")),
        ]);
        platform::openapi::problem_responses(&problems)
    }
}
