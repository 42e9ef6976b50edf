//! Bearer tokens from configuration. Every read is open to every token holder: the query API
//! serves the operations view, not a per-customer one.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashSet;
use std::sync::Arc;

/// Shorter tokens are too easy to guess.
const MIN_TOKEN_LEN: usize = 8;

/// The configured tokens. Deliberately not `Debug`: they are secrets.
#[derive(Clone)]
pub struct Tokens(Arc<HashSet<String>>);

/// Why a token list could not be read. Never contains a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("no tokens given (expected TOKEN[,TOKEN...])")]
    Empty,
    #[error("token entry {index}: tokens must be at least {MIN_TOKEN_LEN} characters")]
    TooShort { index: usize },
    #[error("token entry {index}: tokens cannot contain whitespace")]
    Whitespace { index: usize },
}

impl Tokens {
    /// Parses `TOKEN[,TOKEN...]`; blanks around commas are ignored.
    pub fn parse(raw: &str) -> Result<Self, TokensError> {
        let mut tokens = HashSet::new();
        for (index, token) in raw
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .enumerate()
        {
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(TokensError::TooShort { index });
            }
            if token.chars().any(char::is_whitespace) {
                return Err(TokensError::Whitespace { index });
            }
            tokens.insert(token.to_owned());
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self(Arc::new(tokens)))
    }

    /// A list that admits no one: the router the spec is read from serves nothing.
    pub(crate) fn none() -> Self {
        Self(Arc::new(HashSet::new()))
    }

    /// Whether the request carries `Authorization: Bearer <one of the tokens>`.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, token)| self.0.contains(token.trim()))
    }
}

/// Refuses, before any extractor or query runs, every request without a known token.
pub async fn require_token(
    State(tokens): State<Tokens>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if tokens.admits(request.headers()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn any_configured_token_is_admitted_and_nothing_else() {
        let tokens = Tokens::parse(" reader-token-1 ,reader-token-2,").expect("valid list");
        assert!(tokens.admits(&bearer("Bearer reader-token-1")));
        assert!(tokens.admits(&bearer("bearer reader-token-2")));
        assert!(!tokens.admits(&bearer("Bearer reader-token-3")));
        assert!(!tokens.admits(&bearer("Basic reader-token-1")));
        assert!(!tokens.admits(&bearer("reader-token-1")));
        assert!(!tokens.admits(&HeaderMap::new()));
    }

    #[test]
    fn short_blank_and_empty_token_lists_are_refused() {
        assert!(matches!(
            Tokens::parse("long-enough,short"),
            Err(TokensError::TooShort { index: 1 })
        ));
        assert!(matches!(
            Tokens::parse("has a space"),
            Err(TokensError::Whitespace { index: 0 })
        ));
        assert!(matches!(Tokens::parse(" , "), Err(TokensError::Empty)));
    }
}
