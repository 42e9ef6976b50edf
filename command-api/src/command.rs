//! One command, one transaction: claim the idempotency key, load, decide, append, record the
//! verdict under the key, commit.

use crate::error::{ApiError, problem_response};
use crate::http::Shared;
use crate::idempotency::{Claim, IdempotentRequest, StoredResponse};
use crate::store::{self, Causation, StoreError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::{Actor, Command, Delivery, DeliveryId};
use serde_json::json;
use sqlx::{PgConnection, Postgres, Transaction};

/// What a command request says besides the command: preconditions and tracing ids.
pub(crate) struct CommandRequest {
    pub(crate) expected_version: Option<i64>,
    pub(crate) idempotency: Option<IdempotentRequest>,
    pub(crate) causation: Causation,
}

/// A command's verdict, reached against the history it loaded in its transaction: the same
/// request sent again with the same key gets exactly this again.
enum Verdict {
    Done {
        status: StatusCode,
        body: serde_json::Value,
    },
    /// Refused by the domain or by the client's `If-Match`; nothing was appended.
    Refused(ApiError),
}

/// Runs a command in one transaction. Every `Err` rolls the transaction back (the `?` drops
/// it), the idempotency claim with it, so a retry runs the command again.
pub(crate) async fn execute(
    state: &Shared,
    actor: Actor,
    delivery_id: DeliveryId,
    command: Command,
    request: CommandRequest,
) -> Result<Response, ApiError> {
    let mut tx = state.pool.begin().await?;
    if let Some(idempotency) = &request.idempotency
        && let Claim::Recorded(stored) = idempotency
            .claim(&mut tx, state.limits.idempotency_ttl)
            .await?
    {
        end(tx).await;
        return replay(idempotency, stored);
    }
    let verdict = decide_and_append(&mut tx, actor, delivery_id, command, &request).await?;
    let (status, body) = match &verdict {
        Verdict::Done { status, body } => (*status, body.clone()),
        Verdict::Refused(refusal) => (refusal.status_code(), refusal.problem()),
    };
    match (&request.idempotency, &verdict) {
        (Some(idempotency), _) => {
            idempotency.record(&mut tx, status.as_u16(), &body).await?;
            tx.commit().await?;
        }
        (None, Verdict::Done { .. }) => tx.commit().await?,
        (None, Verdict::Refused(_)) => end(tx).await,
    }
    match verdict {
        Verdict::Done { .. } => Ok(command_response(status, body, false)),
        Verdict::Refused(refusal) => Err(refusal),
    }
}

/// Ends a transaction that wrote nothing worth keeping. A failed rollback means the connection
/// broke, and Postgres aborts the transaction itself then: the answer stands.
async fn end(tx: Transaction<'_, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rolling back a transaction that wrote nothing");
    }
}

async fn decide_and_append(
    tx: &mut PgConnection,
    actor: Actor,
    delivery_id: DeliveryId,
    command: Command,
    request: &CommandRequest,
) -> Result<Verdict, ApiError> {
    let is_create = matches!(command, Command::Create { .. });
    let history = store::load(tx, delivery_id).await.map_err(store_error)?;
    let facts = history
        .iter()
        .map(|envelope| envelope.decode())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let delivery = Delivery::replay(&facts).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(expected) = request.expected_version
        && expected != delivery.version
    {
        return Ok(Verdict::Refused(ApiError::VersionConflict {
            expected,
            actual: delivery.version,
        }));
    }
    let events = match delivery.decide(command, &actor, Utc::now()) {
        Ok(events) => events,
        Err(refusal) => return Ok(Verdict::Refused(refusal.into())),
    };
    let head = store::Head::of(&history);
    // A conflict here is a race lost to a writer that committed first: the transaction is
    // aborted, nothing is recorded, and a retry decides again on the new history.
    let appended = match store::append_after(tx, &head, &events, request.causation).await {
        Ok(appended) => appended,
        // Two creates of one id raced: the loser sees the delivery as already there.
        Err(StoreError::VersionConflict { .. }) if is_create => {
            return Err(ApiError::AlreadyExists);
        }
        Err(StoreError::VersionConflict { version }) => {
            return Err(ApiError::VersionConflict {
                expected: request.expected_version.unwrap_or(delivery.version),
                actual: version,
            });
        }
        Err(e) => return Err(store_error(e)),
    };
    let version = appended.last().map_or(delivery.version, |a| a.version);
    let status = if is_create {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "delivery_id": delivery_id,
        "version": version,
        "events": appended,
    });
    Ok(Verdict::Done { status, body })
}

/// The recorded outcome, if this is the same request; `idempotency-key-reused` otherwise.
fn replay(request: &IdempotentRequest, stored: StoredResponse) -> Result<Response, ApiError> {
    if stored.request_hash != request.request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .filter(|status| status.as_u16() >= 200)
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "idempotency key recorded without an outcome (status {})",
                stored.status
            ))
        })?;
    if status.is_success() {
        return Ok(command_response(status, stored.body, true));
    }
    let mut response = problem_response(status, stored.body);
    mark_replayed(&mut response);
    Ok(response)
}

/// The new version goes in the ETag, so a client can send it back as If-Match.
fn command_response(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let etag = body
        .get("version")
        .and_then(serde_json::Value::as_i64)
        .and_then(|version| HeaderValue::from_str(&format!("\"{version}\"")).ok());
    let mut response = (status, Json(body)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if replayed {
        mark_replayed(&mut response);
    }
    response
}

fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert("idempotency-replayed", HeaderValue::from_static("true"));
}

/// A database failure inside the store keeps its meaning (a 503 for an outage).
fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Database(e) => e.into(),
        other => ApiError::Internal(other.into()),
    }
}
