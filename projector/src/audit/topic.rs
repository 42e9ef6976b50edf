//! The topic's copy: read whole, once, into an index by delivery and version.

use super::compare::differences;
use super::{AuditConfig, AuditError, Check, Problem};
use crate::kafka::{self, Purpose};
use domain::{DeliveryId, EventEnvelope};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
    pub(super) copies: HashMap<DeliveryId, BTreeMap<i64, TopicCopy>>,
    /// Messages that are no event of any delivery, or are keyed wrongly.
    pub(super) problems: Vec<Problem>,
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
    pub(super) fn take(&mut self, id: DeliveryId) -> BTreeMap<i64, TopicCopy> {
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
    let consumer: BaseConsumer =
        kafka::consumer_config(&config.brokers, Purpose::Audit, &config.consumer_settings)
            .create()?;
    let partitions = kafka::topic_partitions(&consumer, &config.topic, timeout)?;
    if partitions.is_empty() {
        return Err(AuditError::NoTopic(config.topic.clone()));
    }

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
