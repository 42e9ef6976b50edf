//! One task per query API behind every stats and feed stream: however many dashboards are
//! open, the numbers and the new events are read once per update, not once per client.
//!
//! It hears the projector's announcements (parsed once, here), waits at least
//! `stats_interval` between two rounds so a burst of commits becomes one update, and in each
//! round reads the stats (sent only if they changed) and the events the announced deliveries
//! gained since it last looked. Started by the first stats or feed stream; it ends when the
//! service closes its streams or stops listening.

use crate::stats::ByStatus;
use chrono::{DateTime, Utc};
use platform::read_model::{Announced, parse_notification};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// Events a new feed client gets first.
const BACKLOG: usize = 50;
/// Feed events buffered per client before a slow one starts missing them.
const FEED_BUFFER: usize = 1024;
/// Rounds happen this often even without announcements (a listener that is reconnecting
/// loses them).
const FALLBACK: Duration = Duration::from_secs(5);
/// Deliveries whose last fed version is remembered; past this the memory starts afresh.
const REMEMBERED: usize = 100_000;
/// A delivery the feed has not seen yet shows only events recorded this long before the hub
/// started or later: a catch-up after an outage does not flood the feed with old history.
const FIRST_SEEN_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The numbers `/stats/stream` sends: the live part of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct LiveStats {
    deliveries_by_status: ByStatus,
    /// Riders with at least one assigned or picked-up delivery.
    active_riders: i64,
}

/// One entry of `/events/stream`: an event as the projector applied it, without its data
/// (`GET /deliveries/{id}/history` has that).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct FeedEvent {
    pub(crate) event_id: Uuid,
    delivery_id: Uuid,
    version: i64,
    /// The event's type name, a public contract.
    #[serde(rename = "type")]
    #[schema(example = "delivery.created")]
    event_type: String,
    #[schema(value_type = domain::Role)]
    actor_role: String,
    actor_id: String,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
}

/// The feed's recent events and its live channel, changed together so that a new client
/// gets each event exactly once: in the backlog or on the channel.
struct Feed {
    recent: VecDeque<Arc<FeedEvent>>,
    live: broadcast::Sender<Arc<FeedEvent>>,
}

/// The handle the streams use.
pub(crate) struct Hub {
    stats: watch::Receiver<Option<Arc<LiveStats>>>,
    feed: Arc<Mutex<Feed>>,
}

impl Hub {
    pub(crate) fn start(
        pool: PgPool,
        announcements: broadcast::Receiver<Arc<str>>,
        interval: Duration,
        closed: CancellationToken,
    ) -> Self {
        let (stats_tx, stats) = watch::channel(None);
        let feed = Arc::new(Mutex::new(Feed {
            recent: VecDeque::with_capacity(BACKLOG),
            live: broadcast::channel(FEED_BUFFER).0,
        }));
        let round = Round {
            pool,
            stats: stats_tx,
            feed: feed.clone(),
            fed: HashMap::new(),
            since: Utc::now() - FIRST_SEEN_GRACE,
        };
        tokio::spawn(run(round, announcements, interval, closed));
        Self { stats, feed }
    }

    pub(crate) fn stats(&self) -> watch::Receiver<Option<Arc<LiveStats>>> {
        self.stats.clone()
    }

    /// The backlog, oldest first, and the channel of every event after it.
    pub(crate) fn feed(&self) -> (Vec<Arc<FeedEvent>>, broadcast::Receiver<Arc<FeedEvent>>) {
        let feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        (feed.recent.iter().cloned().collect(), feed.live.subscribe())
    }
}

