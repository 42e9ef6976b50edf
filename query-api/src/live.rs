//! Live views over server-sent events, built on the projector's notifications that the
//! freshness listener already hears:
//!
//! - `GET /deliveries/{id}/stream`: the delivery's state each time it changes, its version as
//!   the SSE `id`. A client that reconnects with `Last-Event-ID: N` gets the current state as
//!   soon as it is newer than N, and nothing it already has.
//! - `GET /stats/stream`: counts by status and active riders, each time they change, at most
//!   a few times a second (`hub`).
//! - `GET /events/stream`: the events the projector applies, as they are applied, after a
//!   backlog of the latest ones (`hub`): the dashboard's feed.
//!
//! Every stream sends keep-alive comments, counts against one bound on open streams (past it,
//! 503 `too-many-streams`), and ends when the service shuts down ([`Live::close`]), so a
//! graceful shutdown never waits on a stream. API clients authenticate with their bearer
//! token; the dashboard with its session cookie (`session`, ADR 0012).

mod hub;
pub(crate) mod session;

use crate::deliveries::{DeliveryView, fetch};
use crate::error::ApiError;
use crate::freshness::FreshnessWatch;
use crate::http::{AppState, DeliveryPath};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, routing::post};
use futures::{Stream, StreamExt};
use hub::Hub;
use serde::Serialize;
use session::Sessions;
use sqlx::PgPool;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A stream whose delivery was not announced re-reads it this often anyway: it covers a
/// listener that is reconnecting (notifications sent meanwhile are lost).
const RECHECK: Duration = Duration::from_secs(5);

/// The live views' bounds and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    /// Streams open at once, over every stream route; the next one gets 503.
    pub max_streams: usize,
    /// How often an idle stream sends a keep-alive comment, so proxies and clients can tell a
    /// quiet stream from a dead connection.
    pub keep_alive: Duration,
    /// The shortest time between two stats (and feed) updates: commits in between are
    /// coalesced into one.
    pub stats_interval: Duration,
    /// How long a dashboard session cookie lasts.
    pub session_ttl: Duration,
    /// Whether the session cookie is `Secure` (only sent over HTTPS): on behind TLS.
    pub secure_cookie: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_streams: 512,
            keep_alive: Duration::from_secs(15),
            stats_interval: Duration::from_millis(250),
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookie: false,
        }
    }
}

/// The live views' shared state: the stream bound, the shutdown switch, the stats and feed
/// hub (started by the first stream that needs it) and the dashboard sessions. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    config: LiveConfig,
    streams: Arc<Semaphore>,
    closed: CancellationToken,
    hub: OnceLock<Hub>,
    sessions: Sessions,
}

impl Default for Live {
    fn default() -> Self {
        Self::new(LiveConfig::default())
    }
}

impl Live {
    pub fn new(config: LiveConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
                closed: CancellationToken::new(),
                hub: OnceLock::new(),
                sessions: Sessions::new(config.session_ttl, config.secure_cookie),
            }),
        }
    }

    /// Ends every open stream and every stream opened from now on: call it when the service
    /// starts to shut down, or a graceful shutdown waits for streams that never end.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// How many streams are open right now (for tests and tooling).
    pub fn open_streams(&self) -> usize {
        self.inner.config.max_streams.max(1) - self.inner.streams.available_permits()
    }

    /// A slot for one more stream, or 503 at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.inner
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams)
    }

    fn hub(&self, pool: &PgPool, freshness: &FreshnessWatch) -> &Hub {
        self.inner.hub.get_or_init(|| {
            Hub::start(
                pool.clone(),
                freshness.announcements(),
                self.inner.config.stats_interval,
                self.inner.closed.clone(),
            )
        })
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// `events` as an SSE response that holds `permit` until it ends, sends keep-alives, and
    /// ends when the service closes.
    fn respond(
        &self,
        events: impl Stream<Item = Event> + Send + 'static,
        permit: OwnedSemaphorePermit,
    ) -> Response {
        let closed = self.inner.closed.clone().cancelled_owned();
        let events = events
            .take_until(closed)
            // The permit lives as long as the stream: a client that goes away frees it.
            .map(move |event| {
                let _held = &permit;
                Ok::<_, Infallible>(event)
            });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(self.inner.config.keep_alive))
            .into_response()
    }
}

/// The stream routes and the dashboard's session route; the caller adds the state.
pub fn routes(state: &AppState) -> Router<AppState> {
    let streams = Router::new()
        .route("/deliveries/{id}/stream", get(delivery_stream))
        .route("/stats/stream", get(stats_stream))
        .route("/events/stream", get(feed_stream))
        .route("/dashboard/session", get(session::check))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token_or_session,
        ));
    // Creating a session needs the bearer token itself; ending one only the cookie.
    let sessions = Router::new().route(
        "/dashboard/session",
        post(session::create).delete(session::end),
    );
    streams.merge(sessions)
}

