//! Routes and handlers: HTTP -> `CommandContext` + command -> `CommandService` -> `Outcome`
//! -> response. A handler reads the body into a command and maps the outcome; the service does
//! the rest.

use crate::auth::Tokens;
use crate::context::CommandContext;
use crate::error::ApiError;
use crate::limits::{self, Guard, Limits};
use crate::metrics::{self, CommandOutcome};
use crate::openapi::{self, ApiDoc, BodilessCommandProblems, BodyCommandProblems, CreateProblems};
use crate::service::{Accepted, CommandService, Outcome, Recorded, Submission};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, middleware};
use domain::{Address, CancelReason, Command, CustomerId, DeliveryId, OrderRef, RiderId};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// What the embedding code provides.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: Tokens,
    /// Request bodies above this many bytes get a 413.
    pub max_body_bytes: usize,
}

/// What every handler shares.
#[derive(Clone, FromRef)]
struct Shared {
    service: CommandService,
    tokens: Tokens,
}

/// The command API as a router with the default `Limits`, ready to serve or to drive in tests.
pub fn app(state: AppState) -> Router {
    app_with_limits(state, Limits::default())
}

/// The command API as a router with the given bounds.
pub fn app_with_limits(state: AppState, limits: Limits) -> Router {
    metrics::register();
    let shared = Shared {
        service: CommandService::with_group_commit(
            state.pool,
            limits.idempotency_ttl,
            limits.group_commit_writers,
        ),
        tokens: state.tokens,
    };
    let (routes, spec) = routes(&limits);
    routes
        .merge(platform::openapi::docs_router(spec))
        // After the routes: it applies to the routes registered before it.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(shared)
}

/// The OpenAPI contract of the command API, exactly as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(&Limits::default()).1
}

/// Every route the API serves, each with its spec entry: a handler joins the router only
/// through `routes!`, which needs its `#[utoipa::path]`, so none can be served undocumented.
fn routes(limits: &Limits) -> (Router<Shared>, utoipa::openapi::OpenApi) {
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create))
        .routes(routes!(assign))
        .routes(routes!(pick_up))
        .routes(routes!(complete))
        .routes(routes!(cancel))
        // Commands only: a health check must answer even when commands are shed.
        .route_layer(middleware::from_fn_with_state(
            Guard::new(limits),
            limits::guard,
        ))
        // Outside the guard, so that shed and timed-out commands are counted too.
        .route_layer(middleware::from_fn(metrics::measure))
        .routes(routes!(platform::openapi::health))
        .routes(routes!(platform::openapi::metrics))
        .split_for_parts();
    platform::openapi::add_shared_components(&mut spec);
    openapi::link_commands(&mut spec);
    (router, spec)
}

/// A JSON body whose every rejection (syntax, content type, size) is an `ApiError`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct JsonBody<T>(T);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Lets a client choose the id (and so retry a create safely); a UUID v7 otherwise.
    delivery_id: Option<Uuid>,
    order_ref: OrderRef,
    customer_id: CustomerId,
    pickup: Address,
    dropoff: Address,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    rider_id: RiderId,
    /// The version the client decided from, like `If-Match` (the two must agree).
    #[serde(default, deserialize_with = "integral")]
    expected_version: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: CancelReason,
    /// The version the client decided from, like `If-Match` (the two must agree).
    #[serde(default, deserialize_with = "integral")]
    expected_version: Option<i64>,
}

/// An integer written as `3` or as `3.0`: JSON Schema's `integer`, and so the contract, counts
/// both (and some encoders write every number with a fraction). The fuzzer found `3.0` refused.
fn integral<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(integer) = number.as_i64() {
        return Ok(Some(integer));
    }
    // Below 2^63 in magnitude, an integral f64 converts to i64 exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    number
        .as_f64()
        .filter(|value| value.fract() == 0.0 && (-LIMIT..LIMIT).contains(value))
        .map(|value| Some(value as i64))
        .ok_or_else(|| D::Error::custom(format!("expected an integer, got {number}")))
}

fn parse_body<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    T::deserialize(body).map_err(|e| ApiError::InvalidBody(e.to_string()))
}

/// A malformed id names no delivery that could exist: 404, like an unknown one.
fn delivery_in_path(id: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(id).map_err(|_| ApiError::NotFound)
}