async fn run(
    mut round: Round,
    mut announcements: broadcast::Receiver<Arc<str>>,
    interval: Duration,
    closed: CancellationToken,
) {
    let mut moved = HashMap::new();
    loop {
        if let Err(error) = round.update(&mut moved).await {
            // Kept for the next round: nothing announced is dropped because a read failed.
            tracing::warn!(%error, "live stats or feed could not be read; retrying");
        }
        // Coalesce: whatever commits during the interval makes one round.
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let heard = tokio::select! {
            () = closed.cancelled() => return,
            heard = tokio::time::timeout(FALLBACK, announcements.recv()) => heard,
        };
        match heard {
            Ok(Ok(payload)) => record(&mut moved, &payload),
            Ok(Err(RecvError::Lagged(missed))) => {
                tracing::warn!(
                    missed,
                    "the live feed missed announcements; the stats re-read"
                );
            }
            Ok(Err(RecvError::Closed)) => return,
            Err(_) => {}
        }
        loop {
            match announcements.try_recv() {
                Ok(payload) => record(&mut moved, &payload),
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the live feed missed announcements");
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
    }
}

/// Remembers the newest version announced per delivery ("something moved" needs no entry:
/// every round re-reads the stats anyway).
fn record(moved: &mut HashMap<Uuid, i64>, payload: &str) {
    for announced in parse_notification(payload) {
        if let Announced::Version {
            delivery_id,
            version,
        } = announced
        {
            let known = moved.entry(delivery_id).or_insert(version);
            *known = (*known).max(version);
        }
    }
}

/// What one round reads and where it sends it.
struct Round {
    pool: PgPool,
    stats: watch::Sender<Option<Arc<LiveStats>>>,
    feed: Arc<Mutex<Feed>>,
    /// The last version fed per delivery.
    fed: HashMap<Uuid, i64>,
    since: DateTime<Utc>,
}

impl Round {
    async fn update(&mut self, moved: &mut HashMap<Uuid, i64>) -> Result<(), sqlx::Error> {
        let stats = read_stats(&self.pool).await?;
        self.stats.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&stats);
            if changed {
                *current = Some(Arc::new(stats));
            }
            changed
        });
        if moved.is_empty() {
            return Ok(());
        }
        let (ids, (after, upto)): (Vec<Uuid>, (Vec<i64>, Vec<i64>)) = moved
            .iter()
            .map(|(id, upto)| (*id, (self.fed.get(id).copied().unwrap_or(0), *upto)))
            .unzip();
        let events = sqlx::query_as!(
            FeedEvent,
            r#"select h.event_id as "event_id!", h.delivery_id as "delivery_id!",
                      h.version as "version!", h.event_type as "event_type!",
                      h.actor_role as "actor_role!", h.actor_id as "actor_id!",
                      h.occurred_at as "occurred_at!", h.recorded_at as "recorded_at!"
               from unnest($1::uuid[], $2::bigint[], $3::bigint[]) as m(delivery_id, after, upto)
               join delivery_history h on h.delivery_id = m.delivery_id
                    and h.version > m.after and h.version <= m.upto
               where m.after > 0 or h.recorded_at >= $4
               order by h.recorded_at, h.delivery_id, h.version"#,
            &ids,
            &after,
            &upto,
            self.since,
        )
        .fetch_all(&self.pool)
        .await?;
        if self.fed.len() > REMEMBERED {
            self.fed.clear();
            self.since = Utc::now() - FIRST_SEEN_GRACE;
        }
        for (id, version) in moved.drain() {
            self.fed.insert(id, version);
        }
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            let event = Arc::new(event);
            if feed.recent.len() == BACKLOG {
                feed.recent.pop_front();
            }
            feed.recent.push_back(event.clone());
            // No receiver is no error: the backlog keeps it for the next client.
            let _ = feed.live.send(event);
        }
        Ok(())
    }
}

/// The status counts and active riders, in one statement (one snapshot).
async fn read_stats(pool: &PgPool) -> Result<LiveStats, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select status as "status!", deliveries as "deliveries!",
                  (select count(*) from riders where active_deliveries > 0) as "active_riders!"
           from status_counts"#
    )
    .fetch_all(pool)
    .await?;
    let mut stats = LiveStats {
        deliveries_by_status: ByStatus::default(),
        active_riders: rows.first().map_or(0, |row| row.active_riders),
    };
    for row in rows {
        let (status, deliveries) = (row.status, row.deliveries);
        match domain::Status::parse(&status) {
            Some(status) => *stats.deliveries_by_status.count_mut(status) += deliveries,
            None => tracing::warn!(%status, "status_counts has a status this build does not know"),
        }
    }
    Ok(stats)
}