/// API clients send their bearer token; the dashboard its session cookie (a browser cannot
/// set `Authorization` on an `EventSource`).
async fn require_token_or_session(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    if state.tokens.admits(headers) || state.live.sessions().admits(headers) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// `Last-Event-ID`: the last version the client has, if it says.
fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|raw| raw.trim().parse::<i64>().ok())
        .filter(|version| *version >= 0)
        .ok_or_else(|| {
            ApiError::InvalidHeader(
                "Last-Event-ID must be a version this stream sent (a number, 0 or more)".into(),
            )
        })
}

fn json_event(kind: &'static str, data: &impl Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|error| {
            // Our own types with string keys always serialize; say so loudly if one does not.
            tracing::error!(%error, kind, "a live event could not be serialized");
            Event::default().comment("an update could not be serialized")
        })
}

/// One delivery followed: what it last sent, and how to learn that something newer exists.
struct Following {
    pool: PgPool,
    freshness: FreshnessWatch,
    commits: watch::Receiver<u64>,
    /// What the listener had heard of unannounced moves before the last read.
    anything_before: u64,
    id: Uuid,
    sent: i64,
    /// A read not sent yet (the first one, or one that found a newer version).
    pending: Option<DeliveryView>,
}

impl Following {
    /// Marks every commit so far as seen, then reads: a commit after the mark wakes the next
    /// wait, and one before it is visible to the read (as in `FreshnessWatch::read_until`).
    async fn read(&mut self) -> Result<(), ApiError> {
        self.commits.borrow_and_update();
        self.anything_before = self.freshness.anything_heard();
        self.pending = fetch(&self.pool, self.id).await?;
        Ok(())
    }

    /// The next state newer than what was sent. Versions may jump: when several events of
    /// the delivery land in one projector batch, only the last state is ever in the table.
    async fn next(&mut self) -> DeliveryView {
        loop {
            if let Some(view) = self.pending.take()
                && view.version > self.sent
            {
                self.sent = view.version;
                return view;
            }
            // Wait for an announcement of a newer version (or of anything unannounced).
            let recheck = tokio::time::Instant::now() + RECHECK;
            loop {
                let awaited = Some((self.id, self.sent + 1));
                match tokio::time::timeout_at(recheck, self.commits.changed()).await {
                    Ok(Ok(())) if !self.freshness.worth_reading(awaited, self.anything_before) => {
                        continue;
                    }
                    Ok(Ok(())) | Err(_) => break,
                    // The listener is gone for good: poll.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(recheck).await;
                        break;
                    }
                }
            }
            if let Err(error) = self.read().await {
                // The next announcement or recheck tries again.
                tracing::debug!(%error, delivery_id = %self.id, "stream read failed");
            }
        }
    }
}

async fn delivery_stream(
    State(state): State<AppState>,
    DeliveryPath(id): DeliveryPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sent = last_event_id(&headers)?;
    let permit = state.live.admit()?;
    let mut following = Following {
        pool: state.pool.clone(),
        commits: state.freshness.subscribe(),
        freshness: state.freshness.clone(),
        anything_before: 0,
        id,
        sent,
        pending: None,
    };
    following.read().await?;
    if following.pending.is_none() {
        return Err(ApiError::DeliveryNotFound);
    }
    let events = futures::stream::unfold(following, |mut following| async move {
        let view = following.next().await;
        let event = json_event("delivery", &view).id(view.version.to_string());
        Some((event, following))
    });
    Ok(state.live.respond(events, permit))
}

async fn stats_stream(State(state): State<AppState>) -> Result<Response, ApiError> {
    let permit = state.live.admit()?;
    let mut stats = state.live.hub(&state.pool, &state.freshness).stats();
    // The current numbers first (once the hub has read them), then every change.
    stats.mark_changed();
    let events = futures::stream::unfold(stats, |mut stats| async move {
        loop {
            stats.changed().await.ok()?;
            let current = stats.borrow_and_update().clone();
            if let Some(current) = current {
                return Some((json_event("stats", &*current), stats));
            }
        }
    });
    Ok(state.live.respond(events, permit))
}

async fn feed_stream(State(state): State<AppState>) -> Result<Response, ApiError> {
    let permit = state.live.admit()?;
    let (backlog, live) = state.live.hub(&state.pool, &state.freshness).feed();
    let backlog = futures::stream::iter(backlog);
    let live = futures::stream::unfold(live, |mut live| async move {
        loop {
            match live.recv().await {
                Ok(event) => return Some((event, live)),
                // A client too slow to keep up misses entries of the feed, not the stream.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a feed client fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let events = backlog
        .chain(live)
        .map(|event| json_event("event", &*event).id(event.event_id.to_string()));
    Ok(state.live.respond(events, permit))
}
