//! Idempotency keys: a request sent again with the same `Idempotency-Key` gets the first
//! outcome again instead of running twice.
//!
//! The key is *claimed* by the first statement of the command's transaction: an insert of the
//! key row. A concurrent duplicate's insert of the same `(actor, key)` then waits on that row
//! (Postgres makes a conflicting insert wait for the inserting transaction) until the first
//! transaction ends:
//! - it committed: the row now holds the recorded outcome, and the duplicate replays it;
//! - it rolled back (database error, timeout, a racer without the key took the version): the
//!   row is gone with it, and the duplicate's insert goes through, so it runs the command
//!   itself. A failed attempt never poisons its key.
//!
//! What is recorded is the command's *verdict*, decided against the delivery's stored history
//! inside the transaction: a success (2xx), or a refusal by the domain or by the client's own
//! precondition (403 forbidden, 404 not found, 409 invalid transition / already exists /
//! stale `If-Match`). Not recorded: whatever is refused before the key is claimed (malformed
//! request: 400, 401, 413, 415, 422; the same request gets the same answer anyway), and every
//! failure that rolls back (503 database unavailable/busy, request timeout, 500, and a 409
//! version conflict from losing a race for the version to a writer without this key).
//!
//! Keys expire after a TTL: an expired key is taken over by the next request as if new, and
//! `purge_expired` deletes expired rows in bounded batches.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::fmt::Write;
use std::time::Duration;

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
    pub status: i16,
    pub body: serde_json::Value,
}

/// The result of claiming a key at the start of a command's transaction.
pub enum Claim {
    /// The key is ours (new, or expired and taken over): run the command and record its verdict.
    Claimed,
    /// A committed attempt already recorded its outcome: replay it (if the request matches).
    Recorded(StoredResponse),
}

/// What a request asks for, in a form that two equal requests share byte for byte.
pub struct Fingerprint<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The version `If-Match` expects (`None`: absent or `*`, both mean "latest"). Part of the
    /// request: the same key with another precondition is another request.
    pub if_match: Option<i64>,
    pub body: &'a serde_json::Value,
}

impl Fingerprint<'_> {
    /// Hex SHA-256 of the canonical JSON of method, path, `If-Match` and body.
    pub fn hash(&self) -> String {
        let request = serde_json::json!({
            "method": self.method,
            "path": self.path,
            "if_match": self.if_match,
            "body": self.body,
        });
        // The hash chain's canonical writer: key order and escapes do not make two equal
        // requests differ, and a zero is a zero whatever its sign.
        let canonical = domain::canonical_json(&request);
        let mut hex = String::with_capacity(64);
        for byte in Sha256::digest(canonical.as_bytes()) {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

impl IdempotentRequest {
    pub fn new(actor: String, key: String, fingerprint: &Fingerprint<'_>) -> Self {
        Self {
            actor,
            key,
            request_hash: fingerprint.hash(),
        }
    }

    /// Claims the key in `conn`'s transaction; must be its first statement, so a duplicate
    /// waits for this transaction before doing anything. A conflicting row that is still
    /// fresh is locked (also when it is not updated), so it cannot expire under us.
    pub async fn claim(
        &self,
        conn: &mut PgConnection,
        ttl: Duration,
    ) -> Result<Claim, sqlx::Error> {
        // Records a placeholder outcome while the key is claimed. No one else ever sees it:
        // the transaction replaces it with the verdict before it commits, and rolls it back
        // otherwise.
        let claimed: Option<bool> = sqlx::query_scalar!(
            r#"
            insert into idempotency_keys as k
                (actor, key, request_hash, response_status, response_body)
            values ($1, $2, $3, 0, 'null')
            on conflict (actor, key) do update
                set request_hash = excluded.request_hash,
                    response_status = excluded.response_status,
                    response_body = excluded.response_body, created_at = excluded.created_at
                where k.created_at < now() - make_interval(secs => $4)
            returning true as "claimed!""#,
            &self.actor,
            &self.key,
            &self.request_hash,
            ttl.as_secs_f64(),
        )
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(Claim::Claimed);
        }
        // A new statement sees what the first attempt committed.
        let recorded = sqlx::query_as!(
            StoredResponse,
            "select request_hash, response_status as status, response_body as body \
             from idempotency_keys where actor = $1 and key = $2",
            &self.actor,
            &self.key,
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(Claim::Recorded(recorded))
    }

    /// Records the verdict on the claimed key, in the same transaction as the command.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let status = i16::try_from(status)
            .map_err(|_| sqlx::Error::Protocol(format!("status {status} out of range")))?;
        sqlx::query!(
            "update idempotency_keys set response_status = $3, response_body = $4 \
             where actor = $1 and key = $2",
            &self.actor,
            &self.key,
            status,
            body,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Deletes keys older than `ttl`, `batch` rows per statement (each its own short transaction,
/// skipping rows a command holds), until a batch comes back short. Returns how many it deleted.
pub async fn purge_expired(pool: &PgPool, ttl: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    let batch = batch.max(1);
    let mut deleted = 0;
    loop {
        let done = sqlx::query!(
            "with expired as ( \
                 select actor, key from idempotency_keys \
                 where created_at < now() - make_interval(secs => $1) \
                 order by created_at limit $2 for update skip locked) \
             delete from idempotency_keys k using expired e \
             where k.actor = e.actor and k.key = e.key",
            ttl.as_secs_f64(),
            batch,
        )
        .execute(pool)
        .await?
        .rows_affected();
        deleted += done;
        if i64::try_from(done).is_ok_and(|done| done < batch) {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash(if_match: Option<i64>, body: serde_json::Value) -> String {
        Fingerprint {
            method: "POST",
            path: "/deliveries/x/assign",
            if_match,
            body: &body,
        }
        .hash()
    }

    #[test]
    fn equal_requests_share_a_fingerprint_whatever_their_spelling() {
        let a = serde_json::from_str(r#"{"b": {"y": 1, "x": -0.0}, "a": [1.0, "é"]}"#);
        let b = serde_json::from_str(r#"{"a":[1.0,"\u00e9"],"b":{"x":0.0,"y":1}}"#);
        assert_eq!(hash(None, a.expect("json")), hash(None, b.expect("json")));
        assert_ne!(hash(None, json!({"a": 1.5})), hash(None, json!({"a": 1})));
        assert_ne!(hash(None, json!({})), hash(Some(1), json!({})));
        assert_ne!(hash(Some(1), json!({})), hash(Some(2), json!({})));
    }
}
