//! `GET /deliveries/{id}/history`: the audit trail, every event in version order.

use crate::error::ApiError;
use crate::http::{AppState, DeliveryPath, MinVersion, QueryParams, internal, read_fresh};
use crate::openapi::DeliveryProblems;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use domain::{DeliveryId, Event, Role};
use platform::read_model::HistoryRow;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The whole history of one delivery, in version order.
async fn all(pool: &PgPool, id: Uuid) -> Result<Vec<HistoryRow>, ApiError> {
    // query_as! checks at compile time that the columns are exactly HistoryRow's fields.
    let rows = sqlx::query_as!(
        HistoryRow,
        "select delivery_id, version, event_id, event_type, schema_version, actor_role, \
             actor_id, occurred_at, recorded_at, correlation_id, causation_id, data, \
             kafka_partition, kafka_offset, hash \
         from delivery_history where delivery_id = $1 order by version",
        id,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The events of one delivery that had happened by `at`, in version order.
pub(crate) async fn up_to(
    pool: &PgPool,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Vec<HistoryRow>, ApiError> {
    let rows = sqlx::query_as!(
        HistoryRow,
        "select delivery_id, version, event_id, event_type, schema_version, actor_role, \
             actor_id, occurred_at, recorded_at, correlation_id, causation_id, data, \
             kafka_partition, kafka_offset, hash \
         from delivery_history where delivery_id = $1 and occurred_at <= $2 order by version",
        id,
        at,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The domain fact a history row records. The projector stores only events it could decode,
/// so a failure here is a broken read model (ours), not a bad request.
pub(crate) fn event_of(row: HistoryRow) -> Result<Event, ApiError> {
    let envelope = row.into_envelope().map_err(internal)?;
    envelope.decode().map_err(internal)
}

#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryView {
    delivery_id: Uuid,
    events: Vec<EventView>,
}

/// One event as clients see it: the published envelope's fields (not where the projector
/// read it in Kafka).
#[derive(Serialize, ToSchema)]
struct EventView {
    version: i64,
    event_id: Uuid,
    /// The event's type name, a public contract (`delivery.created`, ...).
    #[serde(rename = "type")]
    #[schema(example = "delivery.created")]
    event_type: String,
    schema_version: i32,
    actor: ActorView,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Uuid,
    /// The event's information; its shape depends on `type`.
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
struct ActorView {
    #[schema(value_type = Role)]
    role: String,
    id: String,
}

impl From<HistoryRow> for EventView {
    fn from(row: HistoryRow) -> Self {
        Self {
            version: row.version,
            event_id: row.event_id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            actor: ActorView {
                role: row.actor_role,
                id: row.actor_id,
            },
            occurred_at: row.occurred_at,
            recorded_at: row.recorded_at,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            data: row.data,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Answer only once the read model holds this version (read-your-writes); else 503.
    #[param(minimum = 1)]
    min_version: Option<i64>,
    /// How long to wait for `min_version`, in milliseconds; the server's limit caps it.
    wait_ms: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/deliveries/{id}/history",
    operation_id = "get_history",
    summary = "Every event of a delivery, in version order",
    params(("id" = inline(DeliveryId), Path, description = "The delivery"), HistoryParams),
    security(("bearer" = [])),
    tag = "reads",
    responses(
        (status = 200, description = "The delivery's history", body = HistoryView),
        DeliveryProblems,
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    DeliveryPath(id): DeliveryPath,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Json<HistoryView>, ApiError> {
    let wanted = MinVersion::from_query(params.min_version, params.wait_ms, state.max_wait)?;
    let rows = read_fresh(
        &state,
        id,
        wanted,
        || all(&state.pool, id),
        |rows| rows.last().map_or(0, |row| row.version),
    )
    .await?;
    if rows.is_empty() {
        return Err(ApiError::DeliveryNotFound);
    }
    Ok(Json(HistoryView {
        delivery_id: id,
        events: rows.into_iter().map(EventView::from).collect(),
    }))
}
