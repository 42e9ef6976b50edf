//! The replay: reads the topic's partitions (each from its own queue) and applies them in
//! lanes, transactions running at once on partitions of their own, never past the live
//! projector's position.

use super::{Offsets, RebuildError};
use crate::batch::{Applied, Destination, Subscription};
use crate::consumer::incoming;
use crate::failure::apply_with_retry;
use crate::plan::Incoming;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{DefaultConsumerContext, MessageStream};
use rdkafka::error::KafkaError;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::Poll;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// A partition whose events before `first_offset` are gone while the replay needs them from
/// `needed_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub partition: i32,
    pub first_offset: i64,
    pub needed_from: i64,
}

pub(super) fn describe_truncation(partitions: &[Truncated]) -> String {
    partitions
        .iter()
        .map(|t| {
            format!(
                "partition {} starts at offset {}, the replay needs it from {}",
                t.partition, t.first_offset, t.needed_from
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The partitions whose first offset (`first`, the low watermarks) is past where the replay
/// must read from: offset 0 for a fresh rebuild, its staged offset for a resumed one.
pub fn truncated(first: &Offsets, staged: &Offsets) -> Vec<Truncated> {
    first
        .iter()
        .filter_map(|(&partition, &first_offset)| {
            let needed_from = staged.get(&partition).copied().unwrap_or(0);
            (first_offset > needed_from).then_some(Truncated {
                partition,
                first_offset,
                needed_from,
            })
        })
        .collect()
}

/// One partition's queue of the replay consumer.
pub(super) struct Reader<'a> {
    pub(super) partition: i32,
    pub(super) stream: MessageStream<'a, DefaultConsumerContext>,
}

/// A transaction of the replay.
type Lane = AbortOnDropHandle<LaneDone>;

/// What an ended transaction covered, and what it applied (`None`: shut down first).
struct LaneDone {
    /// Per partition, the offset after its last message.
    next: Offsets,
    messages: usize,
    applied: Option<Applied>,
}

/// The replay's state between steps.
pub(super) struct Replay {
    pub(super) pool: PgPool,
    destination: Destination,
    subscription: Subscription,
    /// Next offset per partition, as committed in the staging schema.
    pub(super) staged: Offsets,
    /// Messages read and not yet applied, per partition in offset order. Those at or past the
    /// live position wait here until the live projector has applied them too; their partition
    /// is not read meanwhile, so this holds at most a fetch's worth of them.
    pending: BTreeMap<i32, VecDeque<Incoming>>,
    /// Transactions in flight, at most `lanes`.
    running: FuturesUnordered<Lane>,
    /// Partitions with a transaction in flight: a partition's batches apply one after the
    /// other, in offset order.
    busy: BTreeSet<i32>,
    lanes: usize,
    batch_size: usize,
    pub(super) applied: u64,
    pub(super) batches: u64,
}

/// What a step woke up for.
enum Woke {
    Finished(Result<LaneDone, tokio::task::JoinError>),
    Arrived(Incoming),
    ConsumerError(KafkaError),
    Nothing,
}

impl Replay {
    /// A replay into `destination` that goes on from the `staged` offsets.
    pub(super) fn new(
        pool: PgPool,
        destination: Destination,
        subscription: Subscription,
        staged: Offsets,
        lanes: usize,
        batch_size: usize,
    ) -> Replay {
        Replay {
            pool,
            destination,
            subscription,
            staged,
            pending: BTreeMap::new(),
            running: FuturesUnordered::new(),
            busy: BTreeSet::new(),
            lanes: lanes.max(1),
            batch_size: batch_size.max(1),
            applied: 0,
            batches: 0,
        }
    }

    /// Messages the live projector has applied and the replay has not.
    pub(super) fn gap(&self, live: &Offsets) -> i64 {
        live.iter()
            .map(|(p, next)| (next - self.staged.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    /// Messages replayed so far, counted from each partition's first offset.
    pub(super) fn position(&self, first: &Offsets) -> u64 {
        position_of(&self.staged, first)
    }

    pub(super) fn check_not_ahead(&self, live: &Offsets) -> Result<(), RebuildError> {
        for (&partition, &rebuilt) in &self.staged {
            let live = live.get(&partition).copied().unwrap_or(0);
            if rebuilt > live {
                return Err(RebuildError::AheadOfLive {
                    partition,
                    rebuilt,
                    live,
                });
            }
        }
        Ok(())
    }

    /// Whether to read more of `partition`: not while a message of it waits for the live
    /// projector, nor once two batches of it are waiting.
    fn wants(&self, partition: i32, limit: &Offsets) -> bool {
        let below = limit.get(&partition).copied().unwrap_or(0);
        self.pending.get(&partition).is_none_or(|pending| {
            pending.len() < 2 * self.batch_size && pending.back().is_none_or(|m| m.offset < below)
        })
    }

    /// Messages waiting below the live position, ready to apply.
    fn ready(&self, limit: &Offsets) -> usize {
        self.pending
            .iter()
            .map(|(&partition, pending)| ready_in(partition, pending, limit))
            .sum()
    }

    /// Starts transactions while lanes are free and messages below `limit` wait, each with
    /// partitions no running transaction has, the fullest first.
    fn launch(&mut self, limit: &Offsets, shutdown: &CancellationToken) {
        while self.running.len() < self.lanes {
            let mut candidates: Vec<(usize, i32)> = self
                .pending
                .iter()
                .filter(|(partition, _)| !self.busy.contains(partition))
                .map(|(&partition, pending)| (ready_in(partition, pending, limit), partition))
                .filter(|(ready, _)| *ready > 0)
                .collect();
            if candidates.is_empty() {
                return;
            }
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let mut batch = Vec::with_capacity(self.batch_size);
            for (ready, partition) in candidates {
                if batch.len() >= self.batch_size {
                    break;
                }
                let take = ready.min(self.batch_size - batch.len());
                if let Some(pending) = self.pending.get_mut(&partition) {
                    batch.extend(pending.drain(..take));
                }
                self.busy.insert(partition);
            }
            let (pool, destination, subscription, shutdown) = (
                self.pool.clone(),
                self.destination.clone(),
                self.subscription.clone(),
                shutdown.clone(),
            );
            self.running
                .push(AbortOnDropHandle::new(tokio::spawn(async move {
                    let applied =
                        apply_with_retry(&pool, &destination, &subscription, &batch, &shutdown)
                            .await;
                    LaneDone {
                        next: crate::lanes::next_offsets(&batch),
                        messages: batch.len(),
                        applied,
                    }
                })));
        }
    }

    /// Starts what can start, waits up to `wait` for a transaction to end or a message to
    /// arrive, then takes in everything else that is ready without waiting.
    pub(super) async fn step(
        &mut self,
        readers: &mut [Reader<'_>],
        limit: &Offsets,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), RebuildError> {
        self.launch(limit, shutdown);
        let reading = self.ready(limit) < self.read_ahead();
        let wanted: Vec<bool> = readers
            .iter()
            .map(|r| reading && self.wants(r.partition, limit))
            .collect();
        let woke = {
            let arrival = std::future::poll_fn(|cx| {
                for (reader, _) in readers.iter_mut().zip(&wanted).filter(|(_, w)| **w) {
                    if let Poll::Ready(Some(message)) = reader.stream.poll_next_unpin(cx) {
                        return Poll::Ready(message.map(|m| incoming(&m)));
                    }
                }
                Poll::Pending
            });
            let finished = async {
                match self.running.next().await {
                    Some(done) => done,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => Woke::Nothing,
                done = finished => Woke::Finished(done),
                message = arrival => match message {
                    Ok(message) => Woke::Arrived(message),
                    Err(error) => Woke::ConsumerError(error),
                },
                () = tokio::time::sleep(wait) => Woke::Nothing,
            }
        };
        match woke {
            Woke::Finished(done) => self.finished(done)?,
            Woke::Arrived(message) => self.take(message),
            Woke::ConsumerError(error) => tracing::warn!(%error, "consumer error"),
            Woke::Nothing => {}
        }
        while let Some(Some(done)) = self.running.next().now_or_never() {
            self.finished(done)?;
        }
        // Always in the same order, on purpose: reading a few partitions deep gives batches of
        // one partition each, which leaves the other partitions free for the other lanes.
        // Reading them in turn spread batches over more partitions, and measured slower with
        // a higher RSS. No partition waits for ever: the first ones run dry or reach the live
        // position, and then the next are read.
        let mut ready = self.ready(limit);
        for reader in readers.iter_mut() {
            while ready < self.read_ahead() && self.wants(reader.partition, limit) {
                match reader.stream.next().now_or_never() {
                    Some(Some(Ok(message))) => {
                        ready += 1;
                        self.take(incoming(&message));
                    }
                    Some(Some(Err(error))) => tracing::warn!(%error, "consumer error"),
                    _ => break,
                }
            }
        }
        self.launch(limit, shutdown);
        Ok(())
    }

    /// Most messages ready to apply that are read ahead: two batches per lane.
    fn read_ahead(&self) -> usize {
        2 * self.batch_size * self.lanes
    }

    fn take(&mut self, message: Incoming) {
        self.pending
            .entry(message.partition)
            .or_default()
            .push_back(message);
    }

    /// Records an ended transaction. A lane that died would leave a hole behind the offsets
    /// read past it: the replay stops instead.
    fn finished(
        &mut self,
        done: Result<LaneDone, tokio::task::JoinError>,
    ) -> Result<(), RebuildError> {
        let done = done.map_err(|e| RebuildError::Lane(e.to_string()))?;
        for partition in done.next.keys() {
            self.busy.remove(partition);
        }
        let Some(applied) = done.applied else {
            return Ok(()); // shut down: read again on resumption
        };
        for (partition, next) in done.next {
            let staged = self.staged.entry(partition).or_insert(0);
            *staged = (*staged).max(next);
        }
        self.applied += (done.messages - applied.already_consumed) as u64;
        self.batches += 1;
        Ok(())
    }

    /// Waits for the transactions in flight (after a shutdown they end without retrying).
    pub(super) async fn finish_running(&mut self) -> Result<(), RebuildError> {
        let mut outcome = Ok(());
        while let Some(done) = self.running.next().await {
            if let Err(error) = self.finished(done) {
                outcome = Err(error);
            }
        }
        outcome
    }
}

/// The messages at the head of `partition`'s pending queue that are below the live position.
fn ready_in(partition: i32, pending: &VecDeque<Incoming>, limit: &Offsets) -> usize {
    let below = limit.get(&partition).copied().unwrap_or(0);
    pending.iter().take_while(|m| m.offset < below).count()
}

/// Messages before `next` per partition, counted from each partition's first offset.
pub(super) fn position_of(next: &Offsets, first: &Offsets) -> u64 {
    first
        .iter()
        .map(|(p, low)| (next.get(p).copied().unwrap_or(*low) - low).max(0) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_no_longer_starts_where_the_replay_needs_it_is_truncated() {
        let first = Offsets::from([(0, 0), (1, 2), (2, 5), (3, 7)]);
        // Partition 2 resumes at 5 (it was replayed that far), partition 3 at 6: one lost.
        let staged = Offsets::from([(2, 5), (3, 6)]);
        assert_eq!(
            truncated(&first, &staged),
            [
                Truncated {
                    partition: 1,
                    first_offset: 2,
                    needed_from: 0
                },
                Truncated {
                    partition: 3,
                    first_offset: 7,
                    needed_from: 6
                }
            ]
        );
        assert!(truncated(&Offsets::from([(0, 0)]), &Offsets::new()).is_empty());
    }
}
