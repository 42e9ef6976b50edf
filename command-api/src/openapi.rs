//! The command API's OpenAPI contract, generated from the handlers (`http`): each handler's
//! `#[utoipa::path]` states its body, parameters and answers, and `OpenApiRouter` puts every
//! routed handler in the spec. This module holds what the handlers share: the headers of a
//! `CommandContext`, the problems each kind of command can answer with (as `ApiError` values,
//! so a documented code is always a real one), and the links that chain a delivery's commands.

use crate::context::CommandContext;
use crate::error::ApiError;
use std::collections::BTreeMap;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{OpenApi, RefOr, Required, Response};
use utoipa::{IntoParams, IntoResponses};

/// The spec's fixed parts; `OpenApiRouter` adds the paths and their schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Delivery command API",
        description = "Commands on deliveries: each one appends events to the event store, \
                       with their outbox records, in one transaction. Errors are \
                       `application/problem+json` with a stable `code`.",
    ),
    tags(
        (name = "commands", description = "Create a delivery and move it through its lifecycle"),
        (name = "operations", description = "For load balancers and operators"),
    )
)]
pub(crate) struct ApiDoc;

/// `If-Match`: `*`, or the version the client decided from, as an entity tag (`"3"`,
/// `W/"3"`) or a bare number. Exactly what `context::if_match_version` accepts.
pub(crate) const IF_MATCH_PATTERN: &str = r#"^(\*|(W/)?"[0-9]{1,18}"|[0-9]{1,18})$"#;

/// What `CommandContext` reads besides the bearer token (which is the `bearer` scheme).
impl IntoParams for CommandContext {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let header = |name: &str, description: &str, schema: ObjectBuilder| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        vec![
            header(
                "If-Match",
                "The version the client decided from (the `ETag` of its last answer); absent \
                 or `*` means the latest. A stale one is `409 version-conflict`.",
                string().pattern(Some(IF_MATCH_PATTERN)).examples(["\"3\""]),
            ),
            header(
                "Idempotency-Key",
                "Makes a retry safe: the same request with the same key (per caller, for 24 h) \
                 gets the first attempt's answer again, with `Idempotency-Replayed: true`.",
                string()
                    .min_length(Some(1))
                    .max_length(Some(255))
                    // Visible ASCII, spaces and tabs inside (HTTP trims them at the ends).
                    .pattern(Some(r"^[!-~]([\t -~]*[!-~])?$"))
                    .examples(["order-1001"]),
            ),
            header(
                "X-Correlation-Id",
                "Recorded in every event the command appends; a new one when absent.",
                string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            ),
        ]
    }
}

/// What any command can be refused with, whatever its body.
fn any_command() -> Vec<ApiError> {
    let unavailable = || sqlx::Error::PoolTimedOut;
    vec![
        ApiError::InvalidHeader(String::new()),
        ApiError::Unauthorized,
        ApiError::Forbidden(String::new()),
        ApiError::VersionConflict {
            expected: 0,
            actual: 0,
        },
        ApiError::IdempotencyKeyReused,
        ApiError::DatabaseUnavailable(unavailable()),
        ApiError::DatabaseBusy(unavailable()),
        ApiError::Overloaded,
        ApiError::RequestTimeout,
        ApiError::Internal(anyhow::anyhow!("documented")),
    ]
}

/// What reading a JSON body can be refused with.
fn with_body() -> Vec<ApiError> {
    vec![
        ApiError::MalformedBody(String::new()),
        ApiError::InvalidBody(String::new()),
        ApiError::UnsupportedMediaType,
        ApiError::BodyTooLarge,
    ]
}

/// What a command on an existing delivery can be refused with besides.
fn on_a_delivery() -> Vec<ApiError> {
    vec![
        ApiError::NotFound,
        ApiError::InvalidTransition(String::new()),
    ]
}

fn responses<const N: usize>(groups: [Vec<ApiError>; N]) -> BTreeMap<String, RefOr<Response>> {
    let problems: Vec<ApiError> = groups.into_iter().flatten().collect();
    platform::openapi::problem_responses(&problems)
}

/// The problems of `POST /deliveries`.
pub(crate) struct CreateProblems;

impl IntoResponses for CreateProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut problems = any_command();
        problems.push(ApiError::AlreadyExists);
        responses([problems, with_body()])
    }
}

/// The problems of a command with a body on an existing delivery (assign, cancel).
pub(crate) struct BodyCommandProblems;

impl IntoResponses for BodyCommandProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([any_command(), on_a_delivery(), with_body()])
    }
}

/// The problems of a command without a body on an existing delivery (pick up, complete).
pub(crate) struct BodilessCommandProblems;

impl IntoResponses for BodilessCommandProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([any_command(), on_a_delivery()])
    }
}

/// The commands on a delivery: each takes its id in the path.
const ON_A_DELIVERY: [&str; 4] = ["assign_rider", "pick_up", "complete", "cancel"];

/// Links every command's success to the commands that can follow it, through the
/// `delivery_id` of its body: what a client may do next, and what stateful fuzzing follows.
pub(crate) fn link_commands(openapi: &mut OpenApi) {
    for from in ON_A_DELIVERY.iter().chain(&["create_delivery"]) {
        for to in ON_A_DELIVERY {
            platform::openapi::link(openapi, from, to, "id", "$response.body#/delivery_id");
        }
    }
}