#[utoipa::path(
    post, path = "/deliveries",
    operation_id = "create_delivery",
    summary = "Create a delivery (dispatcher, admin)",
    request_body(content = CreateRequest, content_type = "application/json"),
    params(CommandContext),
    security(("bearer" = [])),
    tag = "commands",
    responses(
        (status = 201, description = "Created: the new version and the appended event", body = Accepted,
            headers(
                ("ETag" = String, description = "The new version, to send back as `If-Match`"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the answer to an earlier request with the same key"),
            )),
        CreateProblems,
    )
)]
async fn create(
    State(service): State<CommandService>,
    context: CommandContext,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Outcome, ApiError> {
    let request: CreateRequest = parse_body(&body)?;
    let delivery_id = DeliveryId::from_uuid(request.delivery_id.unwrap_or_else(Uuid::now_v7));
    let command = Command::Create {
        delivery_id,
        order_ref: request.order_ref,
        customer_id: request.customer_id,
        pickup: request.pickup,
        dropoff: request.dropoff,
    };
    let submission = Submission::new(delivery_id, command).with_body(body, None);
    service.handle(&context, submission).await
}

#[utoipa::path(
    post, path = "/deliveries/{id}/assign",
    operation_id = "assign_rider",
    summary = "Assign a rider (dispatcher, admin)",
    request_body(content = AssignRequest, content_type = "application/json"),
    params(CommandContext, ("id" = inline(DeliveryId), Path, description = "The delivery")),
    security(("bearer" = [])),
    tag = "commands",
    responses(
        (status = 200, description = "Assigned: the new version and the appended event", body = Accepted,
            headers(
                ("ETag" = String, description = "The new version, to send back as `If-Match`"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the answer to an earlier request with the same key"),
            )),
        BodyCommandProblems,
    )
)]
async fn assign(
    State(service): State<CommandService>,
    context: CommandContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Outcome, ApiError> {
    let request: AssignRequest = parse_body(&body)?;
    let command = Command::AssignRider {
        rider_id: request.rider_id,
    };
    let submission = Submission::new(delivery_in_path(&id)?, command);
    let submission = submission.with_body(body, request.expected_version);
    service.handle(&context, submission).await
}

#[utoipa::path(
    post, path = "/deliveries/{id}/cancel",
    operation_id = "cancel",
    summary = "Cancel the delivery (dispatcher, admin, system)",
    request_body(content = CancelRequest, content_type = "application/json"),
    params(CommandContext, ("id" = inline(DeliveryId), Path, description = "The delivery")),
    security(("bearer" = [])),
    tag = "commands",
    responses(
        (status = 200, description = "Cancelled: the new version and the appended event", body = Accepted,
            headers(
                ("ETag" = String, description = "The new version, to send back as `If-Match`"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the answer to an earlier request with the same key"),
            )),
        BodyCommandProblems,
    )
)]
async fn cancel(
    State(service): State<CommandService>,
    context: CommandContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Outcome, ApiError> {
    let request: CancelRequest = parse_body(&body)?;
    let command = Command::Cancel {
        reason: request.reason,
    };
    let submission = Submission::new(delivery_in_path(&id)?, command);
    let submission = submission.with_body(body, request.expected_version);
    service.handle(&context, submission).await
}

/// Pick-up and completion carry no information beyond who and when: no body is read.
#[utoipa::path(
    post, path = "/deliveries/{id}/pickup",
    operation_id = "pick_up",
    summary = "Pick the delivery up (its rider, admin)",
    params(CommandContext, ("id" = inline(DeliveryId), Path, description = "The delivery")),
    security(("bearer" = [])),
    tag = "commands",
    responses(
        (status = 200, description = "Picked up: the new version and the appended event", body = Accepted,
            headers(
                ("ETag" = String, description = "The new version, to send back as `If-Match`"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the answer to an earlier request with the same key"),
            )),
        BodilessCommandProblems,
    )
)]
async fn pick_up(
    State(service): State<CommandService>,
    context: CommandContext,
    Path(id): Path<String>,
) -> Result<Outcome, ApiError> {
    let submission = Submission::new(delivery_in_path(&id)?, Command::PickUp);
    service.handle(&context, submission).await
}

#[utoipa::path(
    post, path = "/deliveries/{id}/complete",
    operation_id = "complete",
    summary = "Complete the delivery (its rider, admin)",
    params(CommandContext, ("id" = inline(DeliveryId), Path, description = "The delivery")),
    security(("bearer" = [])),
    tag = "commands",
    responses(
        (status = 200, description = "Completed: the new version and the appended event", body = Accepted,
            headers(
                ("ETag" = String, description = "The new version, to send back as `If-Match`"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the answer to an earlier request with the same key"),
            )),
        BodilessCommandProblems,
    )
)]
async fn complete(
    State(service): State<CommandService>,
    context: CommandContext,
    Path(id): Path<String>,
) -> Result<Outcome, ApiError> {
    let submission = Submission::new(delivery_in_path(&id)?, Command::Complete);
    service.handle(&context, submission).await
}

/// A success carries the new version in its ETag, so a client can send it back as If-Match;
/// a replayed verdict is marked as such.
impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let outcome = match &self {
            Outcome::Accepted(_) => CommandOutcome::Accepted,
            Outcome::Replayed(_) => CommandOutcome::Replayed,
        };
        let mut response = match self {
            Outcome::Accepted(accepted) => {
                command_response(accepted.status(), accepted.body(), false)
            }
            Outcome::Replayed(Recorded { status, body }) if status.is_success() => {
                command_response(status, body, true)
            }
            Outcome::Replayed(Recorded { status, body }) => {
                let mut response = ApiError::recorded_response(status, &body);
                mark_replayed(&mut response);
                response
            }
        };
        response.extensions_mut().insert(outcome);
        response
    }
}

fn command_response(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let etag = body
        .get("version")
        .and_then(serde_json::Value::as_i64)
        .and_then(|version| HeaderValue::from_str(&format!("\"{version}\"")).ok());
    let mut response = (status, Json(body)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if replayed {
        mark_replayed(&mut response);
    }
    response
}

fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert("idempotency-replayed", HeaderValue::from_static("true"));
}
