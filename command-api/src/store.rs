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
/// fail with `VersionConflict`; the caller rolls back (a command of several events may have
/// written some of them).
pub async fn append_after(
    conn: &mut PgConnection,
    head: &Head,
    events: &[Event],
    causation: Causation,
) -> Result<Vec<Appended>, StoreError> {
    let prepared = prepare(head, events, causation);
    let positions = write(conn, &prepared).await?;
    prepared
        .iter()
        .zip(positions)
        .map(|(event, position)| match position {
            Some(global_position) => Ok(event.appended(global_position)),
            None => Err(StoreError::VersionConflict {
                version: event.version,
            }),
        })
        .collect()
}

/// An event sealed for the store: its version, its link in the hash chain, the envelope the
/// outbox publishes and its Kafka headers. Built without IO, written by `write`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub event_id: Uuid,
    pub delivery_id: Uuid,
    pub version: i64,
    pub event_type: &'static str,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    occurred_at: DateTime<Utc>,
    /// The envelope as published, without `recorded_at` (the statement adds the store's).
    envelope: serde_json::Value,
    headers: serde_json::Value,
    hash: String,
}

impl Prepared {
    pub fn appended(&self, global_position: i64) -> Appended {
        Appended {
            event_id: self.event_id,
            event_type: self.event_type,
            version: self.version,
            global_position,
        }
    }
}

/// Seals `events` as versions `head.version + 1 ...`, each hashed onto the one before,
/// starting from `head.hash`.
#[expect(
    clippy::unwrap_used,
    reason = "an envelope and its metadata are strings, numbers and JSON values: they always serialize"
)]
pub fn prepare(head: &Head, events: &[Event], causation: Causation) -> Vec<Prepared> {
    let mut prepared = Vec::with_capacity(events.len());
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
        prepared.push(Prepared {
            event_id,
            delivery_id: event.delivery_id.as_uuid(),
            version,
            event_type,
            metadata: serde_json::to_value(envelope.metadata()).unwrap(),
            occurred_at: envelope.occurred_at,
            envelope: serde_json::to_value(&envelope).unwrap(),
            payload: envelope.data,
            headers,
            hash: hash.clone(),
        });
        previous = Some(hash);
    }
    prepared
}

/// Writes `events` and their outbox records in one statement: one transaction of its own
/// outside a transaction, and one WAL flush for all of them (group commit), or a part of the
/// caller's. Returns each event's global position, or `None` where its version was already
/// taken: by a writer that committed first, or by an earlier event of `events` itself (two
/// commands that decided from the same version). A version taken by a writer still in
/// progress makes the statement wait for it, like any unique key.
pub async fn write(
    conn: &mut PgConnection,
    events: &[Prepared],
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let column = |f: fn(&Prepared) -> serde_json::Value| events.iter().map(f).collect::<Vec<_>>();
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let delivery_ids: Vec<Uuid> = events.iter().map(|e| e.delivery_id).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    let types: Vec<String> = events.iter().map(|e| e.event_type.to_owned()).collect();
    let occurred: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    let hashes: Vec<String> = events.iter().map(|e| e.hash.clone()).collect();
    // `recorded_at` is the database clock when the row is written (`clock_timestamp()`, not
    // the transaction's start time `now()`, which comes before the command read its clock),
    // and never earlier than `occurred_at`: should the command API's clock run ahead of the
    // database's, the event counts as recorded the moment it happened. An auditor never sees
    // an event recorded before it happened. The outbox payload is the envelope the event
    // store now holds, `recorded_at` included; its records follow the events' versions.
    let stored = sqlx::query!(
        r#"
        with input as (
            select * from unnest($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::jsonb[],
                                 $6::jsonb[], $7::timestamptz[], $8::jsonb[], $9::jsonb[],
                                 $10::text[])
                as t(event_id, delivery_id, version, event_type, payload, metadata,
                     occurred_at, envelope, headers, hash)
        ), stored as (
            insert into events
                (event_id, delivery_id, version, event_type, schema_version, payload,
                 metadata, occurred_at, recorded_at, hash)
            select event_id, delivery_id, version, event_type, $11, payload, metadata,
                   occurred_at, greatest(clock_timestamp(), occurred_at), hash
            from input
            on conflict on constraint events_delivery_version_key do nothing
            returning event_id, global_position, recorded_at
        ), announced as (
            insert into outbox (id, aggregatetype, aggregateid, type, payload, headers)
            select stored.event_id, 'delivery', input.delivery_id::text, input.event_type,
                   input.envelope || jsonb_build_object('recorded_at', stored.recorded_at),
                   input.headers || jsonb_build_object('recorded_at', stored.recorded_at::text)
            from stored join input using (event_id)
            order by input.delivery_id, input.version
        )
        select event_id as "event_id!", global_position as "global_position!" from stored"#,
        &event_ids,
        &delivery_ids,
        &versions,
        &types,
        &column(|e| e.payload.clone()),
        &column(|e| e.metadata.clone()),
        &occurred,
        &column(|e| e.envelope.clone()),
        &column(|e| e.headers.clone()),
        &hashes,
        SCHEMA_VERSION,
    )
    .fetch_all(conn)
    .await?;
    let positions: std::collections::HashMap<Uuid, i64> = stored
        .into_iter()
        .map(|row| (row.event_id, row.global_position))
        .collect();
    Ok(event_ids
        .iter()
        .map(|id| positions.get(id).copied())
        .collect())
}
