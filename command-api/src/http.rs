//! Routes and handlers: HTTP -> command -> `decide` -> event store + outbox.

use crate::auth::{Authenticated, Tokens};
use crate::command::{CommandRequest, execute};
use crate::error::ApiError;
use crate::idempotency::{Fingerprint, IdempotentRequest};
use crate::limits::{self, Guard, Limits};
use crate::store::Causation;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Path, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Router, middleware};
use domain::{Actor, Address, CancelReason, Command, CustomerId, DeliveryId, OrderRef, RiderId};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;
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
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) tokens: Tokens,
    pub(crate) limits: Limits,
}

/// The command API as a router with the default `Limits`, ready to serve or to drive in tests.
pub fn app(state: AppState) -> Router {
    app_with_limits(state, Limits::default())
}

/// The command API as a router with the given bounds.
pub fn app_with_limits(state: AppState, limits: Limits) -> Router {
    let guard = Guard::new(&limits);
    let shared = Shared {
        pool: state.pool,
        tokens: state.tokens,
        limits,
    };
    Router::new()
        .route("/deliveries", post(create))
        .route("/deliveries/{id}/assign", post(assign))
        .route("/deliveries/{id}/pickup", post(pick_up))
        .route("/deliveries/{id}/complete", post(complete))
        .route("/deliveries/{id}/cancel", post(cancel))
        // Commands only: a health check must answer even when commands are shed.
        .route_layer(middleware::from_fn_with_state(guard, limits::guard))
        .route("/health", get(|| async { "ok" }))
        // After the routes: it applies to the routes registered before it.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(shared)
}

/// A JSON body whose every rejection (syntax, content type, size) is an `ApiError`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct JsonBody<T>(T);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Lets a client choose the id (and so retry a create safely); a UUID v7 otherwise.
    delivery_id: Option<Uuid>,
    order_ref: OrderRef,
    customer_id: CustomerId,
    pickup: Address,
    dropoff: Address,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    rider_id: RiderId,
    expected_version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: CancelReason,
    expected_version: Option<i64>,
}

fn parse_body<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    T::deserialize(body).map_err(|e| ApiError::InvalidBody(e.to_string()))
}

async fn create(
    State(state): State<Shared>,
    Authenticated(actor): Authenticated,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let request: CreateRequest = parse_body(&body)?;
    let delivery_id = DeliveryId::from_uuid(request.delivery_id.unwrap_or_else(Uuid::now_v7));
    let command = Command::Create {
        delivery_id,
        order_ref: request.order_ref,
        customer_id: request.customer_id,
        pickup: request.pickup,
        dropoff: request.dropoff,
    };
    let request = CommandRequest::new(&headers, &uri, &actor, &body, None)?;
    execute(&state, actor, delivery_id, command, request).await
}

async fn assign(
    State(state): State<Shared>,
    Authenticated(actor): Authenticated,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let assign: AssignRequest = parse_body(&body)?;
    let command = Command::AssignRider {
        rider_id: assign.rider_id,
    };
    let target = Target::new(&id, &uri, &headers)?;
    on_delivery(
        &state,
        actor,
        target,
        &body,
        assign.expected_version,
        command,
    )
    .await
}

async fn cancel(
    State(state): State<Shared>,
    Authenticated(actor): Authenticated,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let cancel: CancelRequest = parse_body(&body)?;
    let command = Command::Cancel {
        reason: cancel.reason,
    };
    let target = Target::new(&id, &uri, &headers)?;
    on_delivery(
        &state,
        actor,
        target,
        &body,
        cancel.expected_version,
        command,
    )
    .await
}

/// Pick-up and completion carry no information beyond who and when: no body is read.
async fn pick_up(
    State(state): State<Shared>,
    Authenticated(actor): Authenticated,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let target = Target::new(&id, &uri, &headers)?;
    on_delivery(
        &state,
        actor,
        target,
        &serde_json::Value::Null,
        None,
        Command::PickUp,
    )
    .await
}

async fn complete(
    State(state): State<Shared>,
    Authenticated(actor): Authenticated,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let target = Target::new(&id, &uri, &headers)?;
    on_delivery(
        &state,
        actor,
        target,
        &serde_json::Value::Null,
        None,
        Command::Complete,
    )
    .await
}

/// The delivery a command is addressed to, with the request's path and headers.
struct Target<'a> {
    delivery_id: DeliveryId,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl<'a> Target<'a> {
    /// A malformed id names no delivery that could exist: 404, like an unknown one.
    fn new(id: &str, uri: &'a Uri, headers: &'a HeaderMap) -> Result<Self, ApiError> {
        let delivery_id = DeliveryId::parse(id).map_err(|_| ApiError::NotFound)?;
        Ok(Self {
            delivery_id,
            uri,
            headers,
        })
    }
}

/// Runs a command on an existing delivery.
async fn on_delivery(
    state: &Shared,
    actor: Actor,
    target: Target<'_>,
    body: &serde_json::Value,
    body_version: Option<i64>,
    command: Command,
) -> Result<Response, ApiError> {
    let request = CommandRequest::new(target.headers, target.uri, &actor, body, body_version)?;
    execute(state, actor, target.delivery_id, command, request).await
}

/// `If-Match: "3"` (or `3`, or `W/"3"`) expects version 3; `*` or no header means "latest".
fn if_match_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidHeader("If-Match must be a version number like \"3\"".into());
    let raw = value.to_str().map_err(|_| invalid())?.trim();
    if raw == "*" {
        return Ok(None);
    }
    let raw = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
    raw.parse::<i64>()
        .ok()
        .filter(|version| *version >= 0)
        .map(Some)
        .ok_or_else(invalid)
}

impl CommandRequest {
    /// Reads the preconditions, the idempotency key and the tracing ids from the headers.
    fn new(
        headers: &HeaderMap,
        uri: &Uri,
        actor: &Actor,
        body: &serde_json::Value,
        body_version: Option<i64>,
    ) -> Result<Self, ApiError> {
        let header_version = if_match_version(headers)?;
        let expected_version = match (header_version, body_version) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::InvalidHeader(
                    "If-Match and expected_version disagree".into(),
                ));
            }
            (a, b) => a.or(b),
        };
        let idempotency = match headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let key = value
                    .to_str()
                    .ok()
                    .filter(|key| (1..=255).contains(&key.len()))
                    .ok_or_else(|| {
                        ApiError::InvalidHeader(
                            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                        )
                    })?;
                let fingerprint = Fingerprint {
                    method: Method::POST.as_str(),
                    path: uri.path(),
                    if_match: header_version,
                    body,
                };
                Some(IdempotentRequest::new(
                    format!("{}:{}", actor.role, actor.id),
                    key.to_owned(),
                    &fingerprint,
                ))
            }
        };
        let correlation_id = match headers.get("x-correlation-id") {
            None => Uuid::now_v7(),
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|raw| Uuid::parse_str(raw).ok())
                .ok_or_else(|| ApiError::InvalidHeader("X-Correlation-Id must be a UUID".into()))?,
        };
        Ok(Self {
            expected_version,
            idempotency,
            // The request itself is the cause of the events it appends.
            causation: Causation {
                correlation_id,
                causation_id: Uuid::now_v7(),
            },
        })
    }
}
