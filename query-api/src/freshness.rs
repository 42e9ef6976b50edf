//! Read-your-writes: a client that was told "version 5" by the command API can ask for at least
//! version 5 here, and the read waits for the projector instead of answering with older data.
//!
//! The projector notifies `platform::read_model::CHANNEL` in the transaction of every batch it
//! commits, naming the deliveries it moved and their new versions (the payload format and its
//! parser are `platform::read_model`'s; an empty payload means "something moved"). One task
//! LISTENs, remembers the latest version heard for each delivery and bumps a counter. A waiting
//! request re-reads the database only when its own delivery reached the version it waits for,
//! when an empty payload or a reconnect says anything may have moved, and every 500 ms anyway.
//! So a thousand waiting requests cost one query each when they are answered, not one per
//! projector commit.
//!
//! Waiting is bounded: at most `max_waiters` reads wait at once (past that, 503 at once), and a
//! waiter holds no pooled connection between its reads. The listening task itself survives a
//! database restart: see `listener`.

use crate::error::ApiError;
use crate::listener::{Heard, ListenerStatus, keep_listening, lock};
use sqlx::PgPool;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

/// The fallback re-check interval while waiting.
const RECHECK: Duration = Duration::from_millis(500);

/// No read holds a request longer than this, whatever it is configured to.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// How many reads may wait at once unless configured (`--max-waiters`). A waiter holds no
/// pooled connection, only a task and a slot, so this is sized for read-your-writes at the
/// command API's own rate: at 500 commands/s on the default stack, each read waiting about
/// 100 ms for the projector, 64 slots shed hundreds of reads every 20 s (bench pipeline).
pub const DEFAULT_MAX_WAITERS: usize = 512;

/// Wakes waiting reads when the projector commits. Cheap to clone; the listening task ends when
/// the last clone is dropped (or the pool is closed).
#[derive(Clone, Debug)]
pub struct FreshnessWatch {
    /// Counts the commits seen (and reconnects, after which commits may have been missed).
    commits: watch::Receiver<u64>,
    heard: Arc<Mutex<Heard>>,
    /// One permit per read allowed to wait; shared by every clone.
    waiters: Arc<Semaphore>,
    max_waiters: usize,
    status: Arc<ListenerStatus>,
    /// Every payload heard, as sent, for the live views (`live`); an empty one after a
    /// reconnect ("anything may have moved").
    announcements: broadcast::Sender<Arc<str>>,
}

/// Payloads buffered for a live-view reader that falls behind.
const ANNOUNCEMENTS_BUFFER: usize = 1024;

/// The outcome of a read that waits for the projection to catch up.
#[derive(Debug)]
pub enum Waited<T> {
    /// The read saw what it waited for.
    Ready(T),
    /// Time ran out; this is the last read, which is still behind.
    TimedOut(T),
}

impl FreshnessWatch {
    /// LISTENs on the projector's channel with one of `pool`'s connections (held for the
    /// watch's lifetime, replaced when it is lost) and spawns the task that wakes waiters. Fails
    /// only if the first LISTEN fails: a process that cannot reach its database at start-up
    /// says so. Must be called inside a Tokio runtime.
    pub async fn listen(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let listener = crate::listener::connect(pool).await?;
        let (commits, receiver) = watch::channel(0);
        let heard = Arc::new(Mutex::new(Heard::default()));
        let status = Arc::new(ListenerStatus::listening());
        let announcements = broadcast::channel(ANNOUNCEMENTS_BUFFER).0;
        tokio::spawn(keep_listening(
            pool.clone(),
            listener,
            commits,
            heard.clone(),
            status.clone(),
            announcements.clone(),
        ));
        Ok(Self {
            commits: receiver,
            heard,
            waiters: Arc::new(Semaphore::new(DEFAULT_MAX_WAITERS)),
            max_waiters: DEFAULT_MAX_WAITERS,
            status,
            announcements,
        })
    }

    /// The same watch, letting at most `max_waiters` reads wait at once (at least one).
    pub fn with_max_waiters(mut self, max_waiters: usize) -> Self {
        let max_waiters = max_waiters.max(1);
        self.waiters = Arc::new(Semaphore::new(max_waiters));
        self.max_waiters = max_waiters;
        self
    }

    /// How many reads are waiting right now (for tests and tooling).
    pub fn waiting(&self) -> usize {
        self.max_waiters - self.waiters.available_permits()
    }

    /// How many LISTEN sessions have been established: 1 at start, one more per reconnect.
    pub fn sessions(&self) -> u64 {
        self.status.sessions()
    }

    /// Whether the LISTEN connection is up right now.
    pub fn is_listening(&self) -> bool {
        self.status.is_listening()
    }

    /// A receiver whose value moves on every projection commit (for tests and tooling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Every notification payload heard from now on, as sent (parse it with
    /// `platform::read_model::parse_notification`).
    pub(crate) fn announcements(&self) -> broadcast::Receiver<Arc<str>> {
        self.announcements.subscribe()
    }

    /// Moves whenever something may have changed unannounced (see `Heard::anything`).
    pub(crate) fn anything_heard(&self) -> u64 {
        lock(&self.heard).anything
    }

    /// Runs `read` until `ready` accepts its result or `wait` has passed. With `awaited`
    /// (a delivery and the version waited for), it re-reads only when a notification announces
    /// that version or says anything may have moved, and at least every 500 ms; without, after
    /// every projection commit. Reads at least once, even with no wait.
    ///
    /// A read that is ready at once needs no permit; one that must wait takes a waiter permit
    /// or fails with `TooManyWaiters` at once. A read that finds the database unavailable is
    /// retried until the deadline (a restart often takes less than a wait), and that error is
    /// the answer only if the deadline passes first.
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
        // Held until this function returns, whatever it returns.
        let mut permit = None;
        loop {
            // Marked seen *before* the read: a commit after this point wakes us below, and
            // one before it is visible to the read.
            commits.borrow_and_update();
            let anything_before = lock(&self.heard).anything;
            // The read takes a pooled connection and gives it back before we wait below.
            let outcome = read().await;
            if let Ok(value) = &outcome
                && ready(value)
            {
                return outcome.map(Waited::Ready);
            }
            let now = Instant::now();
            match outcome {
                Ok(value) if now >= deadline => return Ok(Waited::TimedOut(value)),
                Err(error) if now >= deadline || !error.is_transient() => return Err(error),
                Err(error) => tracing::debug!(%error, "waiting read failed; retrying"),
                Ok(_) => {}
            }
            if permit.is_none() {
                let taken = self.waiters.clone().try_acquire_owned();
                permit = Some(taken.map_err(|_| ApiError::TooManyWaiters)?);
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
    pub(crate) fn worth_reading(&self, awaited: Option<(Uuid, i64)>, anything_before: u64) -> bool {
        let heard = lock(&self.heard);
        match awaited {
            None => true,
            Some(_) if heard.anything != anything_before => true,
            Some((id, version)) => heard.versions.get(&id).is_some_and(|v| *v >= version),
        }
    }
}
