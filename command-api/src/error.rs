//! The one error type of the HTTP boundary, written as `application/problem+json` (RFC 9457).

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::DeliveryError;
use serde_json::json;

/// Every way a command can fail. `code` is the stable contract; `detail` is for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("the request body does not describe a valid command: {0}")]
    InvalidBody(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than the limit")]
    BodyTooLarge,
    #[error("{0}")]
    InvalidHeader(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("no delivery has this id")]
    NotFound,
    #[error("expected version {expected}, but the delivery is at version {actual}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("a delivery with this id already exists")]
    AlreadyExists,
    #[error("{0}")]
    InvalidTransition(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedBody(_) | ApiError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::VersionConflict { .. }
            | ApiError::AlreadyExists
            | ApiError::InvalidTransition(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code; the problem `type` is derived from it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedBody(_) => "malformed-body",
            ApiError::InvalidBody(_) => "invalid-body",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::BodyTooLarge => "body-too-large",
            ApiError::InvalidHeader(_) => "invalid-header",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "delivery-not-found",
            ApiError::VersionConflict { .. } => "version-conflict",
            ApiError::AlreadyExists => "delivery-already-exists",
            ApiError::InvalidTransition(_) => "invalid-transition",
            ApiError::IdempotencyKeyReused => "idempotency-key-reused",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<DeliveryError> for ApiError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::AlreadyExists => ApiError::AlreadyExists,
            DeliveryError::NotFound => ApiError::NotFound,
            DeliveryError::RoleNotAllowed { .. } | DeliveryError::NotAssignedRider { .. } => {
                ApiError::Forbidden(error.to_string())
            }
            DeliveryError::InvalidTransition { .. } | DeliveryError::RiderAlreadyAssigned => {
                ApiError::InvalidTransition(error.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(error.into())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedBody(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let ApiError::Internal(cause) = &self {
            // Logged once, inside the request span; the client never sees internal text.
            tracing::error!(error = ?cause, "command failed");
        }
        let body = json!({
            "type": format!("https://delivery-platform.dev/problems/{}", self.code()),
            "code": self.code(),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
