//! `projector dlq list`: what is stuck, for which delivery, why, since when.

use super::DlqError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// Cannot be decoded or applied, or the read database refused it.
    Poison,
    /// Waits behind an earlier version that is poison or missing.
    Parked,
}

/// One stuck message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stuck {
    pub kind: StuckKind,
    /// None for a poison message whose key names no delivery.
    pub delivery_id: Option<Uuid>,
    /// None for a poison message that did not decode.
    pub version: Option<i64>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// When it was parked or recorded as poison.
    pub since: DateTime<Utc>,
    pub reason: String,
}

type PoisonRow = (Option<Uuid>, Option<i64>, i32, i64, DateTime<Utc>, String);
type ParkedRow = (Uuid, i64, i32, i64, DateTime<Utc>, i64);

/// Everything stuck on `topic` (or only `delivery`'s), poison first, each delivery in version
/// order.
pub async fn list(
    pool: &PgPool,
    topic: &str,
    delivery: Option<Uuid>,
) -> Result<Vec<Stuck>, DlqError> {
    let mut tx = pool.begin().await?;
    // One snapshot: a poison and the events parked behind it are seen together.
    sqlx::query!("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let poison: Vec<PoisonRow> = sqlx::query!(
        "select delivery_id, version, kafka_partition, kafka_offset, received_at, error
         from poison_messages where topic = $1 and ($2::uuid is null or delivery_id = $2)
         order by delivery_id nulls last, version, kafka_partition, kafka_offset",
        topic,
        delivery,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.delivery_id,
            r.version,
            r.kafka_partition,
            r.kafka_offset,
            r.received_at,
            r.error,
        )
    })
    .collect();
    let parked: Vec<ParkedRow> = sqlx::query!(
        r#"select p.delivery_id, p.version, p.kafka_partition, p.kafka_offset, p.parked_at,
                  coalesce(d.version, 0) as "applied_version!"
           from parked_events p left join deliveries d using (delivery_id)
           where $1::uuid is null or p.delivery_id = $1
           order by p.delivery_id, p.version"#,
        delivery,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.delivery_id,
            r.version,
            r.kafka_partition,
            r.kafka_offset,
            r.parked_at,
            r.applied_version,
        )
    })
    .collect();
    // `version is not null` in the statement: the macro cannot see it, so `!` says it.
    let skipped: HashSet<(Uuid, i64)> = sqlx::query!(
        r#"select delivery_id as "delivery_id!", version as "version!" from dlq_actions
           where action = 'skip' and version is not null and delivery_id = any($1)"#,
        &parked.iter().map(|p| p.0).collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.delivery_id, r.version))
    .collect();
    tx.commit().await?;

    // Where each delivery's poison is: by version when known, else any undecodable one.
    let mut poison_at: HashMap<(Uuid, Option<i64>), (i32, i64)> = HashMap::new();
    for (id, version, partition, offset, ..) in &poison {
        if let Some(id) = id {
            poison_at
                .entry((*id, *version))
                .or_insert((*partition, *offset));
        }
    }
    let mut stuck: Vec<Stuck> = poison
        .into_iter()
        .map(
            |(delivery_id, version, partition, offset, since, error)| Stuck {
                kind: StuckKind::Poison,
                delivery_id,
                version,
                kafka_partition: partition,
                kafka_offset: offset,
                since,
                reason: error,
            },
        )
        .collect();
    for (id, version, partition, offset, since, applied) in parked {
        let mut waits_for = applied + 1;
        while skipped.contains(&(id, waits_for)) {
            waits_for += 1;
        }
        let behind = match (
            poison_at.get(&(id, Some(waits_for))),
            poison_at.get(&(id, None)),
        ) {
            (Some((p, o)), _) => format!("version {waits_for} is poison (at {p}:{o})"),
            (None, Some((p, o))) => format!(
                "version {waits_for} has not arrived; the delivery has an undecodable message \
                 at {p}:{o}"
            ),
            (None, None) => format!("version {waits_for} has not arrived"),
        };
        stuck.push(Stuck {
            kind: StuckKind::Parked,
            delivery_id: Some(id),
            version: Some(version),
            kafka_partition: partition,
            kafka_offset: offset,
            since,
            reason: format!("waits for version {waits_for}: {behind}"),
        });
    }
    Ok(stuck)
}

/// `list` as a table for a terminal.
pub fn table(stuck: &[Stuck]) -> String {
    if stuck.is_empty() {
        return "nothing is stuck\n".to_owned();
    }
    let rows: Vec<[String; 6]> = stuck
        .iter()
        .map(|s| {
            [
                format!("{:?}", s.kind).to_lowercase(),
                s.delivery_id.map_or("-".into(), |id| id.to_string()),
                s.version.map_or("-".into(), |v| v.to_string()),
                format!("{}:{}", s.kafka_partition, s.kafka_offset),
                s.since.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                // One line per message, however long or many-lined the error.
                s.reason
                    .replace(['\n', '\r'], " ")
                    .chars()
                    .take(200)
                    .collect(),
            ]
        })
        .collect();
    let header = ["KIND", "DELIVERY", "VERSION", "AT", "SINCE", "REASON"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let (poison, parked) = stuck.iter().fold((0, 0), |(a, b), s| match s.kind {
        StuckKind::Poison => (a + 1, b),
        StuckKind::Parked => (a, b + 1),
    });
    out.push_str(&format!("{poison} poison, {parked} parked\n"));
    out
}
