//! The relay's metrics: whether this relay leads, how long the broker takes to acknowledge a
//! round, how rounds fail, and the outbox backlog (rows not yet published, and the age of the
//! oldest), which [`watch_backlog`] reads from the write database on a timer of its own, so a
//! standby, or a leader stuck on a broker outage, still reports it.

use super::Recovery;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// 1 while this relay holds the leader lock and publishes, 0 otherwise.
pub const LEADER: &str = "relay_leader";
/// Outbox rows not yet acknowledged by the broker.
pub const UNPUBLISHED: &str = "relay_outbox_unpublished_rows";
/// Age of the oldest unpublished outbox row (0 when there is none).
pub const OLDEST_UNPUBLISHED: &str = "relay_outbox_oldest_unpublished_age_seconds";
/// Time from queuing a message to marking it published: recorded for the oldest message of each
/// group of acknowledgements marked together.
pub const PUBLISH_DURATION: &str = "relay_publish_duration_seconds";
/// Messages the broker acknowledged (and the relay marked published).
pub const PUBLISHED: &str = "relay_published_messages_total";
/// Rounds that failed, by what the relay did about it (`recovery`).
pub const FAILURES: &str = "relay_publish_failures_total";

/// Installs the process's recorder (once) and describes the relay's metrics.
pub fn register() {
    platform::service::metrics::install();
    metrics::describe_gauge!(LEADER, "1 while this relay is the active publisher, else 0");
    metrics::describe_gauge!(UNPUBLISHED, "Outbox rows not yet published");
    metrics::describe_gauge!(
        OLDEST_UNPUBLISHED,
        metrics::Unit::Seconds,
        "Age of the oldest unpublished outbox row, 0 when there is none"
    );
    metrics::describe_histogram!(
        PUBLISH_DURATION,
        metrics::Unit::Seconds,
        "Time from queuing the oldest message of each group marked published to its marking"
    );
    metrics::describe_counter!(PUBLISHED, "Messages the broker acknowledged");
    metrics::describe_counter!(FAILURES, "Publishing rounds that failed, by recovery");
    metrics::counter!(PUBLISHED).increment(0);
    for recovery in ["retry", "replace_producer", "step_down"] {
        metrics::counter!(FAILURES, "recovery" => recovery).increment(0);
    }
}

/// Sets the leader flag while it lives, and clears it when dropped: when the relay steps down,
/// shuts down, or its task is aborted.
pub(super) struct Leading;

impl Leading {
    pub(super) fn start() -> Self {
        metrics::gauge!(LEADER).set(1.0);
        Leading
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        metrics::gauge!(LEADER).set(0.0);
    }
}

/// `messages` acknowledged and marked together, the oldest queued `took` ago.
pub(super) fn published(messages: usize, took: Duration) {
    metrics::histogram!(PUBLISH_DURATION).record(took);
    metrics::counter!(PUBLISHED).increment(messages as u64);
}

/// A round that failed, and what the relay does next.
pub(super) fn failed(recovery: Recovery) {
    let recovery = match recovery {
        Recovery::Retry => "retry",
        Recovery::ReplaceProducer => "replace_producer",
        Recovery::StepDown => "step_down",
    };
    metrics::counter!(FAILURES, "recovery" => recovery).increment(1);
}

/// Reads the outbox backlog every `every` until `shutdown`, into the backlog gauges. A failed
/// read (the database restarting) leaves the last values and is logged at debug: the relay's
/// own log already says the database is down.
pub async fn watch_backlog(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    register();
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // The partial index on unpublished rows keeps this cheap however long the outbox.
        let backlog = sqlx::query!(
            r#"select count(*) as "rows!",
                      coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "oldest!"
               from outbox where published_at is null"#
        )
        .fetch_one(&pool)
        .await;
        match backlog {
            Ok(backlog) => {
                metrics::gauge!(UNPUBLISHED).set(backlog.rows as f64);
                metrics::gauge!(OLDEST_UNPUBLISHED).set(backlog.oldest.max(0.0));
            }
            Err(error) => tracing::debug!(%error, "reading the outbox backlog failed"),
        }
    }
}
