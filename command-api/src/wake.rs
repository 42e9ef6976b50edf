//! Wakes the relay after commands commit, without a `NOTIFY` inside their transactions.
//!
//! Postgres serializes the commits of every transaction that notifies (they take one global
//! lock to queue the notification), so a trigger that notified from each command's
//! transaction capped the write path (ADR 0013). Instead, each committed command only raises a
//! flag in memory, and one task per process sends `NOTIFY outbox` on its own, outside every
//! command's transaction. Signals that arrive while a notification is on its way fold into
//! the next one, so under load this process notifies about once per database round trip
//! rather than once per command.
//!
//! The relay still polls (`RELAY_POLL_MS`) for rows whose notification was lost: a process
//! that died between its commit and its notification, or a notification sent while the relay
//! was reconnecting.

use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// The channel the relay listens on; the relay and the notifier share this one name.
pub const CHANNEL: &str = "outbox";

/// A handle on this process's notifier. Cloning shares it; the notifier ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct OutboxWake {
    pool: PgPool,
    /// Started on the first signal, so that building an app needs no runtime.
    pending: Arc<OnceLock<mpsc::Sender<()>>>,
}

impl OutboxWake {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            pending: Arc::new(OnceLock::new()),
        }
    }

    /// Says that outbox rows were committed. Never waits: if a notification is already
    /// pending, this one is folded into it.
    pub fn committed(&self) {
        let pending = self.pending.get_or_init(|| {
            // One slot: a full channel means a notification is already pending.
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(notify_on_signal(self.pool.clone(), receiver));
            sender
        });
        // Full: already pending, nothing to add. Closed: the notifier is gone with its runtime.
        let _ = pending.try_send(());
    }
}

/// Sends one `NOTIFY` per pending signal until every handle is dropped. A failed notification
/// (the database restarting) is only logged: the relay's poll finds those rows.
async fn notify_on_signal(pool: PgPool, mut pending: mpsc::Receiver<()>) {
    while pending.recv().await.is_some() {
        let notified = sqlx::query!("select pg_notify($1, '')", CHANNEL)
            .execute(&pool)
            .await;
        if let Err(error) = notified {
            tracing::debug!(%error, "waking the relay failed; it polls for the rows");
        }
    }
}
