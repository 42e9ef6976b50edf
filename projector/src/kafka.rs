//! The projector's Kafka consumers, configured in one place. Three read the event topic: the
//! live projector (a consumer group member), a rebuild's replay and the audit (both with
//! assigned partitions, in no group). Every one keeps its own offsets, never librdkafka. A
//! fourth, the metrics' watcher, only asks for metadata and watermarks.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use std::fmt;
use std::time::Duration;

/// librdkafka properties an operator sets (`--consumer-setting KEY=VALUE`), applied over the
/// projector's own to every consumer it makes: TLS and SASL for a real cluster, or fetch
/// tuning for a broker that differs from the defaults' assumptions. Their values may be
/// secrets (`sasl.password`): `Debug` shows only the keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConsumerSettings(Vec<(String, String)>);

impl ConsumerSettings {
    pub fn new(settings: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(settings.into_iter().collect())
    }

    fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.0 {
            config.set(key, value);
        }
    }
}

impl fmt::Debug for ConsumerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| format!("{key}=…")))
            .finish()
    }
}

/// Which consumer, and so how it reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose<'a> {
    /// The live projector, a member of `group`.
    Live { group: &'a str },
    /// A rebuild's replay: the whole topic, as fast as the lanes take it.
    Replay,
    /// The audit: the whole topic once.
    Audit,
    /// The metrics' watcher: metadata and watermarks only, it reads no message.
    Monitor,
}

/// The consumer configuration for `purpose`, on `brokers`, with the operator's `settings`
/// over ours.
pub(crate) fn consumer_config(
    brokers: &str,
    purpose: Purpose<'_>,
    settings: &ConsumerSettings,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    match purpose {
        Purpose::Live { group } => config.set("group.id", group),
        // librdkafka wants a group id for any consumer; with assigned partitions and no
        // commits, the group is never joined.
        Purpose::Replay => config.set("group.id", "projector-rebuild"),
        Purpose::Audit => config.set("group.id", "delivery-audit"),
        Purpose::Monitor => config.set("group.id", "projector-monitor"),
    };
    // Offsets are ours to store (the live projector's and a replay's in the read database,
    // the audit's nowhere) and commit (after the database).
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    match purpose {
        Purpose::Live { .. } => {
            // A partition with no stored offset is read from its first event.
            config
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "10000")
                // Kafka answers a fetch as soon as data arrives, so on Kafka this only bounds
                // an idle consumer's wait. nisshi looks for records at 0, 1/2, 3/4 ... of the
                // wait, so a record that arrives during a fetch is read up to half the wait
                // later; and its durable storage reads records for only part of the wait, so
                // too short a wait starves catch-up. On the default stack (100,000-event
                // backlog, 2 lanes): 20 ms 12,208 events/s, 50 ms 22,012, 100 ms 22,576;
                // accepted -> visible p50 at 500/s: 60 ms at 50, 75 ms at 100.
                .set("fetch.wait.max.ms", "50");
        }
        Purpose::Replay => {
            config
                // Throughput only: nobody waits on a rebuild's latency, and the longer wait
                // lets the durable broker read more per fetch (see the live one's).
                .set("fetch.wait.max.ms", "100")
                // A partition whose queue was full is fetched again this soon once it has
                // room (librdkafka's default waits 1 s: the lanes starved for a third of a
                // replay).
                .set("fetch.queue.backoff.ms", "5")
                // Bounds prefetched messages (per partition, as each has its queue;
                // librdkafka's default is 64 MiB) and the size of a fetch: memory stays flat
                // however long the topic.
                .set("queued.max.messages.kbytes", "4096")
                .set("fetch.max.bytes", "4194304")
                .set("max.partition.fetch.bytes", "1048576");
        }
        Purpose::Audit | Purpose::Monitor => {}
    }
    settings.apply(&mut config);
    config
}

/// The partitions of `topic`, as the broker's metadata lists them (blocking, up to
/// `timeout`). Empty when the topic does not exist.
pub(crate) fn topic_partitions<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok((metadata.topics().iter())
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Drops `consumer` on a thread of its own that nobody waits for. rdkafka's drop of a consumer
/// with a group id polls until librdkafka reports it closed, which has been seen never to
/// happen (rust-rdkafka#509): a rebuild once hung at 0% CPU right after finding its topic
/// recreated. That must hold up neither the caller nor its runtime.
pub(crate) fn drop_detached<T: Send + 'static>(consumer: T) {
    let closing = std::thread::Builder::new()
        .name("kafka-consumer-drop".into())
        .spawn(move || drop(consumer));
    if let Err(error) = closing {
        tracing::warn!(%error, "no thread to drop a Kafka consumer on: dropped here");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &ClientConfig) -> Vec<(String, String)> {
        (config.config_map().into_iter())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = (expected.iter())
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn each_purpose_gets_exactly_its_settings() {
        let none = ConsumerSettings::default();
        let common = [
            ("bootstrap.servers", "b:9092"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ];
        let live = consumer_config("b:9092", Purpose::Live { group: "g" }, &none);
        let mut expected = common.to_vec();
        expected.extend([
            ("group.id", "g"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            ("fetch.wait.max.ms", "50"),
        ]);
        assert_eq!(settings(&live), pairs(&expected));

        let replay = consumer_config("b:9092", Purpose::Replay, &none);
        let mut expected = common.to_vec();
        expected.extend([
            ("group.id", "projector-rebuild"),
            ("fetch.wait.max.ms", "100"),
            ("fetch.queue.backoff.ms", "5"),
            ("queued.max.messages.kbytes", "4096"),
            ("fetch.max.bytes", "4194304"),
            ("max.partition.fetch.bytes", "1048576"),
        ]);
        assert_eq!(settings(&replay), pairs(&expected));

        let audit = consumer_config("b:9092", Purpose::Audit, &none);
        let mut expected = common.to_vec();
        expected.push(("group.id", "delivery-audit"));
        assert_eq!(settings(&audit), pairs(&expected));

        let monitor = consumer_config("b:9092", Purpose::Monitor, &none);
        let mut expected = common.to_vec();
        expected.push(("group.id", "projector-monitor"));
        assert_eq!(settings(&monitor), pairs(&expected));
    }

    #[test]
    fn the_operators_settings_go_over_ours_on_every_consumer() {
        let settings = ConsumerSettings::new([
            ("fetch.wait.max.ms".to_owned(), "250".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]);
        for purpose in [
            Purpose::Live { group: "g" },
            Purpose::Replay,
            Purpose::Audit,
            Purpose::Monitor,
        ] {
            let config = consumer_config("b:9092", purpose, &settings);
            assert_eq!(config.get("fetch.wait.max.ms"), Some("250"), "{purpose:?}");
            assert_eq!(
                config.get("security.protocol"),
                Some("SASL_SSL"),
                "{purpose:?}"
            );
            // Ours that the operator did not name stay.
            assert_eq!(
                config.get("enable.auto.commit"),
                Some("false"),
                "{purpose:?}"
            );
        }
    }

    #[test]
    fn a_settings_value_stays_secret_in_debug() {
        let settings = ConsumerSettings::new([("sasl.password".to_owned(), "hunter2".to_owned())]);
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("sasl.password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
