//! The command service. A command without an idempotency key loads and decides on a pooled
//! connection, then hands its event to the group commit (`group_commit`), which writes it
//! with those of concurrent commands in one statement. A command with a key runs in one
//! transaction of its own: claim the key, load, decide, append, record the verdict under the
//! key, commit; the claim is what makes its duplicates wait for it.
//!
//! It answers with an `Outcome` or an `ApiError`, never with an HTTP response: the handlers in
//! `http` map those, and tests drive the service without HTTP (`tests/service.rs`).

use crate::context::CommandContext;
use crate::error::ApiError;
use crate::group_commit::GroupCommit;
use crate::idempotency::{Claim, Fingerprint, IdempotentRequest, StoredResponse};
use crate::store::{self, Appended, Causation, Head, StoreError};
use crate::wake::OutboxWake;
use axum::http::StatusCode;
use chrono::Utc;
use domain::{Actor, Command, Delivery, DeliveryId, Event};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// Runs commands against the event store.
#[derive(Clone)]
pub struct CommandService {
    pool: PgPool,
    /// How long an `Idempotency-Key` is remembered.
    idempotency_ttl: Duration,
    /// Told after each commit that appended events, so the relay publishes them now.
    wake: OutboxWake,
    /// Writes the events of commands without a key; `None`: each in its own transaction.
    group: Option<GroupCommit>,
}

/// Group-commit writers of a `CommandService::new` (`serve` takes `--group-commit-writers`).
pub const DEFAULT_GROUP_COMMIT_WRITERS: usize = 4;

/// A command, and what the request's body says besides it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub delivery_id: DeliveryId,
    pub command: Command,
    /// The body's `expected_version`; when `If-Match` is sent too, the two must agree.
    pub expected_version: Option<i64>,
    /// The body as the client sent it (`null` for a command without one): with the path and
    /// `If-Match`, what an `Idempotency-Key` stands for.
    pub body: serde_json::Value,
}

impl Submission {
    /// `command` on `delivery_id`, from a request without a body.
    pub fn new(delivery_id: DeliveryId, command: Command) -> Self {
        Self {
            delivery_id,
            command,
            expected_version: None,
            body: serde_json::Value::Null,
        }
    }

    /// The same, from a request with `body`, which may expect a version.
    pub fn with_body(self, body: serde_json::Value, expected_version: Option<i64>) -> Self {
        Self {
            body,
            expected_version,
            ..self
        }
    }
}

/// What became of a command that did not fail.
#[derive(Debug)]
pub enum Outcome {
    /// The command ran now: its events are stored, each with its outbox record.
    Accepted(Accepted),
    /// The same request came before with this `Idempotency-Key`: its first verdict again.
    Replayed(Recorded),
}

/// A command's events, as stored. Serialized, it is the success body a client reads.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub delivery_id: DeliveryId,
    /// The delivery's version after the command: what a client sends back as `If-Match`.
    pub version: i64,
    pub events: Vec<Appended>,
    /// Whether the command created the delivery.
    #[serde(skip)]
    pub created: bool,
}

impl Accepted {
    pub fn status(&self) -> StatusCode {
        if self.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    }

    #[expect(
        clippy::unwrap_used,
        reason = "ids, integers and static type names always serialize"
    )]
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }
}

/// A verdict recorded under an `Idempotency-Key`, as first answered: a success (2xx, the
/// `Accepted` body) or a refusal (a problem document).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// A command's verdict, reached against the history it loaded in its transaction: the same
/// request sent again with the same key gets exactly this again.
enum Verdict {
    Done(Accepted),
    /// Refused by the domain or by the client's `If-Match`; nothing was appended.
    Refused(ApiError),
}

/// What a command decided against the history it loaded.
enum Decision {
    Refused(ApiError),
    Append(Decided),
}

/// Events to append after `head`.
struct Decided {
    delivery_id: DeliveryId,
    created: bool,
    head: Head,
    events: Vec<Event>,
    expected_version: Option<i64>,
}

impl Decided {
    /// The answer when `version` was taken by a writer that committed first: the command lost
    /// a race, and a retry decides again on the new history.
    fn lost_race(&self, version: i64) -> ApiError {
        if self.created {
            // Two creates of one id raced: the loser sees the delivery as already there.
            ApiError::AlreadyExists
        } else {
            ApiError::VersionConflict {
                expected: self.expected_version.unwrap_or(self.head.version),
                actual: version,
            }
        }
    }

