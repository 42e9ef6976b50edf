//! `projector audit verify`: do the three copies of every delivery's history agree?
//!
//! The event store is the truth; the topic and the read model are copies of it. For each
//! delivery (or one), the audit checks that
//! 1. **chain**: the stored hash chain is intact (`domain::verify_chain`): no stored event was
//!    changed or removed behind the immutability triggers;
//! 2. **topic**: the topic holds each stored event, equal field by field (hash included), and
//!    nothing else; identical duplicates (relay retries) are fine, differing copies are not;
//! 3. **history**: `delivery_history` holds each stored event, equal field by field;
//! 4. **state**: the `deliveries` row equals the state folded from the stored events with the
//!    domain's own `Delivery::replay`.
//!
//! Comparing copies also catches what the chain alone cannot: events removed from the end of a
//! history, and a chain rewritten from the change onward (the copies keep the old hashes).
//!
//! Run it on a quiet system, or expect the newest events (appended while it reads) to show as
//! missing from the copies that had not caught up yet. The topic is read first, whole, into
//! memory (one copy per event); the databases are then read one delivery at a time, as three
//! streams ordered by delivery id and merged.

use crate::projection::{DeliveryRow, HistoryRow};
use domain::{Delivery, DeliveryId, EventEnvelope, verify_chain};
use futures::StreamExt;
use futures::stream::{BoxStream, Peekable};
use platform::stored::{STORED_EVENT_COLUMNS, StoredEvent};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::pin::Pin;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    pub topic: String,
    /// Audit this delivery only (the topic is still read whole).
    pub delivery: Option<DeliveryId>,
    /// Give up when the topic yields nothing for this long before its end is reached.
    pub stall_timeout: Duration,
}

/// Why the audit could not finish (as opposed to what it found: that is the `Report`).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading the event store: {0}")]
    EventStore(#[source] sqlx::Error),
    #[error("reading the read model: {0}")]
    ReadModel(#[source] sqlx::Error),
    #[error("reading the topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    #[error(
        "reading the topic: nothing arrived for {waited:?}; partitions {partitions:?} not read to their end"
    )]
    Stalled {
        waited: Duration,
        partitions: Vec<i32>,
    },
    #[error("the topic reader stopped: {0}")]
    Reader(String),
}

/// Which check found a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    Chain,
    Topic,
    History,
    State,
}

