//! Errors as `application/problem+json` (RFC 9457), in the one shape both HTTP services answer
//! with:
//!
//! ```json
//! {"type": "https://delivery-platform.dev/problems/<code>", "code": "<code>",
//!  "title": "<the status's reason phrase>", "status": 409, "detail": "<for people>"}
//! ```
//!
//! `code` (and the `type` derived from it) is the stable contract clients match on; `detail`
//! is for people and may change. Each service keeps its own error enum (one per boundary) and
//! implements `Problem` for it; this module only renders.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::fmt::Display;

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Where the problem types live; a problem's `type` is this followed by its `code`.
pub const TYPE_BASE: &str = "https://delivery-platform.dev/problems/";

/// An error a client can be told about. Its `Display` text is the problem's `detail`: it must
/// never carry internal text (a database message, a stack of causes).
pub trait Problem: Display {
    fn status(&self) -> StatusCode;
    /// The stable machine-readable code.
    fn code(&self) -> &'static str;
    /// Seconds a client should wait before retrying, sent as `Retry-After`.
    fn retry_after(&self) -> Option<u32> {
        None
    }
}

/// The problem document: the body a client reads, and what a service may record to answer
/// the same again later (see `response`).
pub fn document(problem: &impl Problem) -> Value {
    let status = problem.status();
    json!({
        "type": format!("{TYPE_BASE}{}", problem.code()),
        "code": problem.code(),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": problem.to_string(),
    })
}

/// The response for `problem`.
pub fn respond(problem: &impl Problem) -> Response {
    response(problem.status(), &document(problem), problem.retry_after())
}

/// A problem response from a status and a document, as built by `document` or as recorded
/// earlier. A 401 names the scheme to authenticate with (RFC 9110 `WWW-Authenticate`): both
/// services take bearer tokens.
pub fn response(status: StatusCode, document: &Value, retry_after: Option<u32>) -> Response {
    let mut response = (status, document.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Refusal {
        #[error("no such thing")]
        Missing,
        #[error("come back later")]
        Busy,
        #[error("who are you?")]
        Stranger,
    }

    impl Problem for Refusal {
        fn status(&self) -> StatusCode {
            match self {
                Refusal::Missing => StatusCode::NOT_FOUND,
                Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
                Refusal::Stranger => StatusCode::UNAUTHORIZED,
            }
        }
        fn code(&self) -> &'static str {
            match self {
                Refusal::Missing => "thing-not-found",
                Refusal::Busy => "busy",
                Refusal::Stranger => "unauthorized",
            }
        }
        fn retry_after(&self) -> Option<u32> {
            matches!(self, Refusal::Busy).then_some(3)
        }
    }

    #[test]
    fn a_problem_has_the_shared_shape() {
        assert_eq!(
            document(&Refusal::Missing),
            json!({
                "type": "https://delivery-platform.dev/problems/thing-not-found",
                "code": "thing-not-found",
                "title": "Not Found",
                "status": 404,
                "detail": "no such thing",
            })
        );
    }

    #[test]
    fn the_headers_follow_the_problem() {
        let busy = respond(&Refusal::Busy);
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "3");
        assert!(!busy.headers().contains_key(header::WWW_AUTHENTICATE));
        let stranger = respond(&Refusal::Stranger);
        assert_eq!(stranger.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(!stranger.headers().contains_key(header::RETRY_AFTER));
    }
}
