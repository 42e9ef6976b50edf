//! The dashboard page at `/dashboard` (and `/`, which redirects there): counts by status,
//! active riders and a feed of the latest events, updated live from `/stats/stream` and
//! `/events/stream`. Self-contained: three files compiled into the binary, no CDN, no build
//! step. The page holds no data until the viewer signs in with a token (ADR 0012), so it is
//! served to anyone; its Content-Security-Policy lets it load nothing but itself.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::BTreeMap;
use utoipa::IntoResponses;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Where the page is; `/` sends browsers there.
const PAGE_PATH: &str = "/dashboard";

/// Scripts, styles and connections from this origin only; no inline script, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";
/// Browsers revalidate, so a new build's files are never mixed with an old one's.
const CACHING: &str = "no-cache";
const NO_SNIFF: &str = "nosniff";

/// The dashboard lives at `/dashboard`
#[utoipa::path(
    get,
    path = "/",
    operation_id = "get_root",
    tag = "dashboard",
    responses(Redirected)
)]
pub(crate) async fn root() -> Redirect {
    Redirect::to(PAGE_PATH)
}

/// The dashboard page
///
/// Served to anyone: it holds no data until the viewer signs in with a token.
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "get_dashboard",
    tag = "dashboard",
    responses(Page)
)]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The dashboard's script
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    operation_id = "get_dashboard_script",
    tag = "dashboard",
    responses(Script)
)]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet
#[utoipa::path(
    get,
    path = "/dashboard/app.css",
    operation_id = "get_dashboard_style",
    tag = "dashboard",
    responses(Style)
)]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (CACHE_CONTROL, HeaderValue::from_static(CACHING)),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static(NO_SNIFF),
        ),
    ];
    (headers, body).into_response()
}

/// A header that always has the value `value`.
fn fixed(value: &str, description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([value])),
        ))
        .description(Some(description))
        .build()
}

/// The one answer of an asset route: the file as `media_type`, with the headers `asset` sets.
fn asset_responses(
    media_type: &str,
    description: &str,
) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let text = ObjectBuilder::new().schema_type(Type::String);
    let file = ResponseBuilder::new()
        .description(description)
        .content(media_type, ContentBuilder::new().schema(Some(text)).build())
        .header(
            "Content-Security-Policy",
            fixed(
                POLICY,
                "Nothing but this origin; no inline script, no framing",
            ),
        )
        .header("Cache-Control", fixed(CACHING, "Revalidate before use"))
        .header("X-Content-Type-Options", fixed(NO_SNIFF, "Never sniffed"));
    BTreeMap::from([("200".to_owned(), file.build().into())])
}

/// The answer of `GET /`: 303 to the page.
pub(crate) struct Redirected;

impl IntoResponses for Redirected {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let to = ResponseBuilder::new()
            .description("To the dashboard page")
            .header("Location", fixed(PAGE_PATH, "The dashboard page"));
        BTreeMap::from([("303".to_owned(), to.build().into())])
    }
}

/// The answer of `GET /dashboard`.
pub(crate) struct Page;

impl IntoResponses for Page {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        asset_responses("text/html", "The page")
    }
}

/// The answer of `GET /dashboard/app.js`.
pub(crate) struct Script;

impl IntoResponses for Script {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        asset_responses("text/javascript", "The script")
    }
}

/// The answer of `GET /dashboard/app.css`.
pub(crate) struct Style;

impl IntoResponses for Style {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        asset_responses("text/css", "The style sheet")
    }
}
