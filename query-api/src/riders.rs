//! `GET /riders/{id}/deliveries`: a rider's workload and recent work.

use crate::deliveries::DeliveryView;
use crate::error::ApiError;
use crate::http::RiderPath;
use crate::openapi::RiderProblems;
use axum::Json;
use axum::extract::State;
use domain::{RiderId, Status};
use platform::read_model::{DELIVERY_COLUMNS, DeliveryRow};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

/// How many completed deliveries the rider view lists.
const RECENT_COMPLETED: i64 = 50;

#[derive(Serialize, ToSchema)]
pub(crate) struct RiderView {
    #[schema(value_type = RiderId)]
    rider_id: String,
    active_deliveries: i32,
    completed_deliveries: i32,
    /// Assigned or picked up, oldest first.
    active: Vec<DeliveryView>,
    /// Newest completion first.
    recent_completed: Vec<DeliveryView>,
}

#[utoipa::path(
    get,
    path = "/riders/{id}/deliveries",
    operation_id = "get_rider_deliveries",
    summary = "A rider's counters, active deliveries and recent completions",
    params(("id" = inline(RiderId), Path, description = "The rider")),
    security(("bearer" = [])),
    tag = "reads",
    responses(
        (status = 200, description = "The rider's deliveries", body = RiderView),
        RiderProblems,
    )
)]
pub(crate) async fn get(
    State(pool): State<PgPool>,
    RiderPath(rider_id): RiderPath,
) -> Result<Json<RiderView>, ApiError> {
    let rider_id = String::from(rider_id);
    // One snapshot: the counters and the lists come from the same projector commit.
    let mut tx = pool.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let counts: Option<(i32, i32)> = sqlx::query!(
        "select active_deliveries, completed_deliveries from riders where rider_id = $1",
        &rider_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| (r.active_deliveries, r.completed_deliveries));
    let Some((active_deliveries, completed_deliveries)) = counts else {
        return Err(ApiError::RiderNotFound);
    };
    // Dynamic: a DeliveryRow is read through its FromRow, which parses the domain's types;
    // query_as! builds a struct field by field and cannot. DELIVERY_COLUMNS is its one list.
    let active: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from deliveries where rider_id = $1 and status = any($2) \
         order by created_at, delivery_id"
    ))
    .bind(&rider_id)
    .bind([Status::RiderAssigned.as_str(), Status::PickedUp.as_str()].as_slice())
    .fetch_all(&mut *tx)
    .await?;
    // Dynamic, for the same reason.
    let recent_completed: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from deliveries where rider_id = $1 and status = $2 \
         order by completed_at desc, delivery_id desc limit $3"
    ))
    .bind(&rider_id)
    .bind(Status::Completed.as_str())
    .bind(RECENT_COMPLETED)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(RiderView {
        rider_id,
        active_deliveries,
        completed_deliveries,
        active: active.into_iter().map(DeliveryView::from).collect(),
        recent_completed: (recent_completed.into_iter())
            .map(DeliveryView::from)
            .collect(),
    }))
}
