//! The projector: a Kafka consumer group member that builds the query tables in the read
//! database from `delivery.events`.
//!
//! Layers: `consumer` (Kafka: batches, rebalances, broker commits) -> `store` (one transaction
//! per batch: partition lock, stored-offset filter, writes, offsets) -> `projection` (pure:
//! which writes a batch causes, folded with the domain's own `evolve`).
//!
//! `catalog` names the projections and their tables; `rebuild` builds one anew from the first
//! event beside the live tables and swaps it in.
//! `audit` checks the event store, the topic and the read model against each other.
//! `failure` decides what a batch that does not commit does (retry, or split it to find the one
//! message to record as `poison`); `offsets` refuses stored offsets past the topic's end; `dlq`
//! lists, retries and skips stuck events; `cli` is the command line.

pub mod audit;
pub mod catalog;
pub mod cli;
pub mod consumer;
pub mod copy;
pub mod dlq;
pub mod failure;
pub mod offsets;
pub mod poison;
pub mod projection;
pub mod rebuild;
pub mod store;

pub use consumer::{Progress, ProjectorConfig, ProjectorError, run};
pub use store::{Subscription, Target, apply_batch, apply_batch_to};
