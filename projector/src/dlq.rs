//! `projector dlq`: the way out for stuck events. A delivery is stuck when one of its events
//! is poison (it cannot be decoded or applied, or the read database refuses it) or missing:
//! its later events wait in `parked_events` behind that version, in order, as in a sequenced
//! dead-letter queue. Other deliveries are not held up.
//!
//! - `list`: what is stuck, for which delivery, why, since when.
//! - `retry`: applies a delivery's stuck events again, in version order, with the code as it is
//!   now (a build that understands a new event schema, a fixed database); what still fails stays
//!   stuck with its new error.
//! - `skip`: declares the version a delivery waits for (or one poison message) skipped: the
//!   delivery moves past it without its change, and its parked successors are applied.
//!
//! Every action takes the live projector's partition locks (pausing it between two batches,
//! like a rebuild's switch), and records who, when and why in `dlq_actions`, in the same
//! transaction as its writes.

mod apply;
mod list;
mod retry;
mod skip;

pub use apply::Outcome;
pub use list::{Stuck, StuckKind, list, table};
pub use retry::retry;
pub use skip::skip;

use uuid::Uuid;

/// Who does an action, and why: both required, both recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub actor: String,
    pub reason: String,
}

impl Action {
    fn check(&self) -> Result<(), DlqError> {
        if self.actor.trim().is_empty() {
            return Err(DlqError::Missing("an actor (--actor)"));
        }
        if self.reason.trim().is_empty() {
            return Err(DlqError::Missing("a reason (--reason)"));
        }
        Ok(())
    }
}

/// What `retry` applies again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every stuck delivery and every poison message.
    All,
    Deliveries(Vec<Uuid>),
    /// One poison message, by where it was read.
    Message {
        partition: i32,
        offset: i64,
    },
}

/// What `skip` moves past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The version this delivery waits for (poison or missing).
    Delivery(Uuid),
    /// One poison message (for one whose key names no delivery, say).
    Message { partition: i32, offset: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{0} is not stuck: nothing to skip")]
    NotStuck(String),
    #[error("read database: {0}")]
    Database(#[from] sqlx::Error),
}

/// `partition:offset`, as `--message` takes it.
pub fn parse_position(text: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = text
        .split_once(':')
        .ok_or_else(|| "expected PARTITION:OFFSET, e.g. 3:1207".to_owned())?;
    let partition = partition.parse().map_err(|e| format!("partition: {e}"))?;
    let offset = offset.parse().map_err(|e| format!("offset: {e}"))?;
    Ok((partition, offset))
}
