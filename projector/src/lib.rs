//! The projector: a Kafka consumer group member that builds the query tables in the read
//! database from `delivery.events`.
//!
//! Layers: `consumer` (Kafka: reading, rebalances, broker commits; `lanes` schedules its batch
//! transactions, several at once on partitions of their own) -> `batch` (one transaction
//! per batch: partition lock, stored-offset filter, writes, offsets, NOTIFY) -> `plan` (pure:
//! which writes a batch causes, folded with the domain's own `evolve`) -> `projection` (each
//! projection's tables, DDL and writers: live upserts, and the replay's bulk loads via `copy`).
//!
//! `catalog` lists the projections; `rebuild` builds some anew from the first event beside the
//! live tables and swaps them in. `audit` checks the event store, the topic and the read model
//! against each other. `kafka` configures every consumer of the topic.
//! `failure` decides what a batch that does not commit does (retry, or split it to find the one
//! message to record as `poison`); `offsets` refuses stored offsets past the topic's end; `dlq`
//! lists, retries and skips stuck events; `monitor` has the metrics (lag, batches, stuck
//! events, rebuild progress); `cli` is the command line.

pub mod audit;
pub mod batch;
pub mod catalog;
pub mod cli;
pub mod consumer;
pub mod copy;
pub mod dlq;
pub mod failure;
mod kafka;
mod lanes;
pub mod monitor;
pub mod offsets;
pub mod plan;
pub mod poison;
pub mod projection;
pub mod rebuild;

pub use batch::{Destination, Subscription, apply_batch, apply_batch_to};
pub use consumer::{Progress, ProjectorConfig, ProjectorError, run, run_with};
pub use kafka::ConsumerSettings;
