//! Live views over server-sent events, built on the projector's notifications that the
//! freshness listener already hears:
//!
//! - `GET /deliveries/{id}/stream`: the delivery's state each time it changes, its version as
//!   the SSE `id`. A client that reconnects with `Last-Event-ID: N` gets the current state as
//!   soon as it is newer than N, and nothing it already has (`delivery`).
//! - `GET /stats/stream`: counts by status and active riders, each time they change, at most
//!   a few times a second (`hub`).
//! - `GET /events/stream`: the events the projector applies, as they are applied, after a
//!   backlog of the latest ones (`hub`): the dashboard's feed.
//!
//! Every stream sends keep-alive comments, counts against one bound on open streams (past it,
//! 503 `too-many-streams`), and ends when the service shuts down ([`Live::close`]), so a
//! graceful shutdown never waits on a stream. API clients authenticate with their bearer
//! token; the dashboard with its session cookie (`session`, ADR 0012).

pub(crate) mod delivery;
mod hub;
pub(crate) mod session;

pub(crate) use hub::{FeedEvent, LiveStats};

use crate::auth::Tokens;
use crate::error::ApiError;
use crate::freshness::FreshnessWatch;
use crate::http::AppState;
use crate::openapi::StreamProblems;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use hub::Hub;
use serde::Serialize;
use session::Sessions;
use sqlx::PgPool;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

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

/// Who may open a stream: a holder of a bearer token, or a dashboard session.
#[derive(Clone)]
pub(crate) struct StreamAccess {
    tokens: Tokens,
    live: Live,
}

impl StreamAccess {
    pub(crate) fn new(tokens: Tokens, live: Live) -> Self {
        Self { tokens, live }
    }
}

/// API clients send their bearer token; the dashboard its session cookie (a browser cannot
/// set `Authorization` on an `EventSource`).
pub(crate) async fn require_token_or_session(
    State(access): State<StreamAccess>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    if access.tokens.admits(headers) || access.live.sessions().admits(headers) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
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

/// The live numbers, pushed as server-sent events
///
/// Each message is `event: stats` with `data:` a `LiveStats` (the counts by status and the
/// active riders): the current numbers first, then each change, at most every 250 ms
/// (commits in between are coalesced, unchanged numbers are not sent again). An idle stream
/// sends a comment line (`:`) every keep-alive interval (`--stream-keep-alive-secs`, 15 s).
/// The stream does not end by itself: the service ends it when it shuts down.
#[utoipa::path(
    get,
    path = "/stats/stream",
    operation_id = "stream_stats",
    security(("bearer" = []), ("dashboard_session" = [])),
    tag = "live",
    responses(
        (
            status = 200,
            description = "An endless stream of `stats` events; `data:` is a `LiveStats`",
            content_type = "text/event-stream",
            body = String,
            example = "event: stats\ndata: {\"deliveries_by_status\":{\"created\":1,\
                \"rider_assigned\":1,\"picked_up\":2,\"completed\":2,\"cancelled\":1},\
                \"active_riders\":2}\n\n",
        ),
        StreamProblems,
    )
)]
pub(crate) async fn stats_stream(State(state): State<AppState>) -> Result<Response, ApiError> {
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

/// The events the projector applies, pushed as server-sent events: the dashboard's feed
///
/// Each message is `event: event`, `id:` the event's id and `data:` a `FeedEvent`: the latest
/// 50 events first (oldest first; none recorded more than a minute before the service's
/// first stats or feed stream started), then each event as the projector applies it. A
/// client too slow to take 1,024 queued events misses some: it is a live view, not a log
/// (`GET /deliveries/{id}/history` is). An idle stream sends a comment line (`:`) every
/// keep-alive interval (`--stream-keep-alive-secs`, 15 s). The stream does not end by
/// itself: the service ends it when it shuts down.
#[utoipa::path(
    get,
    path = "/events/stream",
    operation_id = "stream_events",
    security(("bearer" = []), ("dashboard_session" = [])),
    tag = "live",
    responses(
        (
            status = 200,
            description = "An endless stream of `event` events; `id:` is the event id, \
                           `data:` a `FeedEvent`",
            content_type = "text/event-stream",
            body = String,
            example = "event: event\nid: 0190f4c2-0000-7000-9000-000000000023\n\
                data: {\"event_id\":\"0190f4c2-0000-7000-9000-000000000023\",\
                \"delivery_id\":\"0190f4c2-0000-7000-8000-000000000002\",\"version\":3,\
                \"type\":\"delivery.picked_up\",\"actor_role\":\"rider\",\
                \"actor_id\":\"rider-1\",\"occurred_at\":\"2026-03-02T09:30:00Z\",\
                \"recorded_at\":\"2026-03-02T09:30:00.012Z\"}\n\n",
        ),
        StreamProblems,
    )
)]
pub(crate) async fn feed_stream(State(state): State<AppState>) -> Result<Response, ApiError> {
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
