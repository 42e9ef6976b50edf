//! `GET /stats`: the live operations numbers.

use crate::error::ApiError;
use crate::openapi::StatsProblems;
use axum::Json;
use axum::extract::State;
use domain::Status;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct Stats {
    deliveries_by_status: ByStatus,
    #[serde(flatten)]
    numbers: Numbers,
}

/// Every status, always present, in lifecycle order (also sent by `/stats/stream`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct ByStatus {
    created: i64,
    rider_assigned: i64,
    picked_up: i64,
    completed: i64,
    cancelled: i64,
}

impl ByStatus {
    pub(crate) fn count_mut(&mut self, status: Status) -> &mut i64 {
        match status {
            Status::Created => &mut self.created,
            Status::RiderAssigned => &mut self.rider_assigned,
            Status::PickedUp => &mut self.picked_up,
            Status::Completed => &mut self.completed,
            Status::Cancelled => &mut self.cancelled,
        }
    }
}

/// Everything but the status counts, read in one statement.
#[derive(Serialize, ToSchema)]
struct Numbers {
    /// Riders with at least one assigned or picked-up delivery.
    active_riders: i64,
    /// Deliveries completed since the start of the current UTC day.
    completed_today: i64,
    /// Seconds from creation to completion, over today's completions.
    avg_completion_seconds_today: Option<f64>,
    p90_completion_seconds_today: Option<f64>,
    /// Events waiting for a missing earlier version: non-zero for long means a gap.
    parked_events: i64,
    /// Messages the projector could not decode.
    poison_messages: i64,
}

#[utoipa::path(
    get,
    path = "/stats",
    operation_id = "get_stats",
    summary = "The live operations numbers",
    security(("bearer" = [])),
    tag = "reads",
    responses(
        (status = 200, description = "Counts by status, riders, today's completions", body = Stats),
        StatsProblems,
    )
)]
pub(crate) async fn get(State(pool): State<PgPool>) -> Result<Json<Stats>, ApiError> {
    // One snapshot, so the numbers add up to one projector commit.
    let mut tx = pool.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let counts = sqlx::query!("select status, deliveries from status_counts")
        .fetch_all(&mut *tx)
        .await?;
    // Today's completions come from the `completed_at` index; the status counts from the
    // projector's exact counters rather than a count over every delivery.
    let numbers = sqlx::query_as!(
        Numbers,
        r#"
        with today as (
            select extract(epoch from completed_at - created_at)::float8 as seconds
            from deliveries
            where completed_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
        )
        select
            (select count(*) from riders where active_deliveries > 0) as "active_riders!",
            (select count(*) from today) as "completed_today!",
            (select avg(seconds) from today) as avg_completion_seconds_today,
            (select percentile_cont(0.9) within group (order by seconds) from today)
                as p90_completion_seconds_today,
            (select count(*) from parked_events) as "parked_events!",
            (select count(*) from poison_messages) as "poison_messages!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut by_status = ByStatus::default();
    for row in counts {
        let (status, deliveries) = (row.status, row.deliveries);
        match Status::parse(&status) {
            Some(status) => *by_status.count_mut(status) += deliveries,
            None => tracing::warn!(%status, "status_counts has a status this build does not know"),
        }
    }
    Ok(Json(Stats {
        deliveries_by_status: by_status,
        numbers,
    }))
}
