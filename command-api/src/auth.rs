//! Bearer tokens from configuration, each standing for one actor.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use domain::{Actor, Role};
use std::collections::HashMap;
use std::sync::Arc;

/// The configured tokens. Deliberately not `Debug`: they are secrets.
#[derive(Clone, Default)]
pub struct Tokens(Arc<HashMap<String, Actor>>);

/// Why a token list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("token entry {index}: {reason} (expected TOKEN=ROLE:ID, comma separated)")]
pub struct TokensError {
    index: usize,
    reason: &'static str,
}

impl Tokens {
    /// Parses `TOKEN=ROLE:ID[,TOKEN=ROLE:ID...]`, e.g. `s3cret=dispatcher:desk-1,r42=rider:rider-42`.
    pub fn parse(raw: &str) -> Result<Self, TokensError> {
        let mut tokens = HashMap::new();
        for (index, entry) in raw
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let fail = |reason| TokensError { index, reason };
            let (token, actor) = entry.split_once('=').ok_or(fail("missing '='"))?;
            let (role, id) = actor.split_once(':').ok_or(fail("missing ':'"))?;
            let role = Role::parse(role).ok_or(fail("unknown role"))?;
            if token.len() < 8 {
                return Err(fail("tokens must be at least 8 characters"));
            }
            if id.is_empty() {
                return Err(fail("empty actor id"));
            }
            tokens.insert(token.to_owned(), Actor::new(role, id));
        }
        Ok(Self(Arc::new(tokens)))
    }

    fn actor(&self, token: &str) -> Option<&Actor> {
        self.0.get(token)
    }
}

/// The caller, proven by a bearer token.
pub struct Authenticated(pub Actor);

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Tokens: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = <Tokens as axum::extract::FromRef<S>>::from_ref(state);
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        tokens
            .actor(token.trim())
            .cloned()
            .map(Authenticated)
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_and_refuses_malformed_entries() {
        let tokens = Tokens::parse("dispatch-token=dispatcher:desk-1, rider-token=rider:r-42")
            .expect("valid list");
        assert_eq!(
            tokens.actor("rider-token"),
            Some(&Actor::new(Role::Rider, "r-42"))
        );
        assert!(Tokens::parse("short=admin:root").is_err());
        assert!(Tokens::parse("longenough=emperor:x").is_err());
        assert!(Tokens::parse("longenough").is_err());
    }
}
