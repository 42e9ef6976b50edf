//! Stored responses for requests sent with an `Idempotency-Key`.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// A request's identity: the caller's key and a fingerprint of what was asked.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub actor: String,
    pub key: String,
    pub request_hash: String,
}

/// A response recorded for a key.
pub struct StoredResponse {
    pub request_hash: String,
    pub status: u16,
    pub body: serde_json::Value,
}

impl IdempotentRequest {
    /// The fingerprint covers method, path and the parsed body (serde_json orders object keys,
    /// so formatting and key order do not make two equal requests differ).
    pub fn new(
        actor: String,
        key: String,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update(b"\n");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(body.to_string().as_bytes());
        let request_hash = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            actor,
            key,
            request_hash,
        }
    }

    pub async fn find(&self, pool: &PgPool) -> Result<Option<StoredResponse>, sqlx::Error> {
        let row: Option<(String, i16, serde_json::Value)> = sqlx::query_as(
            "select request_hash, response_status, response_body from idempotency_keys \
             where actor = $1 and key = $2",
        )
        .bind(&self.actor)
        .bind(&self.key)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(request_hash, status, body)| StoredResponse {
            request_hash,
            status: u16::try_from(status).unwrap_or(500),
            body,
        }))
    }

    /// Records the response in the command's transaction. Returns false when a concurrent
    /// request with the same key got there first (the caller then rolls back and replays it).
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "insert into idempotency_keys (actor, key, request_hash, response_status, response_body) \
             values ($1, $2, $3, $4, $5) on conflict do nothing",
        )
        .bind(&self.actor)
        .bind(&self.key)
        .bind(&self.request_hash)
        .bind(i16::try_from(status).unwrap_or(500))
        .bind(body)
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}
