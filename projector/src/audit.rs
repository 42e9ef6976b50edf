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

mod compare;
mod database;
mod topic;

pub use compare::{Copies, check};
pub use database::verify_against;
pub use topic::{TopicCopy, TopicIndex, read_topic};

use crate::kafka::ConsumerSettings;
use domain::DeliveryId;
use rdkafka::error::KafkaError;
use sqlx::PgPool;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// librdkafka settings over ours (TLS, SASL, tuning).
    pub consumer_settings: ConsumerSettings,
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
