//! `GET /deliveries/{id}/stream`: one delivery's state, each time it changes.

use super::json_event;
use crate::deliveries::{DeliveryView, fetch};
use crate::error::ApiError;
use crate::freshness::FreshnessWatch;
use crate::http::{AppState, DeliveryPath};
use crate::openapi::DeliveryStreamProblems;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use domain::DeliveryId;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// A stream whose delivery was not announced re-reads it this often anyway: it covers a
/// listener that is reconnecting (notifications sent meanwhile are lost).
const RECHECK: Duration = Duration::from_secs(5);

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

/// Follow one delivery: its state now, then each newer one, as server-sent events
///
/// Each message is `event: delivery`, `id:` the delivery's version and `data:` the delivery
/// as `GET /deliveries/{id}` shows it (a `DeliveryView`): the whole state at that version,
/// never a diff. Versions may jump (2, then 4) when several events of the delivery land in
/// one projector batch; `GET /deliveries/{id}/history` has every event. A client that
/// reconnects with `Last-Event-ID: N` (an `EventSource` does by itself) gets the current
/// state as soon as it is newer than N, and nothing it already has. An idle stream sends a
/// comment line (`:`) every keep-alive interval (`--stream-keep-alive-secs`, 15 s). The
/// stream does not end by itself: the service ends it when it shuts down.
#[utoipa::path(
    get,
    path = "/deliveries/{id}/stream",
    operation_id = "stream_delivery",
    params(
        ("id" = inline(DeliveryId), Path, description = "The delivery"),
        (
            "Last-Event-ID" = Option<i64>,
            Header,
            // Optional, but never null: a header is there or not.
            nullable = false,
            minimum = 0,
            description = "The last version the client has (the `id:` of the last message it \
                           got): only newer states are sent",
        ),
    ),
    security(("bearer" = []), ("dashboard_session" = [])),
    tag = "live",
    responses(
        (
            status = 200,
            description = "An endless stream of `delivery` events; `id:` is the version, \
                           `data:` a `DeliveryView`",
            content_type = "text/event-stream",
            body = String,
            example = "event: delivery\nid: 2\ndata: {\"delivery_id\":\
                \"0190f4c2-0000-7000-8000-000000000002\",\"status\":\"rider_assigned\",\
                \"order_ref\":\"order-1002\",\"customer_id\":\"customer-8\",\"pickup\":\
                {\"line\":\"Store 12, Main St 1\",\"lat\":52.52,\"lon\":13.405},\
                \"dropoff\":{\"line\":\"Oak Ave 3\",\"lat\":52.5,\"lon\":13.42},\
                \"rider_id\":\"rider-1\",\"cancel_reason\":null,\
                \"created_at\":\"2026-03-02T09:10:00Z\",\
                \"assigned_at\":\"2026-03-02T09:12:00Z\",\"picked_up_at\":null,\
                \"completed_at\":null,\"cancelled_at\":null,\"version\":2,\
                \"updated_at\":\"2026-03-02T09:12:00Z\"}\n\n",
        ),
        DeliveryStreamProblems,
    )
)]
pub(crate) async fn stream(
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