    fn accepted(&self, events: Vec<Appended>) -> Accepted {
        Accepted {
            delivery_id: self.delivery_id,
            version: events.last().map_or(self.head.version, |a| a.version),
            events,
            created: self.created,
        }
    }
}

impl CommandService {
    pub fn new(pool: PgPool, idempotency_ttl: Duration) -> Self {
        Self::with_group_commit(pool, idempotency_ttl, DEFAULT_GROUP_COMMIT_WRITERS)
    }

    /// With `writers` group-commit statements in progress at once; 0 writes every command in
    /// a transaction of its own.
    pub fn with_group_commit(pool: PgPool, idempotency_ttl: Duration, writers: usize) -> Self {
        Self {
            wake: OutboxWake::new(pool.clone()),
            group: (writers > 0).then(|| GroupCommit::new(pool.clone(), writers)),
            pool,
            idempotency_ttl,
        }
    }

    /// The group commit that writes commands without a key, unless it is off.
    pub fn group_commit(&self) -> Option<&GroupCommit> {
        self.group.as_ref()
    }

    /// Runs a command. Without a key, its event goes to the group commit; with one, it runs in
    /// one transaction, and every `Err` before the commit rolls it back (the `?` drops it), the
    /// idempotency claim with it, so a retry runs the command again; a refusal is an `Err`
    /// too, recorded first under the key.
    pub async fn handle(
        &self,
        context: &CommandContext,
        submission: Submission,
    ) -> Result<Outcome, ApiError> {
        let expected_version = agreed_version(context.if_match, submission.expected_version)?;
        let idempotency = context.idempotency_key.as_ref().map(|key| {
            let fingerprint = Fingerprint {
                // Every command is a POST; the method stays in the fingerprint so that keys
                // recorded before keep their hashes.
                method: "POST",
                path: &context.path,
                if_match: context.if_match,
                body: &submission.body,
            };
            let actor = &context.actor;
            IdempotentRequest::new(
                format!("{}:{}", actor.role, actor.id),
                key.clone(),
                &fingerprint,
            )
        });
        // The request itself is the cause of the events it appends.
        let causation = Causation {
            correlation_id: context.correlation_id,
            causation_id: Uuid::now_v7(),
        };
        let Some(idempotency) = idempotency else {
            let accepted = self
                .run_unkeyed(&context.actor, submission, expected_version, causation)
                .await?;
            self.wake.committed();
            return Ok(Outcome::Accepted(accepted));
        };
        let mut tx = self.pool.begin().await?;
        if let Claim::Recorded(stored) = idempotency.claim(&mut tx, self.idempotency_ttl).await? {
            end(tx).await;
            return replay(&idempotency, stored).map(Outcome::Replayed);
        }
        let verdict = decide_and_append(
            &mut tx,
            &context.actor,
            submission,
            expected_version,
            causation,
        )
        .await?;
        let (status, body) = match &verdict {
            Verdict::Done(accepted) => (accepted.status(), accepted.body()),
            Verdict::Refused(refusal) => (refusal.status_code(), refusal.problem()),
        };
        idempotency.record(&mut tx, status.as_u16(), &body).await?;
        tx.commit().await?;
        match verdict {
            Verdict::Done(accepted) => {
                self.wake.committed();
                Ok(Outcome::Accepted(accepted))
            }
            Verdict::Refused(refusal) => Err(refusal),
        }
    }
}

