//! Read-your-writes: a client that was told "version 5" by the command API can ask for at least
//! version 5 here, and the read waits for the projector instead of answering with older data.
//!
//! The projector runs `pg_notify('projection', '')` in the transaction of every batch it
//! commits, so a notification means "the query tables moved". One task LISTENs and bumps a
//! counter; waiting requests re-read when it moves, and every 100 ms anyway, in case a
//! notification was lost (listener reconnecting) or the listener is gone.

use crate::error::ApiError;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The channel the projector notifies after each committed batch.
pub const CHANNEL: &str = "projection";

/// The fallback re-check interval while waiting.
const RECHECK: Duration = Duration::from_millis(100);

/// No read holds a request longer than this, whatever it is configured to.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// How long to wait before trying again when the listener connection cannot be re-established.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Wakes waiting reads when the projector commits. Cheap to clone; the listening task ends when
/// the last clone is dropped (or the pool is closed).
#[derive(Clone, Debug)]
pub struct ProjectionWatch {
    /// Counts the commits seen (and reconnects, after which commits may have been missed).
    commits: watch::Receiver<u64>,
}

/// The outcome of a read that waits for the projection to catch up.
#[derive(Debug)]
pub enum Waited<T> {
    /// The read saw what it waited for.
    Ready(T),
    /// Time ran out; this is the last read, which is still behind.
    TimedOut(T),
}

impl ProjectionWatch {
    /// LISTENs on [`CHANNEL`] with one of `pool`'s connections (held for the watch's lifetime)
    /// and spawns the task that wakes waiters. Must be called inside a Tokio runtime.
    pub async fn listen(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let (commits, receiver) = watch::channel(0);
        tokio::spawn(relay_notifications(listener, commits));
        Ok(Self { commits: receiver })
    }

    /// A receiver whose value moves on every projection commit (for tests and tooling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Runs `read` until `ready` accepts its result or `wait` has passed, re-reading after each
    /// projection commit and at least every 100 ms. Reads at least once, even with no wait.
    pub async fn read_until<T, F, Fut>(
        &self,
        wait: Duration,
        mut read: F,
        ready: impl Fn(&T) -> bool,
    ) -> Result<Waited<T>, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let deadline = Instant::now() + wait.min(LONGEST_WAIT);
        let mut commits = self.commits.clone();
        loop {
            // Marked seen *before* the read: a commit after this point wakes us below, and
            // one before it is visible to the read.
            commits.borrow_and_update();
            let value = read().await?;
            if ready(&value) {
                return Ok(Waited::Ready(value));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Waited::TimedOut(value));
            }
            let recheck = (now + RECHECK).min(deadline);
            match tokio::time::timeout_at(recheck, commits.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The listener is gone: fall back to polling.
                Ok(Err(_)) => tokio::time::sleep_until(recheck).await,
            }
        }
    }
}

async fn relay_notifications(mut listener: PgListener, commits: watch::Sender<u64>) {
    let bump = |n: &mut u64| *n = n.wrapping_add(1);
    loop {
        let received = tokio::select! {
            // Nobody can wait any more: stop and give the connection back.
            () = commits.closed() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(_)) => commits.send_modify(bump),
            Ok(None) => {
                // Reconnected: notifications sent meanwhile are lost, so wake everyone to re-read.
                tracing::warn!("projection listener reconnected");
                commits.send_modify(bump);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "projection listener failed; waiting reads fall back to polling");
                tokio::select! {
                    () = commits.closed() => return,
                    () = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                }
            }
        }
    }
}
