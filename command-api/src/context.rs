//! What a command request says besides its body, read once by one extractor: who asks (the
//! bearer token), the version it expects (`If-Match`), its `Idempotency-Key`, and the
//! correlation id its events carry (`X-Correlation-Id`).

use crate::auth::{Authenticated, Tokens};
use crate::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use domain::Actor;
use uuid::Uuid;

/// The caller and the request's preconditions and ids, checked; the command comes separately.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// Who asks, proven by a bearer token.
    pub actor: Actor,
    /// The version `If-Match` expects; `None` when the header is absent or `*` ("latest").
    pub if_match: Option<i64>,
    /// The client's key for retrying safely: 1 to 255 visible ASCII characters.
    pub idempotency_key: Option<String>,
    /// Carried by every event the command appends; a new UUID v7 when the client sends none.
    pub correlation_id: Uuid,
    /// The request's path, as sent: part of what an `Idempotency-Key` stands for.
    pub path: String,
}

impl CommandContext {
    /// A context for `actor` on `path` with no preconditions, no key and a new correlation id.
    pub fn new(actor: Actor, path: impl Into<String>) -> Self {
        Self {
            actor,
            if_match: None,
            idempotency_key: None,
            correlation_id: Uuid::now_v7(),
            path: path.into(),
        }
    }
}

/// Refuses, as problems, a missing or unknown token (401) and a malformed `If-Match`,
/// `Idempotency-Key` or `X-Correlation-Id` (400 `invalid-header`).
impl<S> FromRequestParts<S> for CommandContext
where
    S: Send + Sync,
    Tokens: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(actor) = Authenticated::from_request_parts(parts, state).await?;
        let headers = &parts.headers;
        Ok(Self {
            actor,
            if_match: if_match_version(headers)?,
            idempotency_key: idempotency_key(headers)?,
            correlation_id: correlation_id(headers)?,
            path: parts.uri.path().to_owned(),
        })
    }
}

/// `If-Match: "3"` (or `3`, or `W/"3"`) expects version 3; `*` or no header means "latest".
/// The grammar is the contract's (`openapi::IF_MATCH_PATTERN`): nothing looser is accepted.
fn if_match_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidHeader("If-Match must be a version number like \"3\"".into());
    let raw = value.to_str().map_err(|_| invalid())?.trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = match tag.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(invalid)?,
        // A bare number, but not a weak one: `W/` only prefixes an entity tag.
        None if tag.len() == raw.len() => tag,
        None => return Err(invalid()),
    };
    // At most 18 digits: always an i64, and a version no delivery will reach.
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    digits.parse::<i64>().map(Some).map_err(|_| invalid())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()))
        .map(|key| Some(key.to_owned()))
        .ok_or_else(|| {
            ApiError::InvalidHeader(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
        })
}

fn correlation_id(headers: &HeaderMap) -> Result<Uuid, ApiError> {
    let Some(value) = headers.get("x-correlation-id") else {
        return Ok(Uuid::now_v7());
    };
    value
        .to_str()
        .ok()
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .ok_or_else(|| ApiError::InvalidHeader("X-Correlation-Id must be a UUID".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn if_match(value: &str) -> Option<Option<i64>> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(value).expect("a header value");
        headers.insert(header::IF_MATCH, value);
        if_match_version(&headers).ok()
    }

    #[test]
    fn if_match_takes_exactly_the_documented_grammar() {
        for (value, version) in [("\"3\"", 3), ("W/\"3\"", 3), ("3", 3), ("\"0\"", 0)] {
            assert_eq!(if_match(value), Some(Some(version)), "{value}");
        }
        assert_eq!(if_match("*"), Some(None));
        for value in [
            "\"3",
            "3\"",
            "+3",
            "-1",
            "W/3",
            "\"\"",
            "latest",
            "1234567890123456789",
        ] {
            assert_eq!(if_match(value), None, "{value} is refused");
        }
    }
}
