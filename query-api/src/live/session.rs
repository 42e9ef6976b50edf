//! Dashboard sessions (ADR 0012). A browser cannot put `Authorization` on an `EventSource`,
//! and a token in the stream's URL would end up in access logs and browser history. So the
//! page trades the bearer token once, in a `POST` with the header, for a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie, which the browser sends with every stream request,
//! reconnects included. The cookie admits the live streams only, never the other reads, and
//! expires; the id is kept in this process's memory and forgotten on logout.

use crate::error::ApiError;
use crate::http::AppState;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use utoipa::IntoResponses;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, ResponseBuilder};

/// The cookie's name.
pub const COOKIE_NAME: &str = "dp_live";
/// Sessions kept at once; past it (after dropping expired ones) a new one is refused.
const MAX_SESSIONS: usize = 10_000;

/// The open sessions: id -> expiry.
pub(crate) struct Sessions {
    ttl: Duration,
    secure: bool,
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration, secure: bool) -> Self {
        Self {
            ttl,
            secure,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session id: 256 bits from the operating system's generator.
    fn create(&self) -> Result<String, ApiError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|error| ApiError::Internal(anyhow::anyhow!("no randomness: {error}")))?;
        let id = bytes.iter().fold(String::with_capacity(64), |mut id, b| {
            let _ = write!(id, "{b:02x}");
            id
        });
        let now = Instant::now();
        let mut open = self.open();
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, expires| *expires > now);
        }
        if open.len() >= MAX_SESSIONS {
            return Err(ApiError::Overloaded);
        }
        open.insert(id.clone(), now + self.ttl);
        Ok(id)
    }

    /// Whether the request carries the cookie of an open, unexpired session.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        session_id(headers).is_some_and(|id| {
            let mut open = self.open();
            match open.get(id) {
                Some(expires) if *expires > Instant::now() => true,
                Some(_) => {
                    open.remove(id);
                    false
                }
                None => false,
            }
        })
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.open().remove(id);
        }
    }

    /// The `Set-Cookie` value; `cookie_pattern` is its contract, keep the two in step.
    fn cookie(&self, value: &str, max_age: Duration) -> Result<HeaderValue, ApiError> {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
            max_age.as_secs()
        ))
        .map_err(|error| ApiError::Internal(error.into()))
    }
}

/// The spec's pattern of the `Set-Cookie` that `Sessions::cookie` writes with a value and a
/// `Max-Age` matching these patterns: the fuzzer checks every answer against it.
fn cookie_pattern(value: &str, max_age: &str) -> String {
    format!(
        "^{COOKIE_NAME}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict(; Secure)?$"
    )
}

/// A 204 that sets the cookie (`Cache-Control: no-store`, as `no_content` writes it), then
/// the problems of `problems`.
fn cookie_responses(
    description: &str,
    cookie: &str,
    pattern: String,
    problems: &[ApiError],
) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let set_cookie = HeaderBuilder::new()
        .schema(Some(text().pattern(Some(pattern))))
        .description(Some(cookie))
        .build();
    let cache_control = HeaderBuilder::new()
        .schema(Some(text().enum_values(Some(["no-store"]))))
        .description(Some("Never stored by a cache"))
        .build();
    let done = ResponseBuilder::new()
        .description(description)
        .header("Set-Cookie", set_cookie)
        .header("Cache-Control", cache_control)
        .build();
    let mut responses = platform::openapi::problem_responses(problems);
    responses.insert("204".into(), done.into());
    responses
}

/// The answers of `POST /dashboard/session`.
pub(crate) struct Opened;

impl IntoResponses for Opened {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        cookie_responses(
            "Signed in: the session cookie is set",
            "The session: a random id (256 bits, hex), `HttpOnly`, `SameSite=Strict`, for \
             `--dashboard-session-secs` (8 hours); `Secure` with `--secure-cookie`",
            cookie_pattern("[0-9a-f]{64}", "[0-9]+"),
            &[
                ApiError::Unauthorized,
                // The table of open sessions is full.
                ApiError::Overloaded,
                ApiError::Internal(anyhow::anyhow!("documented")),
            ],
        )
    }
}

