//! What the two APIs' OpenAPI contracts share: the problem document's schema, error responses
//! built from each service's own `Problem` values (so a documented code is always one the
//! service really has), the bearer scheme, and the router that serves the spec and its page.
//!
//! Each API builds its spec from its handlers with `utoipa_axum::OpenApiRouter`, so a route
//! cannot be served without a spec entry; see each API's `openapi` module.

use crate::problem::{CONTENT_TYPE, Problem, TYPE_BASE};
use axum::Router;
use std::collections::BTreeMap;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// The name of the bearer security scheme every guarded operation requires.
pub const BEARER: &str = "bearer";

/// Where each API serves its spec, and its docs page (Swagger UI, served from the binary).
pub const SPEC_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

/// The problem document of `platform::problem`, as a schema (component `Problem`).
pub struct ProblemDocument;

impl PartialSchema for ProblemDocument {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "An error (RFC 9457). Match on `code` (or `type`); `detail` is for people.",
            ))
            .property(
                "type",
                text(&format!("`{TYPE_BASE}` followed by the code"))
                    .format(Some(SchemaFormat::Custom("uri".into()))),
            )
            .property("code", text("The stable machine-readable code"))
            .property("title", text("The status's reason phrase"))
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .description(Some("The HTTP status, repeated")),
            )
            .property("detail", text("What went wrong, for people"))
            .required("type")
            .required("code")
            .required("title")
            .required("status")
            .required("detail")
            .into()
    }
}

impl ToSchema for ProblemDocument {
    fn name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }
}

/// The error responses of an operation that can fail with `problems`: one response per
/// status, whose `code` is one of those the problems of that status carry. A 401 names its
/// scheme (`WWW-Authenticate`), every 503 says when to retry (`Retry-After`).
pub fn problem_responses<P: Problem>(problems: &[P]) -> BTreeMap<String, RefOr<Response>> {
    let mut codes: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for problem in problems {
        let of_status = codes.entry(problem.status().as_u16()).or_default();
        if !of_status.contains(&problem.code()) {
            of_status.push(problem.code());
        }
    }
    codes
        .into_iter()
        .map(|(status, codes)| (status.to_string(), problem_response(status, &codes).into()))
        .collect()
}

fn problem_response(status: u16, codes: &[&'static str]) -> Response {
    let listed = codes
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let narrowed = ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().copied())),
        )
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(ProblemDocument::name()))
        .item(narrowed);
    let mut response = ResponseBuilder::new()
        .description(format!("Problem: {listed}"))
        .content(
            CONTENT_TYPE,
            ContentBuilder::new().schema(Some(schema)).build(),
        );
    if status == 401 {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(["Bearer"])),
                ))
                .description(Some("The scheme to authenticate with"))
                .build(),
        );
    }
    if status == 503 {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

/// Links the successes of operation `from` to operation `to`, whose `parameter` takes the
/// value at `expression` (a runtime expression such as `$response.body#/delivery_id`): what
/// a client may do next, and what stateful fuzzing follows.
pub fn link(openapi: &mut OpenApi, from: &str, to: &str, parameter: &str, expression: &str) {
    let operations = openapi.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
    });
    for operation in operations.filter(|op| op.operation_id.as_deref() == Some(from)) {
        for (status, response) in &mut operation.responses.responses {
            if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
                let link = LinkBuilder::new()
                    .operation_id(to)
                    .parameter(parameter, expression)
                    .build();
                response.links.insert(to.to_owned(), link.into());
            }
        }
    }
}

/// What every spec has besides its paths: the problem schema and the bearer scheme.
pub fn add_shared_components(openapi: &mut OpenApi) {
    let components = openapi
        .components
        .take()
        .map_or_else(ComponentsBuilder::new, Into::into)
        .schema(ProblemDocument::name(), ProblemDocument::schema())
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from the service's configuration"))
                    .build(),
            ),
        );
    openapi.components = Some(components.build());
}

/// Whether the process is up; outside every bound and without a token.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "operations",
    responses((status = 200, description = "Up", body = String, content_type = "text/plain", example = "ok"))
)]
pub async fn health() -> &'static str {
    "ok"
}

/// This process's Prometheus metrics; outside every bound and without a token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"))
)]
pub async fn metrics() -> axum::response::Response {
    crate::service::metrics::scrape().await
}

/// `GET /openapi.json` (the spec) and `GET /docs` (Swagger UI over it, every file served from
/// the binary: the page works with no internet). Both public: a contract is no secret, and a
/// client developer reads it before having a token.
pub fn docs_router<S>(openapi: OpenApi) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, openapi).into()
}
