//! The databases, one delivery at a time: the event store, `delivery_history` and
//! `deliveries` read as three streams ordered by delivery id and merged with the topic's index.

use super::compare::{Copies, check};
use super::topic::TopicIndex;
use super::{AuditError, Check, Problem, Report};
use crate::plan::{DeliveryRow, HistoryRow};
use domain::{DeliveryId, EventEnvelope};
use futures::StreamExt;
use futures::stream::{BoxStream, Peekable};
use platform::stored::StoredEvent;
use sqlx::PgPool;
use sqlx::types::Json;
use std::pin::Pin;
use uuid::Uuid;

/// Rows ordered by delivery id, taken one delivery at a time.
struct Grouped<'a, T> {
    rows: Peekable<BoxStream<'a, Result<T, AuditError>>>,
    id: fn(&T) -> Uuid,
}

impl<'a, T> Grouped<'a, T> {
    fn new(rows: BoxStream<'a, Result<T, AuditError>>, id: fn(&T) -> Uuid) -> Self {
        Grouped {
            rows: rows.peekable(),
            id,
        }
    }

    /// The delivery of the next row.
    async fn peek(&mut self) -> Result<Option<Uuid>, AuditError> {
        match Pin::new(&mut self.rows).peek().await {
            None => return Ok(None),
            Some(Ok(row)) => return Ok(Some((self.id)(row))),
            Some(Err(_)) => {}
        }
        // The next item is an error: take it to return it.
        match self.rows.next().await {
            Some(Err(error)) => Err(error),
            _ => Ok(None),
        }
    }

    /// Every row of delivery `id`, if it is next.
    async fn take(&mut self, id: Uuid) -> Result<Vec<T>, AuditError> {
        let mut group = Vec::new();
        while self.peek().await? == Some(id) {
            if let Some(row) = self.rows.next().await {
                group.push(row?);
            }
        }
        Ok(group)
    }
}

/// Compares an already read topic and the read model with the event store, for every
/// delivery any of them names (or `only`). Streams from one connection of `write` and two of
/// `read` at once: a read pool of one connection would wait on itself.
pub async fn verify_against(
    write: &PgPool,
    read: &PgPool,
    mut topic: TopicIndex,
    only: Option<DeliveryId>,
) -> Result<Report, AuditError> {
    let only = only.map(|id| id.as_uuid());
    // query_as! checks at compile time that the columns are exactly StoredEvent's fields.
    let mut stored = Grouped::new(
        sqlx::query_as!(
            StoredEvent,
            "select delivery_id, event_id, version, event_type, schema_version, payload, \
                 metadata, occurred_at, recorded_at, hash \
             from events where $1::uuid is null or delivery_id = $1 \
             order by delivery_id, version",
            only,
        )
        .fetch(write)
        .map(|row| row.map_err(AuditError::EventStore))
        .boxed(),
        |row: &StoredEvent| row.delivery_id,
    );
    let mut history = Grouped::new(
        sqlx::query_scalar!(
            r#"select to_jsonb(h) as "row!: Json<HistoryRow>" from delivery_history h
               where $1::uuid is null or delivery_id = $1 order by delivery_id, version"#,
            only,
        )
        .fetch(read)
        .map(|row| row.map(|Json(row)| row).map_err(AuditError::ReadModel))
        .boxed(),
        |row: &HistoryRow| row.delivery_id,
    );
    let mut projected = Grouped::new(
        sqlx::query_scalar!(
            r#"select to_jsonb(d) as "row!: Json<DeliveryRow>" from deliveries d
               where $1::uuid is null or delivery_id = $1 order by delivery_id"#,
            only,
        )
        .fetch(read)
        .map(|row| row.map(|Json(row)| row).map_err(AuditError::ReadModel))
        .boxed(),
        |row: &DeliveryRow| row.state.delivery_id.as_uuid(),
    );

    let mut report = Report {
        topic_messages: topic.messages,
        topic_duplicates: topic.duplicates,
        problems: std::mem::take(&mut topic.problems),
        ..Report::default()
    };
    loop {
        let next = [
            stored.peek().await?,
            history.peek().await?,
            projected.peek().await?,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(id) = next else { break };
        let delivery_id = DeliveryId::from_uuid(id);
        let mut events = Vec::new();
        for row in stored.take(id).await? {
            let version = row.version;
            match EventEnvelope::try_from(row) {
                Ok(envelope) => events.push(envelope),
                Err(unreadable) => report.problems.push(Problem {
                    check: Check::Chain,
                    delivery_id: Some(delivery_id),
                    version: Some(version),
                    detail: unreadable.to_string(),
                }),
            }
        }
        let copies = Copies {
            delivery_id,
            stored: events,
            topic: topic.take(delivery_id),
            history: history.take(id).await?,
            projected: projected.take(id).await?.into_iter().next(),
        };
        report.deliveries += 1;
        report.events += copies.stored.len() as u64;
        report.history_rows += copies.history.len() as u64;
        report.problems.extend(check(&copies));
    }

    // Whatever is left on the topic belongs to deliveries neither database knows.
    let mut unknown: Vec<DeliveryId> = topic.copies.keys().copied().collect();
    unknown.sort_unstable();
    for delivery_id in unknown {
        let copies = Copies {
            delivery_id,
            stored: Vec::new(),
            topic: topic.take(delivery_id),
            history: Vec::new(),
            projected: None,
        };
        report.deliveries += 1;
        report.problems.extend(check(&copies));
    }
    Ok(report)
}