impl Check {
    pub const ALL: [Check; 4] = [Check::Chain, Check::Topic, Check::History, Check::State];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Chain => "chain",
            Check::Topic => "topic",
            Check::History => "history",
            Check::State => "state",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One disagreement, printed as one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub check: Check,
    /// `None` only for a topic message that names no delivery (neither payload nor key).
    pub delivery_id: Option<DeliveryId>,
    pub version: Option<i64>,
    /// What differs, in words and values.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let check = self.check.as_str();
        match self.delivery_id {
            Some(id) => write!(f, "{check:<7} delivery {id}")?,
            None => write!(f, "{check:<7} delivery ?")?,
        }
        if let Some(version) = self.version {
            write!(f, " version {version}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What the audit found, and how much it looked at.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub deliveries: u64,
    /// Events in the event store.
    pub events: u64,
    pub topic_messages: u64,
    /// Topic messages identical to an earlier one (relay retries): harmless.
    pub topic_duplicates: u64,
    pub history_rows: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn count(&self, check: Check) -> usize {
        self.problems.iter().filter(|p| p.check == check).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        writeln!(
            f,
            "audited {} deliveries: {} stored events, {} topic messages ({} identical duplicates), \
             {} history rows",
            self.deliveries,
            self.events,
            self.topic_messages,
            self.topic_duplicates,
            self.history_rows
        )?;
        if self.is_clean() {
            writeln!(f, "no problems: event store, topic and read model agree")
        } else {
            let counts: Vec<String> = Check::ALL
                .iter()
                .map(|check| format!("{check} {}", self.count(*check)))
                .collect();
            writeln!(
                f,
                "{} problems ({})",
                self.problems.len(),
                counts.join(", ")
            )
        }
    }
}

/// Reads the topic, then compares it and the read model with the event store.
pub async fn verify(
    write: &PgPool,
    read: &PgPool,
    config: &AuditConfig,
) -> Result<Report, AuditError> {
    let topic = read_topic(config).await?;
    verify_against(write, read, topic, config.delivery).await
}

// ---------------------------------------------------------------------------------------------
// The topic
// ---------------------------------------------------------------------------------------------

/// The topic's copy of one event: the first message read for it, and any later message for
/// the same version that differs from it.
#[derive(Debug, Clone)]
pub struct TopicCopy {
    pub envelope: EventEnvelope,
    pub partition: i32,
    pub offset: i64,
    /// One description per differing later copy.
    pub conflicts: Vec<String>,
}

/// What the topic holds, by delivery and version.
#[derive(Debug, Default)]
pub struct TopicIndex {
    only: Option<DeliveryId>,
    copies: HashMap<DeliveryId, BTreeMap<i64, TopicCopy>>,
    /// Messages that are no event of any delivery, or are keyed wrongly.
    problems: Vec<Problem>,
    pub messages: u64,
    pub duplicates: u64,
}

impl TopicIndex {
    /// An empty index that keeps only `only`'s events, or every delivery's.
    pub fn new(only: Option<DeliveryId>) -> Self {
        TopicIndex {
            only,
            ..TopicIndex::default()
        }
    }

    /// Adds one message as read from the topic.
    pub fn add(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.messages += 1;
        let key = key.map(|key| String::from_utf8_lossy(key).into_owned());
        let at = format!("partition {partition} offset {offset}");
        let envelope = match payload.map(EventEnvelope::from_json) {
            Some(Ok(envelope)) => envelope,
            failed => {
                let keyed = key.as_deref().and_then(|key| DeliveryId::parse(key).ok());
                if self.only.is_none() || keyed == self.only {
                    let why = match failed {
                        Some(Err(error)) => error.to_string(),
                        _ => "no payload".to_owned(),
                    };
                    self.problems.push(Problem {
                        check: Check::Topic,
                        delivery_id: keyed,
                        version: None,
                        detail: format!("message at {at} is not an event: {why}"),
                    });
                }
                return;
            }
        };
        let id = envelope.delivery_id;
        if self.only.is_some_and(|only| only != id) {
            return;
        }
        let version = envelope.version;
        if key.as_deref() != Some(id.to_string().as_str()) {
            // Another key may put the delivery's events on several partitions, out of order.
            self.problems.push(Problem {
                check: Check::Topic,
                delivery_id: Some(id),
                version: Some(version),
                detail: format!("message at {at} is keyed {key:?}, not by its delivery id"),
            });
        }
        let versions = self.copies.entry(id).or_default();
        match versions.get_mut(&version) {
            None => {
                versions.insert(
                    version,
                    TopicCopy {
                        envelope,
                        partition,
                        offset,
                        conflicts: Vec::new(),
                    },
                );
            }
            Some(first) if first.envelope == envelope => self.duplicates += 1,
            Some(first) => {
                let fields = differences(&first.envelope, &envelope, ("first", "later"));
                first
                    .conflicts
                    .push(format!("a later copy at {at} differs: {fields}"));
            }
        }
    }

    /// Takes one delivery's copies out of the index.
    fn take(&mut self, id: DeliveryId) -> BTreeMap<i64, TopicCopy> {
        self.copies.remove(&id).unwrap_or_default()
    }
}

/// Reads the whole topic: every partition from its first offset up to the high watermark
/// fetched at the start. A plain consumer with assigned partitions: no group, no commits.
pub async fn read_topic(config: &AuditConfig) -> Result<TopicIndex, AuditError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || read_topic_blocking(&config))
        .await
        .map_err(|e| AuditError::Reader(e.to_string()))?
}

