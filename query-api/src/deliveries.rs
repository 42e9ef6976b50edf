//! `GET /deliveries/{id}` (current, read-your-writes, or as of a past time) and
//! `GET /deliveries` (filtered, keyset-paginated).

use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::history;
use crate::http::{AppState, DeliveryPath, MinVersion, QueryParams, internal, read_fresh, rfc3339};
use crate::openapi::{DeliveryProblems, ListProblems};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use domain::{Address, CancelReason, CustomerId, Delivery, DeliveryId, OrderRef, RiderId, Status};
use platform::read_model::{DELIVERY_COLUMNS, DeliveryRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A delivery as clients see it: the columns of `deliveries` (`DeliveryRow`), in this order,
/// its state spelled out as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub delivery_id: Uuid,
    #[schema(value_type = Status)]
    pub status: String,
    #[schema(value_type = OrderRef)]
    pub order_ref: String,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    /// `{line, lat, lon}`.
    #[schema(value_type = Address)]
    pub pickup: serde_json::Value,
    #[schema(value_type = Address)]
    pub dropoff: serde_json::Value,
    #[schema(value_type = Option<RiderId>)]
    pub rider_id: Option<String>,
    #[schema(value_type = Option<CancelReason>)]
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The last applied event version.
    pub version: i64,
    /// When the last applied event happened.
    pub updated_at: DateTime<Utc>,
}

/// The same shape for a row as read and for a state folded from history.
impl From<DeliveryRow> for DeliveryView {
    fn from(row: DeliveryRow) -> Self {
        let DeliveryRow {
            state,
            version,
            updated_at,
        } = row;
        Self {
            delivery_id: state.delivery_id.as_uuid(),
            status: state.status.as_str().to_owned(),
            order_ref: state.order_ref.into(),
            customer_id: state.customer_id.into(),
            pickup: address(&state.pickup),
            dropoff: address(&state.dropoff),
            rider_id: state.rider_id.map(Into::into),
            cancel_reason: state.cancel_reason.map(Into::into),
            created_at: state.created_at,
            assigned_at: state.assigned_at,
            picked_up_at: state.picked_up_at,
            completed_at: state.completed_at,
            cancelled_at: state.cancelled_at,
            version,
            updated_at,
        }
    }
}