/// The answers of `DELETE /dashboard/session`.
pub(crate) struct Ended;

impl IntoResponses for Ended {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        cookie_responses(
            "Signed out: the session is forgotten and its cookie cleared",
            "The cookie, emptied and expired",
            cookie_pattern("", "0"),
            &[ApiError::Internal(anyhow::anyhow!("documented"))],
        )
    }
}

/// The answers of `GET /dashboard/session`.
pub(crate) struct Checked;

impl IntoResponses for Checked {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut responses = platform::openapi::problem_responses(&[ApiError::Unauthorized]);
        let good = ResponseBuilder::new().description("The session (or the token) is good");
        responses.insert("204".into(), good.build().into());
        responses
    }
}

/// The session id in the request's `Cookie` headers, if any.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

fn no_content(cookie: HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Trade a bearer token for a dashboard session cookie
///
/// Opens a session and sets its cookie, which admits the live streams (and nothing else)
/// until it expires or `DELETE /dashboard/session` ends it. No body. A cross-site page cannot
/// call it: it would need the token, and a cross-origin request with an `Authorization`
/// header needs a CORS preflight this API never grants.
#[utoipa::path(
    post,
    path = "/dashboard/session",
    operation_id = "create_dashboard_session",
    security(("bearer" = [])),
    tag = "dashboard",
    responses(Opened)
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.tokens.admits(&headers) {
        return Err(ApiError::Unauthorized);
    }
    let sessions = state.live.sessions();
    let id = sessions.create()?;
    Ok(no_content(sessions.cookie(&id, sessions.ttl)?))
}

/// Whether the session is still good
///
/// 204 while the session cookie (or a bearer token) is good, else 401: the page asks before
/// it opens its streams, since an `EventSource` cannot see a status code.
#[utoipa::path(
    get,
    path = "/dashboard/session",
    operation_id = "check_dashboard_session",
    security(("bearer" = []), ("dashboard_session" = [])),
    tag = "dashboard",
    responses(Checked)
)]
pub(crate) async fn check() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Sign out: forget the session and clear its cookie
///
/// Needs nothing but the cookie it ends; without one (or with an unknown or expired one) it
/// only clears the cookie.
#[utoipa::path(
    delete,
    path = "/dashboard/session",
    operation_id = "end_dashboard_session",
    security((), ("dashboard_session" = [])),
    tag = "dashboard",
    responses(Ended)
)]
pub(crate) async fn end(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sessions = state.live.sessions();
    sessions.end(&headers);
    Ok(no_content(sessions.cookie("", Duration::ZERO)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn a_session_admits_its_cookie_until_it_ends_and_nothing_else() {
        let sessions = Sessions::new(Duration::from_secs(60), false);
        let id = sessions.create().expect("a session");
        assert_eq!(id.len(), 64);
        assert_ne!(id, sessions.create().expect("another"), "ids are random");
        let headers = with_cookie(&format!("theme=dark; {COOKIE_NAME}={id}"));
        assert!(sessions.admits(&headers));
        assert!(!sessions.admits(&with_cookie(&format!("{COOKIE_NAME}=x{id}"))));
        assert!(!sessions.admits(&with_cookie(&format!("other={id}"))));
        assert!(!sessions.admits(&HeaderMap::new()));
        sessions.end(&headers);
        assert!(!sessions.admits(&headers), "ended sessions are forgotten");
    }

    #[test]
    fn an_expired_session_admits_nothing() {
        let sessions = Sessions::new(Duration::ZERO, false);
        let id = sessions.create().expect("a session");
        assert!(!sessions.admits(&with_cookie(&format!("{COOKIE_NAME}={id}"))));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_when_asked() {
        let plain = Sessions::new(Duration::from_secs(60), false);
        let cookie = plain
            .cookie("abc", Duration::from_secs(60))
            .expect("cookie");
        assert_eq!(
            cookie,
            "dp_live=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        let secure = Sessions::new(Duration::from_secs(60), true);
        let cookie = secure
            .cookie("abc", Duration::from_secs(60))
            .expect("cookie");
        assert!(cookie.to_str().expect("ascii").ends_with("; Secure"));
    }
}