fn read_topic_blocking(config: &AuditConfig) -> Result<TopicIndex, AuditError> {
    let timeout = config.stall_timeout;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        // librdkafka wants a group id for any consumer; with assigned partitions and no
        // commits, the group is never joined.
        .set("group.id", "delivery-audit")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&config.topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == config.topic && topic.error().is_none())
        .map(|topic| topic.partitions().iter().map(|p| p.id()).collect())
        .filter(|partitions: &Vec<i32>| !partitions.is_empty())
        .ok_or_else(|| AuditError::NoTopic(config.topic.clone()))?;

    // Where each partition ends now; messages written later are not part of this audit.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&config.topic, partition, timeout)?;
        if high > low {
            assignment.add_partition_offset(&config.topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    consumer.assign(&assignment)?;
    tracing::info!(topic = %config.topic, ?ends, "reading the topic");

    let mut index = TopicIndex::new(config.delivery);
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let Some(&end) = ends.get(&partition) else {
                    continue;
                };
                if message.offset() >= end {
                    continue;
                }
                index.add(
                    partition,
                    message.offset(),
                    message.key(),
                    message.payload(),
                );
                if message.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            // librdkafka retries by itself; a broker that stays away ends in the stall below.
            Some(Err(error)) => tracing::warn!(%error, "reading the topic"),
            None => {}
        }
        if !ends.is_empty() && last_progress.elapsed() > timeout {
            return Err(AuditError::Stalled {
                waited: timeout,
                partitions: ends.keys().copied().collect(),
            });
        }
    }
    Ok(index)
}

// ---------------------------------------------------------------------------------------------
// One delivery
// ---------------------------------------------------------------------------------------------

/// One delivery as each copy holds it.
#[derive(Debug, Clone)]
pub struct Copies {
    pub delivery_id: DeliveryId,
    /// From the event store, in version order.
    pub stored: Vec<EventEnvelope>,
    pub topic: BTreeMap<i64, TopicCopy>,
    /// From `delivery_history`, in version order.
    pub history: Vec<HistoryRow>,
    /// From `deliveries`.
    pub projected: Option<DeliveryRow>,
}

/// Every disagreement between the copies of one delivery, checks in order.
pub fn check(copies: &Copies) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut report = |check: Check, version: Option<i64>, detail: String| {
        problems.push(Problem {
            check,
            delivery_id: Some(copies.delivery_id),
            version,
            detail,
        });
    };

    if let Err(broken) = verify_chain(&copies.stored) {
        report(Check::Chain, Some(broken.version()), broken.to_string());
    }

    let stored: BTreeMap<i64, &EventEnvelope> =
        copies.stored.iter().map(|e| (e.version, e)).collect();
    let versions: BTreeSet<i64> = stored.keys().chain(copies.topic.keys()).copied().collect();
    for version in versions {
        match (stored.get(&version), copies.topic.get(&version)) {
            (Some(_), None) => report(Check::Topic, Some(version), "not on the topic".into()),
            (None, Some(copy)) => report(
                Check::Topic,
                Some(version),
                format!(
                    "on the topic (partition {} offset {}) but not in the event store",
                    copy.partition, copy.offset
                ),
            ),
            (Some(event), Some(copy)) => {
                let fields = differences(*event, &copy.envelope, ("store", "topic"));
                if !fields.is_empty() {
                    report(
                        Check::Topic,
                        Some(version),
                        format!(
                            "the topic's copy (partition {} offset {}) differs: {fields}",
                            copy.partition, copy.offset
                        ),
                    );
                }
            }
            (None, None) => {}
        }
        if let Some(copy) = copies.topic.get(&version) {
            for conflict in &copy.conflicts {
                report(
                    Check::Topic,
                    Some(version),
                    format!(
                        "conflicting copies on the topic: first at partition {} offset {}, {conflict}",
                        copy.partition, copy.offset
                    ),
                );
            }
        }
    }

    let history: BTreeMap<i64, &HistoryRow> = copies
        .history
        .iter()
        .map(|row| (row.version, row))
        .collect();
    let versions: BTreeSet<i64> = stored.keys().chain(history.keys()).copied().collect();
    for version in versions {
        match (stored.get(&version), history.get(&version)) {
            (Some(_), None) => report(
                Check::History,
                Some(version),
                "not in delivery_history".into(),
            ),
            (None, Some(_)) => report(
                Check::History,
                Some(version),
                "in delivery_history but not in the event store".into(),
            ),
            (Some(event), Some(row)) => {
                let expected =
                    HistoryRow::from_envelope(event, row.kafka_partition, row.kafka_offset);
                let fields = differences(&expected, *row, ("store", "read model"));
                if !fields.is_empty() {
                    report(
                        Check::History,
                        Some(version),
                        format!("delivery_history differs: {fields}"),
                    );
                }
            }
            (None, None) => {}
        }
    }

    match (fold(&copies.stored), &copies.projected) {
        (Err((version, why)), _) => report(
            Check::State,
            version,
            format!("the stored events do not fold into a state: {why}"),
        ),
        (Ok(None), None) => {}
        (Ok(Some(expected)), None) => report(
            Check::State,
            Some(expected.version),
            "not in deliveries".into(),
        ),
        (Ok(None), Some(row)) => report(
            Check::State,
            Some(row.version),
            "in deliveries but the event store has no events".into(),
        ),
        (Ok(Some(expected)), Some(row)) => {
            let fields = differences(&expected, row, ("events", "read model"));
            if !fields.is_empty() {
                report(
                    Check::State,
                    Some(expected.version),
                    format!("deliveries differs from the folded events: {fields}"),
                );
            }
        }
    }
    problems
}