impl CommandService {
    /// A command without an idempotency key. With the group commit on, it is decided on a
    /// pooled connection (no transaction: the unique version decides a race), then written
    /// by the group commit. Otherwise, or for a command of several events (none today, and
    /// it must be stored whole or not at all), it runs in a transaction of its own.
    async fn run_unkeyed(
        &self,
        actor: &Actor,
        submission: Submission,
        expected_version: Option<i64>,
        causation: Causation,
    ) -> Result<Accepted, ApiError> {
        let Some(group) = &self.group else {
            let mut tx = self.pool.begin().await?;
            let accepted = match decide(&mut tx, actor, submission, expected_version).await? {
                Decision::Refused(refusal) => return Err(refusal),
                Decision::Append(decided) => {
                    decided.accepted(append(&mut tx, &decided, causation).await?)
                }
            };
            tx.commit().await?;
            return Ok(accepted);
        };
        let decision = {
            let mut conn = self.pool.acquire().await?;
            decide(&mut conn, actor, submission, expected_version).await?
        };
        let decided = match decision {
            Decision::Refused(refusal) => return Err(refusal),
            Decision::Append(decided) => decided,
        };
        let mut prepared = store::prepare(&decided.head, &decided.events, causation);
        if prepared.len() == 1 {
            let event = prepared.remove(0);
            let mut appended = event.appended(0);
            return match group.append(event).await? {
                Some(position) => {
                    appended.global_position = position;
                    Ok(decided.accepted(vec![appended]))
                }
                None => Err(decided.lost_race(appended.version)),
            };
        }
        let mut tx = self.pool.begin().await?;
        let appended = append(&mut tx, &decided, causation).await?;
        tx.commit().await?;
        Ok(decided.accepted(appended))
    }
}

/// The version the client expects, from `If-Match` or the body; both must agree when both
/// are given.
fn agreed_version(if_match: Option<i64>, in_body: Option<i64>) -> Result<Option<i64>, ApiError> {
    match (if_match, in_body) {
        (Some(a), Some(b)) if a != b => Err(ApiError::InvalidHeader(
            "If-Match and expected_version disagree".into(),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Ends a transaction that wrote nothing worth keeping. A failed rollback means the connection
/// broke, and Postgres aborts the transaction itself then: the answer stands.
async fn end(tx: Transaction<'_, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rolling back a transaction that wrote nothing");
    }
}

/// Loads the delivery, checks the client's expected version, and lets the domain decide.
async fn decide(
    conn: &mut PgConnection,
    actor: &Actor,
    submission: Submission,
    expected_version: Option<i64>,
) -> Result<Decision, ApiError> {
    let Submission {
        delivery_id,
        command,
        ..
    } = submission;
    let created = matches!(command, Command::Create { .. });
    let history = store::load(conn, delivery_id).await.map_err(store_error)?;
    let facts = history
        .iter()
        .map(|envelope| envelope.decode())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let delivery = Delivery::replay(&facts).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(expected) = expected_version
        && expected != delivery.version
    {
        return Ok(Decision::Refused(ApiError::VersionConflict {
            expected,
            actual: delivery.version,
        }));
    }
    match delivery.decide(command, actor, Utc::now()) {
        Ok(events) => Ok(Decision::Append(Decided {
            delivery_id,
            created,
            head: Head::of(&history),
            events,
            expected_version,
        })),
        Err(refusal) => Ok(Decision::Refused(refusal.into())),
    }
}

/// Appends a decision's events in the caller's transaction. A conflict aborts it: the caller
/// rolls back.
async fn append(
    tx: &mut PgConnection,
    decided: &Decided,
    causation: Causation,
) -> Result<Vec<Appended>, ApiError> {
    match store::append_after(tx, &decided.head, &decided.events, causation).await {
        Ok(appended) => Ok(appended),
        Err(StoreError::VersionConflict { version }) => Err(decided.lost_race(version)),
        Err(e) => Err(store_error(e)),
    }
}

/// `decide`, then `append` in the same transaction: the verdict an idempotency key records.
async fn decide_and_append(
    tx: &mut PgConnection,
    actor: &Actor,
    submission: Submission,
    expected_version: Option<i64>,
    causation: Causation,
) -> Result<Verdict, ApiError> {
    match decide(tx, actor, submission, expected_version).await? {
        Decision::Refused(refusal) => Ok(Verdict::Refused(refusal)),
        Decision::Append(decided) => {
            let appended = append(tx, &decided, causation).await?;
            Ok(Verdict::Done(decided.accepted(appended)))
        }
    }
}

/// The recorded verdict, if this is the same request; `idempotency-key-reused` otherwise.
fn replay(request: &IdempotentRequest, stored: StoredResponse) -> Result<Recorded, ApiError> {
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
    Ok(Recorded {
        status,
        body: stored.body,
    })
}

/// A database failure inside the store keeps its meaning (a 503 for an outage).
fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Database(e) => e.into(),
        other => ApiError::Internal(other.into()),
    }
}
