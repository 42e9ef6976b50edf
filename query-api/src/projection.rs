//! Read-your-writes: a client that was told "version 5" by the command API can ask for at least
//! version 5 here, and the read waits for the projector instead of answering with older data.
//!
//! The projector runs `pg_notify('projection', 'id:version,id:version,...')` in the transaction
//! of every batch it commits, naming the deliveries it moved and their new versions (an empty
//! payload means "something moved"). One task LISTENs, remembers the latest version heard for
//! each delivery and bumps a counter. A waiting request re-reads the database only when its own
//! delivery reached the version it waits for, when an empty payload or a reconnect says
//! anything may have moved, and every 500 ms anyway. So a thousand waiting requests cost one
//! query each when they are answered, not one per projector commit.

use crate::error::ApiError;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// The channel the projector notifies after each committed batch.
pub const CHANNEL: &str = "projection";

/// The fallback re-check interval while waiting.
const RECHECK: Duration = Duration::from_millis(500);

/// Deliveries whose heard version is remembered; past this the memory starts afresh (and every
/// waiter re-reads once).
const REMEMBERED: usize = 100_000;

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
    heard: Arc<Mutex<Heard>>,
}

/// What the notifications said.
#[derive(Debug, Default)]
struct Heard {
    /// The latest version announced per delivery.
    versions: HashMap<Uuid, i64>,
    /// Moves when anything may have changed unannounced: an empty payload, a reconnect, or
    /// the memory starting afresh.
    anything: u64,
}

impl Heard {
    fn record(&mut self, payload: &str) {
        if payload.is_empty() {
            self.anything += 1;
            return;
        }
        if self.versions.len() > REMEMBERED {
            self.versions.clear();
            self.anything += 1;
        }
        for entry in payload.split(',') {
            let parsed = entry.split_once(':').and_then(|(id, version)| {
                Some((Uuid::parse_str(id).ok()?, version.parse::<i64>().ok()?))
            });
            match parsed {
                Some((id, version)) => {
                    let known = self.versions.entry(id).or_insert(version);
                    *known = (*known).max(version);
                }
                // Not ours to understand: treat it as "something moved".
                None => self.anything += 1,
            }
        }
    }
}

fn lock(heard: &Mutex<Heard>) -> MutexGuard<'_, Heard> {
    heard.lock().unwrap_or_else(PoisonError::into_inner)
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
        let heard = Arc::new(Mutex::new(Heard::default()));
        tokio::spawn(relay_notifications(listener, commits, heard.clone()));
        Ok(Self {
            commits: receiver,
            heard,
        })
    }

    /// A receiver whose value moves on every projection commit (for tests and tooling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Runs `read` until `ready` accepts its result or `wait` has passed. With `awaited`
    /// (a delivery and the version waited for), it re-reads only when a notification announces
    /// that version or says anything may have moved, and at least every 500 ms; without, after
    /// every projection commit. Reads at least once, even with no wait.
    pub async fn read_until<T, F, Fut>(
        &self,
        wait: Duration,
        awaited: Option<(Uuid, i64)>,
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
            let anything_before = lock(&self.heard).anything;
            let value = read().await?;
            if ready(&value) {
                return Ok(Waited::Ready(value));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Waited::TimedOut(value));
            }
            let recheck = (now + RECHECK).min(deadline);
            loop {
                match tokio::time::timeout_at(recheck, commits.changed()).await {
                    Ok(Ok(())) if !self.worth_reading(awaited, anything_before) => continue,
                    Ok(Ok(())) | Err(_) => break,
                    // The listener is gone: fall back to polling.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(recheck).await;
                        break;
                    }
                }
            }
        }
    }

    /// Whether the notifications since a read could have changed what it would see.
    fn worth_reading(&self, awaited: Option<(Uuid, i64)>, anything_before: u64) -> bool {
        let heard = lock(&self.heard);
        match awaited {
            None => true,
            Some(_) if heard.anything != anything_before => true,
            Some((id, version)) => heard.versions.get(&id).is_some_and(|v| *v >= version),
        }
    }
}

async fn relay_notifications(
    mut listener: PgListener,
    commits: watch::Sender<u64>,
    heard: Arc<Mutex<Heard>>,
) {
    let bump = |n: &mut u64| *n = n.wrapping_add(1);
    loop {
        let received = tokio::select! {
            // Nobody can wait any more: stop and give the connection back.
            () = commits.closed() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                lock(&heard).record(notification.payload());
                commits.send_modify(bump);
            }
            Ok(None) => {
                // Reconnected: notifications sent meanwhile are lost, so wake everyone to re-read.
                tracing::warn!("projection listener reconnected");
                lock(&heard).anything += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_announce_versions_and_anything_else_means_anything_moved() {
        let mut heard = Heard::default();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        heard.record(&format!("{a}:3,{b}:1"));
        heard.record(&format!("{a}:2"));
        assert_eq!(
            heard.versions[&a], 3,
            "an older announcement does not go back"
        );
        assert_eq!(heard.versions[&b], 1);
        assert_eq!(heard.anything, 0);
        heard.record("");
        heard.record("not-a-delivery");
        assert_eq!(heard.anything, 2);
    }
}