/// The `deliveries` row the stored events should have produced: the domain's fold, at the
/// last event's version and time. `Err` names the version that cannot be folded.
fn fold(stored: &[EventEnvelope]) -> Result<Option<DeliveryRow>, (Option<i64>, String)> {
    let events = stored
        .iter()
        .map(|envelope| {
            envelope
                .decode()
                .map_err(|e| (Some(envelope.version), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let delivery = Delivery::replay(&events).map_err(|e| (None, e.to_string()))?;
    let (Some(state), Some(last)) = (delivery.state, stored.last()) else {
        return Ok(None);
    };
    Ok(Some(DeliveryRow {
        state,
        version: delivery.version,
        updated_at: last.occurred_at,
    }))
}

/// The fields in which two values differ, with both values, as `field (a: x, b: y), ...`;
/// empty when they agree. Compared as serialized, so every field is seen.
fn differences<T: Serialize>(a: &T, b: &T, labels: (&str, &str)) -> String {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "cannot be compared".to_owned();
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let (left, right) = labels;
    keys.into_iter()
        .filter_map(|key| {
            let x = a.get(key).unwrap_or(&Value::Null);
            let y = b.get(key).unwrap_or(&Value::Null);
            (x != y).then(|| format!("{key} ({left}: {x}, {right}: {y})"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The databases, one delivery at a time
// ---------------------------------------------------------------------------------------------

const HISTORY: &str = "select to_jsonb(h) from delivery_history h \
     where $1::uuid is null or delivery_id = $1 order by delivery_id, version";

const PROJECTED: &str = "select to_jsonb(d) from deliveries d \
     where $1::uuid is null or delivery_id = $1 order by delivery_id";

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
    let stored_events = format!(
        "select {STORED_EVENT_COLUMNS} from events \
         where $1::uuid is null or delivery_id = $1 order by delivery_id, version"
    );
    let mut stored = Grouped::new(
        sqlx::query_as::<_, StoredEvent>(&stored_events)
            .bind(only)
            .fetch(write)
            .map(|row| row.map_err(AuditError::EventStore))
            .boxed(),
        |row: &StoredEvent| row.delivery_id,
    );
    let mut history = Grouped::new(
        sqlx::query_scalar::<_, Json<HistoryRow>>(HISTORY)
            .bind(only)
            .fetch(read)
            .map(|row| row.map(|Json(row)| row).map_err(AuditError::ReadModel))
            .boxed(),
        |row: &HistoryRow| row.delivery_id,
    );
    let mut projected = Grouped::new(
        sqlx::query_scalar::<_, Json<DeliveryRow>>(PROJECTED)
            .bind(only)
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
