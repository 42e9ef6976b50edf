//! The one error type of the HTTP boundary, written as `application/problem+json` (RFC 9457),
//! in the same shape as the command API's.

use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way a read can fail. `code` is the stable contract; `detail` is for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("no delivery has this id")]
    DeliveryNotFound,
    #[error("no rider has this id")]
    RiderNotFound,
    #[error("{0}")]
    InvalidQuery(String),
    /// The read model is behind the version a client has already seen acknowledged.
    #[error(
        "version {requested} is not projected yet (the read model is at version {projected}); \
         retry shortly"
    )]
    NotYetProjected { projected: i64, requested: i64 },
    /// A projection this read needs has not been built in the read database (a projection
    /// added later, before `projector rebuild` has built it).
    #[error("this read needs a projection that is not built yet; retry once it has been rebuilt")]
    ProjectionUnavailable,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::DeliveryNotFound | ApiError::RiderNotFound => StatusCode::NOT_FOUND,
            ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::NotYetProjected { .. } | ApiError::ProjectionUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code; the problem `type` is derived from it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::DeliveryNotFound => "delivery-not-found",
            ApiError::RiderNotFound => "rider-not-found",
            ApiError::InvalidQuery(_) => "invalid-query",
            ApiError::NotYetProjected { .. } => "not-yet-projected",
            ApiError::ProjectionUnavailable => "projection-unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub(crate) fn invalid_query(detail: impl Into<String>) -> Self {
        ApiError::InvalidQuery(detail.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            // undefined_table: the query table is not there.
            sqlx::Error::Database(e) if e.code().as_deref() == Some("42P01") => {
                ApiError::ProjectionUnavailable
            }
            _ => ApiError::Internal(error.into()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let ApiError::Internal(cause) = &self {
            // Logged once, inside the request span; the client never sees internal text.
            tracing::error!(error = ?cause, "query failed");
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
        match self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The projector commits in small batches: a second is usually plenty.
            ApiError::NotYetProjected { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
