//! Lanes of the live projector: batch transactions that run at once, each on partitions no
//! other running batch has. The delivery id is the message key, so a delivery's events are
//! all in one partition (ADR 0001): a partition's batches apply one after the other, in
//! offset order, and so does each delivery, while deliveries of other partitions apply
//! beside them. A batch stores its partitions' offsets in its own transaction, as before.
//!
//! This is the scheduling alone, without IO: the consumer feeds it messages, starts the
//! batches it hands out and tells it when each ended.

use crate::plan::Incoming;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug)]
pub(crate) struct Lanes {
    /// Messages read and not yet handed out, per partition in offset order.
    pending: BTreeMap<i32, VecDeque<Incoming>>,
    queued: usize,
    /// Partitions with a batch running.
    busy: BTreeSet<i32>,
    running: usize,
    lanes: usize,
    batch_size: usize,
}

impl Lanes {
    pub(crate) fn new(lanes: usize, batch_size: usize) -> Lanes {
        Lanes {
            pending: BTreeMap::new(),
            queued: 0,
            busy: BTreeSet::new(),
            running: 0,
            lanes: lanes.max(1),
            batch_size: batch_size.max(1),
        }
    }

    pub(crate) fn take(&mut self, message: Incoming) {
        self.queued += 1;
        (self.pending.entry(message.partition))
            .or_default()
            .push_back(message);
    }

    /// Whether to read more: up to two batches per lane wait, so that a lane that ends finds
    /// its next batch read while the broker's next fetch is on its way.
    pub(crate) fn wants_more(&self) -> bool {
        self.queued < 2 * self.batch_size * self.lanes
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// The batches to start now, one per free lane, from partitions no running batch has.
    /// The free partitions are shared out between the free lanes, the fullest first, so that
    /// one batch does not take every partition that has a message and leave the other lanes
    /// nothing to do while it runs.
    pub(crate) fn launch(&mut self) -> Vec<Vec<Incoming>> {
        let mut started = Vec::new();
        while self.running < self.lanes {
            let mut free: Vec<(usize, i32)> = (self.pending.iter())
                .filter(|(partition, queue)| !queue.is_empty() && !self.busy.contains(partition))
                .map(|(&partition, queue)| (queue.len(), partition))
                .collect();
            if free.is_empty() {
                break;
            }
            free.sort_unstable_by(|a, b| b.cmp(a));
            let share = free.len().div_ceil(self.lanes - self.running);
            let mut batch = Vec::new();
            for (_, partition) in free.into_iter().take(share) {
                if batch.len() >= self.batch_size {
                    break;
                }
                let Some(queue) = self.pending.get_mut(&partition) else {
                    continue;
                };
                let take = queue.len().min(self.batch_size - batch.len());
                batch.extend(queue.drain(..take));
                self.busy.insert(partition);
            }
            self.queued -= batch.len();
            self.running += 1;
            started.push(batch);
        }
        self.pending.retain(|_, queue| !queue.is_empty());
        started
    }

    /// A batch handed out by `launch` ended (committed, or given up on shutdown): its
    /// partitions are free again.
    pub(crate) fn finished(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.busy.remove(&partition);
        }
        self.running = self.running.saturating_sub(1);
    }
}

/// The partitions of a batch, and the offset after each one's last message.
pub(crate) fn next_offsets(batch: &[Incoming]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for message in batch {
        let entry = next.entry(message.partition).or_insert(0);
        *entry = (*entry).max(message.offset + 1);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64) -> Incoming {
        Incoming {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    fn partitions(batch: &[Incoming]) -> BTreeSet<i32> {
        batch.iter().map(|m| m.partition).collect()
    }

    #[test]
    fn a_partition_is_in_one_running_batch_at_a_time_and_keeps_its_order() {
        let mut lanes = Lanes::new(2, 100);
        for offset in 0..3 {
            lanes.take(message(0, offset));
        }
        let first = lanes.launch();
        assert_eq!(first.len(), 1, "one partition has messages: one batch");
        // More of partition 0 arrive while its batch runs: they wait, though a lane is free.
        lanes.take(message(0, 3));
        lanes.take(message(1, 0));
        let second = lanes.launch();
        assert_eq!(second.len(), 1);
        assert_eq!(partitions(&second[0]), BTreeSet::from([1]));
        assert!(lanes.launch().is_empty(), "both lanes run");
        lanes.finished(partitions(&first[0]));
        let third = lanes.launch();
        let offsets: Vec<i64> = third[0].iter().map(|m| m.offset).collect();
        assert_eq!(
            offsets,
            [3],
            "partition 0 goes on where its last batch ended"
        );
    }

    #[test]
    fn free_partitions_are_shared_out_between_free_lanes() {
        let mut lanes = Lanes::new(2, 100);
        for partition in 0..6 {
            for offset in 0..=i64::from(partition) {
                lanes.take(message(partition, offset));
            }
        }
        let batches = lanes.launch();
        assert_eq!(batches.len(), 2);
        let (a, b) = (partitions(&batches[0]), partitions(&batches[1]));
        assert_eq!((a.len(), b.len()), (3, 3));
        assert!(a.is_disjoint(&b));
        assert_eq!(a, BTreeSet::from([3, 4, 5]), "the fullest first");
    }

    #[test]
    fn a_batch_holds_at_most_batch_size_messages_and_the_rest_waits() {
        let mut lanes = Lanes::new(1, 4);
        for offset in 0..10 {
            lanes.take(message(7, offset));
        }
        let batches = lanes.launch();
        assert_eq!(batches[0].len(), 4);
        lanes.finished([7]);
        let next = lanes.launch();
        assert_eq!(next[0].first().map(|m| m.offset), Some(4));
        assert_eq!(
            next_offsets(&next[0]),
            BTreeMap::from([(7, 8)]),
            "the offset after the batch's last message"
        );
    }

    #[test]
    fn reading_stops_at_two_batches_per_lane() {
        let mut lanes = Lanes::new(2, 3);
        for offset in 0..11 {
            lanes.take(message(0, offset));
        }
        assert!(lanes.wants_more());
        lanes.take(message(0, 11));
        assert!(!lanes.wants_more());
        lanes.launch();
        assert!(lanes.wants_more(), "a started batch makes room");
    }
}
