//! The task behind `FreshnessWatch`: LISTENs for the projector's commits and keeps listening
//! across database restarts.
//!
//! A restart (or `pg_terminate_backend`) ends the LISTEN connection, and notifications sent
//! while nobody listens are lost for good. So when the connection is lost the task drops it,
//! connects again with backoff (the first attempt at once, then 100 ms doubling to 5 s), and once
//! LISTEN is in place again it says "anything may have moved": every waiting read re-reads,
//! which sees whatever was committed while the task was away. Commits after LISTEN are heard.
//! Meanwhile waiting reads keep re-reading every 500 ms, so no wait depends on the listener to
//! end: it ends at its deadline at the latest.

use platform::read_model::{Announced, CHANNEL, parse_notification};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// Deliveries whose heard version is remembered; past this the memory starts afresh (and every
/// waiter re-reads once).
const REMEMBERED: usize = 100_000;

/// What the notifications said.
#[derive(Debug, Default)]
pub(crate) struct Heard {
    /// The latest version announced per delivery.
    pub(crate) versions: HashMap<Uuid, i64>,
    /// Moves when anything may have changed unannounced: an empty payload, a reconnect, or
    /// the memory starting afresh.
    pub(crate) anything: u64,
}

impl Heard {
    fn record(&mut self, payload: &str) {
        for announced in parse_notification(payload) {
            match announced {
                Announced::Version {
                    delivery_id,
                    version,
                } => {
                    if self.versions.len() > REMEMBERED {
                        self.versions.clear();
                        self.anything += 1;
                    }
                    let known = self.versions.entry(delivery_id).or_insert(version);
                    *known = (*known).max(version);
                }
                Announced::SomethingMoved => self.anything += 1,
            }
        }
    }
}

pub(crate) fn lock(heard: &Mutex<Heard>) -> MutexGuard<'_, Heard> {
    heard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the task is listening, and how many LISTEN sessions it has had.
#[derive(Debug)]
pub(crate) struct ListenerStatus {
    listening: AtomicBool,
    sessions: AtomicU64,
}

impl ListenerStatus {
    /// The status right after the first LISTEN succeeded.
    pub(crate) fn listening() -> Self {
        Self {
            listening: AtomicBool::new(true),
            sessions: AtomicU64::new(1),
        }
    }

    pub(crate) fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Acquire)
    }

    pub(crate) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// A connection from `pool` that LISTENs on [`CHANNEL`].
pub(crate) async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // sqlx would reconnect inside `try_recv` and, after a failed attempt, again silently on
    // the next call: then nobody learns that notifications were missed. We reconnect here,
    // in one place, and tell every waiter.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The delay before the next reconnect attempt: none for the first, then doubling.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next(&mut self) -> Duration {
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => Self::FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(Self::MAX),
        };
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// Relays notifications to the waiters until every `FreshnessWatch` is dropped or the pool
/// is closed, reconnecting whenever the connection is lost.
pub(crate) async fn keep_listening(
    pool: PgPool,
    first: PgListener,
    commits: watch::Sender<u64>,
    heard: Arc<Mutex<Heard>>,
    status: Arc<ListenerStatus>,
    announcements: broadcast::Sender<Arc<str>>,
) {
    let bump = |n: &mut u64| *n = n.wrapping_add(1);
    let mut listener = Some(first);
    let mut backoff = Backoff::default();
    loop {
        let mut current = match listener.take() {
            Some(current) => current,
            None => {
                let delay = backoff.next();
                let connected = tokio::select! {
                    // Nobody can wait any more: stop.
                    () = commits.closed() => return,
                    connected = async {
                        tokio::time::sleep(delay).await;
                        connect(&pool).await
                    } => connected,
                };
                match connected {
                    Ok(current) => {
                        backoff = Backoff::default();
                        status.sessions.fetch_add(1, Ordering::AcqRel);
                        status.listening.store(true, Ordering::Release);
                        tracing::info!("projection listener reconnected");
                        // Commits while nobody listened were not heard: every waiter re-reads.
                        // After LISTEN, not before, so a commit in between is seen either way.
                        lock(&heard).anything += 1;
                        // No live view listening is no error.
                        let _ = announcements.send(Arc::from(""));
                        commits.send_modify(bump);
                        current
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(error) => {
                        tracing::warn!(%error, "projection listener cannot reconnect yet");
                        continue;
                    }
                }
            }
        };
        loop {
            let received = tokio::select! {
                () = commits.closed() => return,
                received = current.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    lock(&heard).record(notification.payload());
                    let _ = announcements.send(Arc::from(notification.payload()));
                    commits.send_modify(bump);
                }
                Err(sqlx::Error::PoolClosed) => return,
                // `Ok(None)`: the connection was lost (sqlx's word for it with eager reconnect
                // off); anything else is a connection we no longer trust.
                lost => {
                    let error = lost.err().map(|e| e.to_string());
                    tracing::warn!(
                        ?error,
                        "projection listener lost its connection; waiting reads poll until it is back"
                    );
                    break;
                }
            }
        }
        status.listening.store(false, Ordering::Release);
        // sqlx UNLISTENs a connection that is still there and gives it back to the pool, which
        // tests it before lending it again; a lost one is already gone.
        drop(current);
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

    #[test]
    fn reconnects_start_at_once_then_back_off_up_to_a_ceiling() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        for _ in 0..100 {
            backoff.next();
        }
        assert_eq!(
            backoff.next(),
            Backoff::MAX,
            "no overflow after many failures"
        );
    }
}
