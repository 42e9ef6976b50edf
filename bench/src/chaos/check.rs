//! The invariants checked after each trial, once the load has stopped and the stack has caught
//! up: nothing acknowledged is lost, the read model holds every stored event exactly once,
//! nothing is parked or poisoned, and `projector audit verify` is clean.

use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;
use uuid::Uuid;

use super::load::Ack;

/// Problems are listed, at most this many of a kind, with a count of the rest.
const SHOWN: usize = 5;

/// Waits until the relay has published the whole outbox and the read model holds as many
/// events as the store; errors (Postgres still restarting) are polled through.
pub async fn settle(write: &PgPool, read: &PgPool, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("no answer from the databases");
    // Caught up twice in a row with nothing new in between: a command whose client gave up
    // may still have been committing at the first look.
    let mut caught_up_at = None;
    while started.elapsed() < timeout {
        match progress(write, read).await {
            Ok((0, events, history)) if events == history => {
                if caught_up_at == Some(events) {
                    return Ok(started.elapsed());
                }
                caught_up_at = Some(events);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok((unpublished, events, history)) => {
                caught_up_at = None;
                last = format!(
                    "{unpublished} outbox rows unpublished, {events} events stored, {history} in delivery_history"
                );
            }
            Err(e) => {
                caught_up_at = None;
                last = format!("error: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "did not settle within {}s: {last}",
        timeout.as_secs()
    ))
}

async fn progress(write: &PgPool, read: &PgPool) -> sqlx::Result<(i64, i64, i64)> {
    let unpublished: i64 = sqlx::query_scalar!(
        r#"select count(*) as "count!" from outbox where published_at is null"#
    )
    .fetch_one(write)
    .await?;
    let events: i64 = sqlx::query_scalar!(r#"select count(*) as "count!" from events"#)
        .fetch_one(write)
        .await?;
    let history: i64 = sqlx::query_scalar!(r#"select count(*) as "count!" from delivery_history"#)
        .fetch_one(read)
        .await?;
    Ok((unpublished, events, history))
}

/// Collects violations of one kind, keeping the first few and counting the rest.
#[derive(Default)]
pub struct Findings {
    kinds: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Findings {
    pub fn add(&mut self, kind: &'static str, detail: String) {
        let (count, shown) = self.kinds.entry(kind).or_default();
        *count += 1;
        if shown.len() < SHOWN {
            shown.push(detail);
        }
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |(count, _)| *count)
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    pub fn print(&self) {
        for (kind, (count, shown)) in &self.kinds {
            println!("  VIOLATION {kind}: {count}");
            for detail in shown {
                println!("    {detail}");
            }
        }
    }
}

pub const LOST: &str = "acknowledged command missing from the event store";

/// (1) Every acknowledged command is in the event store, as the event its step appends.
pub async fn acknowledged(
    write: &PgPool,
    acks: &[Ack],
    findings: &mut Findings,
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = acks.iter().map(|ack| ack.delivery).collect();
    let rows = sqlx::query!(
        "select delivery_id, version, event_type from events where delivery_id = any($1)",
        &ids,
    )
    .fetch_all(write)
    .await?;
    let stored: HashMap<(Uuid, i64), String> = rows
        .into_iter()
        .map(|row| ((row.delivery_id, row.version), row.event_type))
        .collect();
    for ack in acks {
        match stored.get(&(ack.delivery, ack.version)) {
            None => findings.add(
                LOST,
                format!(
                    "{:?} of {} acknowledged as version {}",
                    ack.step, ack.delivery, ack.version
                ),
            ),
            Some(event_type) if event_type != ack.step.event_type() => findings.add(
                "acknowledged version holds another event",
                format!(
                    "{:?} of {} acknowledged as version {}, which is {event_type}",
                    ack.step, ack.delivery, ack.version
                ),
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

type Versions = BTreeMap<Uuid, Vec<(i64, Uuid)>>;

async fn versions(pool: &PgPool, table: &str) -> sqlx::Result<Versions> {
    // Dynamic: the same question of two tables (`events`, `delivery_history`), named by the caller.
    let rows: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(&format!(
        "select delivery_id, version, event_id from {table} order by delivery_id, version"
    ))
    .fetch_all(pool)
    .await?;
    let mut versions = Versions::new();
    for (delivery, version, event) in rows {
        versions.entry(delivery).or_default().push((version, event));
    }
    Ok(versions)
}

/// (2) The read model holds every stored event exactly once: per delivery the same versions
/// with the same event ids, no gaps, nothing extra; `deliveries` at the last version; and the
/// counters, which a double-applied event would skew, agree with the rows they count.
pub async fn exactly_once(
    write: &PgPool,
    read: &PgPool,
    findings: &mut Findings,
) -> sqlx::Result<u64> {
    let stored = versions(write, "events").await?;
    let projected = versions(read, "delivery_history").await?;
    let events = stored.values().map(|v| v.len() as u64).sum();
    for (delivery, history) in &stored {
        let dense = history
            .iter()
            .enumerate()
            .all(|(i, (v, _))| *v == i as i64 + 1);
        if !dense {
            findings.add("gap in the event store", format!("{delivery}: {history:?}"));
        }
        match projected.get(delivery) {
            None => findings.add(
                "delivery missing from delivery_history",
                delivery.to_string(),
            ),
            Some(copy) if copy != history => findings.add(
                "delivery_history differs from the event store",
                format!(
                    "{delivery}: stored {:?}, projected {:?}",
                    just_versions(history),
                    just_versions(copy)
                ),
            ),
            Some(_) => {}
        }
    }
    for delivery in projected.keys().filter(|d| !stored.contains_key(d)) {
        findings.add(
            "delivery_history holds a delivery the store has not",
            delivery.to_string(),
        );
    }
    let rows: HashMap<Uuid, i64> = sqlx::query!("select delivery_id, version from deliveries")
        .fetch_all(read)
        .await?
        .into_iter()
        .map(|row| (row.delivery_id, row.version))
        .collect();
    for (delivery, history) in &stored {
        let last = history.last().map_or(0, |(v, _)| *v);
        if rows.get(delivery) != Some(&last) {
            findings.add(
                "deliveries row not at the stored version",
                format!("{delivery}: stored {last}, row {:?}", rows.get(delivery)),
            );
        }
    }
    let mismatched = sqlx::query!(
        r#"select s.status, s.deliveries, count(d.delivery_id) as "rows!"
           from status_counts s left join deliveries d using (status)
           group by s.status, s.deliveries having s.deliveries <> count(d.delivery_id)"#,
    )
    .fetch_all(read)
    .await?;
    for row in mismatched {
        let (status, counted, rows) = (row.status, row.deliveries, row.rows);
        findings.add(
            "status_counts disagrees with deliveries",
            format!("{status}: counter {counted}, rows {rows}"),
        );
    }
    let mismatched = sqlx::query!(
        r#"with expected as (
               select rider_id,
                      count(*) filter (where status in ('rider_assigned', 'picked_up')) as active,
                      count(*) filter (where status = 'completed') as completed
               from deliveries where rider_id is not null group by rider_id)
           select coalesce(r.rider_id, e.rider_id) as "rider!",
                  coalesce(r.active_deliveries, 0)::bigint as "active!",
                  coalesce(e.active, 0) as "want_active!",
                  coalesce(r.completed_deliveries, 0)::bigint as "completed!",
                  coalesce(e.completed, 0) as "want_completed!"
           from riders r full join expected e using (rider_id)
           where coalesce(r.active_deliveries, 0) <> coalesce(e.active, 0)
              or coalesce(r.completed_deliveries, 0) <> coalesce(e.completed, 0)"#,
    )
    .fetch_all(read)
    .await?;
    for row in mismatched {
        let (rider, active, want_active) = (row.rider, row.active, row.want_active);
        let (completed, want_completed) = (row.completed, row.want_completed);
        findings.add(
            "riders disagrees with deliveries",
            format!("{rider}: active {active} (rows {want_active}), completed {completed} (rows {want_completed})"),
        );
    }
    Ok(events)
}

fn just_versions(history: &[(i64, Uuid)]) -> Vec<i64> {
    history.iter().map(|(v, _)| *v).collect()
}

/// (3) Nothing is parked behind a gap, recorded as poison, or skipped.
pub async fn nothing_stuck(read: &PgPool, findings: &mut Findings) -> sqlx::Result<()> {
    let parked = sqlx::query!("select delivery_id, version, applied_version from parked_events")
        .fetch_all(read)
        .await?;
    for row in parked {
        let (delivery, version, applied) = (row.delivery_id, row.version, row.applied_version);
        findings.add(
            "parked event",
            format!("{delivery} version {version} (read model at {applied})"),
        );
    }
    let poison = sqlx::query!("select kafka_partition, kafka_offset, error from poison_messages")
        .fetch_all(read)
        .await?;
    for row in poison {
        let (partition, offset, error) = (row.kafka_partition, row.kafka_offset, row.error);
        findings.add(
            "poison message",
            format!("partition {partition} offset {offset}: {error}"),
        );
    }
    // A declared skip would let the read model pass over a gap: nobody declares one here.
    let skips =
        sqlx::query!("select delivery_id, version, reason from dlq_actions where action = 'skip'")
            .fetch_all(read)
            .await?;
    for row in skips {
        let (delivery, version, reason) = (row.delivery_id, row.version, row.reason);
        findings.add(
            "skipped version",
            format!("{delivery:?} version {version:?}: {reason}"),
        );
    }
    Ok(())
}

/// (4) `projector audit verify`, the release binary, over the whole store, topic and read model.
pub async fn audit(projector: &Path, timeout: Duration, findings: &mut Findings) {
    let run = Command::new(projector)
        .args(["audit", "verify"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => findings.add(
            "audit",
            format!("did not finish within {}s", timeout.as_secs()),
        ),
        Ok(Err(e)) => findings.add(
            "audit",
            format!("could not run {}: {e}", projector.display()),
        ),
        Ok(Ok(output)) if !output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let errors = String::from_utf8_lossy(&output.stderr);
            let mut lines: Vec<&str> = text.lines().chain(errors.lines()).collect();
            let last = lines.len().saturating_sub(12);
            lines.drain(..last);
            findings.add(
                "audit",
                format!("exit {}: {}", output.status, lines.join(" | ")),
            );
        }
        Ok(Ok(_)) => {}
    }
}
