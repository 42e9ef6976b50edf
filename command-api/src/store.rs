//! The event store: loading a delivery's history and appending new events together with their
//! outbox records, in the caller's transaction. Each appended event is sealed with its link in
//! the delivery's hash chain (`EventEnvelope::chain_hash`), stored and published with it.

use chrono::{DateTime, SubsecRound, Utc};
use domain::{DeliveryId, Event, EventEnvelope, SCHEMA_VERSION};
use platform::stored::StoredEvent;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended this version first.
    #[error("version {version} of the delivery was written concurrently")]
    VersionConflict { version: i64 },
    #[error("a stored event cannot be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where and when the store put an appended event.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Appended {
    pub event_id: Uuid,
    /// The event's type name, a public contract (`delivery.created`, ...).
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "delivery.created")]
    pub event_type: &'static str,
    pub version: i64,
    pub global_position: i64,
}

/// Who asked, so consumers can follow a chain of cause and effect.
#[derive(Debug, Clone, Copy)]
pub struct Causation {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

/// Where a delivery's stored history ends: the next append continues its versions and its
/// hash chain from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The last stored version (0 = no events).
    pub version: i64,
    /// The last stored event's hash (`None` with no events, or before the chain existed).
    pub hash: Option<String>,
}

impl Head {
    /// The end of a history as returned by `load`.
    pub fn of(history: &[EventEnvelope]) -> Self {
        history.last().map_or_else(Head::default, |last| Head {
            version: last.version,
            hash: last.hash.clone(),
        })
    }
}

/// Loads a delivery's full history, in version order, each event with its stored hash.
pub async fn load(
    conn: &mut PgConnection,
    delivery_id: DeliveryId,
) -> Result<Vec<EventEnvelope>, StoreError> {
    // query_as! checks at compile time that the columns are exactly StoredEvent's fields.
    let rows: Vec<StoredEvent> = sqlx::query_as!(
        StoredEvent,
        "select delivery_id, event_id, version, event_type, schema_version, payload, metadata, \
             occurred_at, recorded_at, hash \
         from events where delivery_id = $1 order by version",
        delivery_id.as_uuid(),
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| EventEnvelope::try_from(row).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

/// Appends `events` as versions `current_version + 1 ...`, reading the hash of version
/// `current_version` to continue the chain. For callers that did not load the history; those
/// that did pass its `Head` to `append_after` and save the lookup.
pub async fn append(
    conn: &mut PgConnection,
    current_version: i64,
    events: &[Event],
    causation: Causation,
) -> Result<Vec<Appended>, StoreError> {
    let hash: Option<String> = sqlx::query_scalar!(
        "select hash from events where delivery_id = $1 and version = $2",
        events.first().map(|event| event.delivery_id.as_uuid()),
        current_version,
    )
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    let head = Head {
        version: current_version,
        hash,
    };
    append_after(conn, &head, events, causation).await
}

/// Appends `events` as versions `head.version + 1 ...`, each hashed onto the one before,
/// starting from `head.hash`. A concurrent writer that took one of those versions makes this
/// fail with `VersionConflict`; the caller rolls back.
pub async fn append_after(
    conn: &mut PgConnection,
    head: &Head,
    events: &[Event],
    causation: Causation,
) -> Result<Vec<Appended>, StoreError> {
    let mut appended = Vec::with_capacity(events.len());
    let mut previous = head.hash.clone();
    for (version, event) in (head.version + 1..).zip(events) {
        let event_id = Uuid::now_v7();
        let event_type = event.change.event_type();
        let mut envelope = EventEnvelope {
            event_id,
            delivery_id: event.delivery_id,
            version,
            event_type: event_type.to_owned(),
            schema_version: SCHEMA_VERSION,
            // Postgres keeps microseconds: the stored, hashed and published times must agree.
            occurred_at: event.occurred_at.trunc_subsecs(6),
            // Replaced by the store's own time in the statement.
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
            actor: event.actor.clone(),
            correlation_id: causation.correlation_id,
            causation_id: causation.causation_id,
            data: event.change.data(),
            hash: None,
        };
        let hash = envelope.chain_hash(previous.as_deref());
        envelope.hash = Some(hash.clone());
        let headers = json!({
            "event_id": event_id.to_string(),
            "event_type": event_type,
            "version": version.to_string(),
            "schema_version": SCHEMA_VERSION.to_string(),
            "correlation_id": causation.correlation_id.to_string(),
            "causation_id": causation.causation_id.to_string(),
            "actor": format!("{}:{}", event.actor.role, event.actor.id),
        });
        // One statement per event writes the event and its outbox record; both commit or
        // neither. The outbox payload is the envelope the event store now holds, `recorded_at`
        // included.
        //
        // `recorded_at` is the database clock when the row is written (`clock_timestamp()`,
        // not the transaction's start time `now()`, which comes before the command read its
        // clock), and never earlier than `occurred_at`: should the command API's clock run
        // ahead of the database's, the event counts as recorded the moment it happened. An
        // auditor never sees an event recorded before it happened.
        let result = sqlx::query_scalar!(
            r#"
            with stored as (
                insert into events
                    (event_id, delivery_id, version, event_type, schema_version, payload,
                     metadata, occurred_at, recorded_at, hash)
                values ($1, $2, $3, $4, $5, $6, $7, $8, greatest(clock_timestamp(), $8), $11)
                returning global_position, recorded_at
            ), announced as (
                insert into outbox (id, aggregatetype, aggregateid, type, payload, headers)
                select $1, 'delivery', $2::text, $4,
                       $9::jsonb || jsonb_build_object('recorded_at', stored.recorded_at),
                       $10::jsonb || jsonb_build_object('recorded_at', stored.recorded_at::text)
                from stored
            )
            select global_position as "global_position!" from stored"#,
            event_id,
            event.delivery_id.as_uuid(),
            version,
            event_type,
            SCHEMA_VERSION,
            &envelope.data,
            sqlx::types::Json(envelope.metadata()) as _,
            envelope.occurred_at,
            sqlx::types::Json(&envelope) as _,
            &headers,
            &hash,
        )
        .fetch_one(&mut *conn)
        .await;
        let global_position = match result {
            Ok(position) => position,
            Err(sqlx::Error::Database(e))
                if e.constraint() == Some("events_delivery_version_key") =>
            {
                return Err(StoreError::VersionConflict { version });
            }
            Err(e) => return Err(e.into()),
        };
        appended.push(Appended {
            event_id,
            event_type,
            version,
            global_position,
        });
        previous = Some(hash);
    }
    Ok(appended)
}