fn address(address: &Address) -> serde_json::Value {
    json!({"line": address.line(), "lat": address.lat(), "lon": address.lon()})
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadParams {
    /// Answer only once the read model holds this version (read-your-writes); else 503.
    #[param(minimum = 1)]
    min_version: Option<i64>,
    /// How long to wait for `min_version`, in milliseconds; the server's limit caps it.
    wait_ms: Option<u64>,
    /// The delivery as it was at this time (RFC 3339), folded from its history. Not with
    /// `min_version`.
    #[serde(default, deserialize_with = "rfc3339")]
    as_of: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get,
    path = "/deliveries/{id}",
    operation_id = "get_delivery",
    summary = "A delivery: now, at least at a version, or as of a time",
    params(("id" = inline(DeliveryId), Path, description = "The delivery"), ReadParams),
    security(("bearer" = [])),
    tag = "reads",
    responses(
        (status = 200, description = "The delivery", body = DeliveryView),
        DeliveryProblems,
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    DeliveryPath(id): DeliveryPath,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<DeliveryView>, ApiError> {
    let wanted = MinVersion::from_query(params.min_version, params.wait_ms, state.max_wait)?;
    if wanted.is_some() && params.as_of.is_some() {
        return Err(ApiError::invalid_query(
            "min_version and as_of cannot be combined: the past does not change",
        ));
    }
    if let Some(at) = params.as_of {
        return as_of(&state.pool, id, at).await.map(Json);
    }
    let row = read_fresh(
        &state,
        id,
        wanted,
        || fetch(&state.pool, id),
        |row| row.as_ref().map_or(0, |row| row.version),
    )
    .await?;
    row.map(Json).ok_or(ApiError::DeliveryNotFound)
}

pub(crate) async fn fetch(pool: &PgPool, id: Uuid) -> Result<Option<DeliveryView>, ApiError> {
    // Dynamic: a DeliveryRow is read through its FromRow, which parses the domain's types;
    // query_as! builds a struct field by field and cannot. DELIVERY_COLUMNS is its one list.
    let row: Option<DeliveryRow> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from deliveries where delivery_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(DeliveryView::from))
}

/// Folds the events that had happened by `at`: the delivery as anyone would have seen it then.
async fn as_of(pool: &PgPool, id: Uuid, at: DateTime<Utc>) -> Result<DeliveryView, ApiError> {
    let rows = history::up_to(pool, id, at).await?;
    let mut delivery = Delivery::default();
    let mut updated_at = None;
    for row in rows {
        // Versions are dense, and each was decided after the one before was stored, so the
        // events up to `at` are a prefix of the history. Should a clock have jumped back, stop
        // at the gap rather than fold a later event over a missing one.
        if row.version != delivery.version + 1 {
            tracing::warn!(
                delivery_id = %id,
                version = row.version,
                "history read as of a time has a gap; folding the prefix before it"
            );
            break;
        }
        let occurred_at = row.occurred_at;
        delivery = delivery
            .evolve(&history::event_of(row)?)
            .map_err(internal)?;
        updated_at = Some(occurred_at);
    }
    match (delivery.state, updated_at) {
        (Some(state), Some(updated_at)) => Ok(DeliveryView::from(DeliveryRow {
            state,
            version: delivery.version,
            updated_at,
        })),
        _ => Err(ApiError::DeliveryNotFound),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only deliveries in this status.
    #[param(inline)]
    status: Option<Status>,
    /// Only this rider's deliveries.
    #[param(value_type = Option<RiderId>, inline)]
    rider_id: Option<String>,
    /// Only deliveries created after this time (RFC 3339), exclusive.
    #[serde(default, deserialize_with = "rfc3339")]
    created_after: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (50 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Where the previous page ended: its `next_cursor`.
    cursor: Option<String>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// One page, oldest first; `next_cursor` is `null` on the last page.
#[derive(Serialize, ToSchema)]
pub(crate) struct Page {
    items: Vec<DeliveryView>,
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/deliveries",
    operation_id = "list_deliveries",
    summary = "Deliveries, filtered, oldest first, a page at a time",
    params(ListParams),
    security(("bearer" = [])),
    tag = "reads",
    responses(
        (status = 200, description = "A page of deliveries", body = Page),
        ListProblems,
    )
)]
pub(crate) async fn list(
    State(pool): State<PgPool>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<Page>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_query(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let rider_id = params
        .rider_id
        .map(RiderId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_query(e.to_string()))?;
    let cursor = params
        .cursor
        .map(|raw| {
            Cursor::decode(&raw).ok_or_else(|| {
                ApiError::invalid_query("cursor is not one this API handed out (next_cursor)")
            })
        })
        .transpose()?;

    // Only the filters asked for go into the statement, so the planner can pick the index
    // that matches them: by status, by rider, or by creation time alone. So it is built at
    // run time (and read through DeliveryRow's FromRow), not checked by a query macro.
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "select {DELIVERY_COLUMNS} from deliveries where true"
    ));
    if let Some(status) = params.status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    if let Some(rider_id) = rider_id {
        query
            .push(" and rider_id = ")
            .push_bind(String::from(rider_id));
    }
    if let Some(created_after) = params.created_after {
        query.push(" and created_at > ").push_bind(created_after);
    }
    if let Some(cursor) = cursor {
        query
            .push(" and (created_at, delivery_id) > (")
            .push_bind(cursor.created_at)
            .push(", ")
            .push_bind(cursor.delivery_id)
            .push(")");
    }
    // One more than asked for tells whether another page follows.
    query
        .push(" order by created_at, delivery_id limit ")
        .push_bind(limit + 1);
    let rows: Vec<DeliveryRow> = query.build_query_as().fetch_all(&pool).await?;
    let mut items: Vec<DeliveryView> = rows.into_iter().map(DeliveryView::from).collect();

    let mut next_cursor = None;
    if items.len() as i64 > limit {
        items.truncate(limit as usize);
        next_cursor = items.last().map(|last| {
            Cursor {
                created_at: last.created_at,
                delivery_id: last.delivery_id,
            }
            .encode()
        });
    }
    Ok(Json(Page { items, next_cursor }))
}
