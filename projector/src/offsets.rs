//! Stored offsets past the end of their partition. A projector resumes each partition at the
//! offset stored with the read model. If the topic was deleted and created again (or the
//! broker lost its data), that offset is beyond the partition's last message: librdkafka then
//! resets to the beginning, and the batch filter skips every message below the stored offset
//! as already applied, which is every new message, silently. So the projector checks at
//! start-up and at every assignment, and refuses to run instead.

use crate::batch::{self, Subscription};
use crate::kafka::topic_partitions;
use rdkafka::consumer::{Consumer, ConsumerContext};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WATERMARKS: Duration = Duration::from_secs(10);

/// A partition whose stored next offset is past its high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub partition: i32,
    /// The next offset the read database says to read.
    pub stored: i64,
    /// The offset the partition's next message will get.
    pub high_watermark: i64,
}

/// Why the projector refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the read database's stored offsets for group {group} on topic {topic} are past the end of \
     the topic ({}): the topic was recreated or lost messages, and every new message would be \
     skipped as already applied. Refusing to run. If the topic was recreated on purpose, delete \
     the group's rows from consumer_offsets and rebuild the read model (projector rebuild)",
    describe(.partitions)
)]
pub struct OffsetsAhead {
    pub group: String,
    pub topic: String,
    pub partitions: Vec<Ahead>,
}

fn describe(partitions: &[Ahead]) -> String {
    partitions
        .iter()
        .map(|a| {
            format!(
                "partition {}: stored {}, topic ends at {}",
                a.partition, a.stored, a.high_watermark
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The partitions whose stored offset is beyond their high watermark. A partition without a
/// stored offset, or without a known watermark, is not judged.
pub fn ahead(stored: &BTreeMap<i32, i64>, high: &BTreeMap<i32, i64>) -> Vec<Ahead> {
    stored
        .iter()
        .filter_map(|(&partition, &next)| {
            let high_watermark = *high.get(&partition)?;
            (next > high_watermark).then_some(Ahead {
                partition,
                stored: next,
                high_watermark,
            })
        })
        .collect()
}

/// The high watermarks of `partitions`, asked of the broker (blocking). A partition the
/// broker does not answer for is left out.
pub fn high_watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
) -> BTreeMap<i32, i64> {
    partitions
        .iter()
        .filter_map(|&p| match consumer.fetch_watermarks(topic, p, WATERMARKS) {
            Ok((_, high)) => Some((p, high)),
            Err(error) => {
                tracing::warn!(%error, partition = p, "cannot read the partition's end");
                None
            }
        })
        .collect()
}

/// The start-up check: every partition of the topic with a stored offset. Waits out a
/// database or broker that is not there yet (backing off); `Ok` when shut down first.
pub async fn check_at_start<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    pool: &PgPool,
    subscription: &Subscription,
    shutdown: &CancellationToken,
) -> Result<(), OffsetsAhead> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let partitions =
            topic_partitions(consumer, &subscription.topic, WATERMARKS).map_err(|e| e.to_string());
        let stored = match partitions {
            Ok(partitions) => match pool.acquire().await {
                Ok(mut conn) => batch::stored_offsets(&mut conn, subscription, &partitions)
                    .await
                    .map(|stored| (partitions, stored))
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error),
        };
        match stored {
            Ok((partitions, stored)) => {
                let high = high_watermarks(consumer, &subscription.topic, &partitions);
                let ahead = ahead(&stored, &high);
                if ahead.is_empty() {
                    return Ok(());
                }
                return Err(OffsetsAhead {
                    group: subscription.group.clone(),
                    topic: subscription.topic.clone(),
                    partitions: ahead,
                });
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "checking the stored offsets failed");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stored_offsets_past_the_end_are_ahead() {
        let stored = BTreeMap::from([(0, 5), (1, 120), (2, 7), (3, 9)]);
        // Partition 0 is caught up exactly, 2 is behind, 3 has no known end.
        let high = BTreeMap::from([(0, 5), (1, 3), (2, 40)]);
        assert_eq!(
            ahead(&stored, &high),
            [Ahead {
                partition: 1,
                stored: 120,
                high_watermark: 3
            }]
        );
    }
}
