//! `counts`: deliveries per status (`status_counts`) and each rider's workload (`riders`).

use super::{PlannedBatch, Projection, async_trait};
use sqlx::PgConnection;

pub struct Counts;

#[async_trait]
impl Projection for Counts {
    fn name(&self) -> &'static str {
        "counts"
    }

    fn about(&self) -> &'static str {
        "deliveries per status and each rider's workload"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["riders", "status_counts"]
    }

    fn ddl(&self) -> &'static str {
        include_str!("../../sql/counts.sql")
    }

    fn indexes(&self) -> &'static str {
        include_str!("../../sql/counts.indexes.sql")
    }

    /// Adds the plan's changes: exact, since the plan applies each version once. A replay
    /// writes them the same way (there is nothing to bulk-load in a few counters).
    async fn write(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        let plan = batch.plan;
        if plan.rider_changes.is_empty() && plan.status_changes.is_empty() {
            return Ok(());
        }
        // Batches of other lanes, and of other instances, update these same few rows at once,
        // each in whatever order its plan joins them: two could each hold a row the other
        // waits for. One lock per schema (the live tables, or a rebuild's) orders them. It is
        // the last lock a batch takes (the offsets after it are its own partitions'), so it
        // is held only from here to the commit.
        sqlx::query!(
            "select pg_advisory_xact_lock(hashtextextended('counts/' || current_schema(), 0))"
        )
        .execute(&mut *conn)
        .await?;
        if !plan.rider_changes.is_empty() {
            let mut riders = Vec::new();
            let mut active = Vec::new();
            let mut completed = Vec::new();
            let mut at = Vec::new();
            for (rider, change) in &plan.rider_changes {
                riders.push(rider.as_str().to_owned());
                active.push(change.active);
                completed.push(change.completed);
                at.push(change.last_event_at);
            }
            // New riders first, at zero: a CHECK constraint is tested on the proposed row
            // before ON CONFLICT resolves, so negative changes cannot ride on the insert.
            sqlx::query!(
                "insert into riders (rider_id, last_event_at)
                 select * from unnest($1::text[], $2::timestamptz[]) on conflict do nothing",
                &riders,
                &at as _,
            )
            .execute(&mut *conn)
            .await?;
            sqlx::query!(
                "update riders r set
                     active_deliveries = r.active_deliveries + c.active,
                     completed_deliveries = r.completed_deliveries + c.completed,
                     last_event_at = greatest(r.last_event_at, c.at)
                 from unnest($1::text[], $2::int[], $3::int[], $4::timestamptz[])
                     as c(rider_id, active, completed, at)
                 where r.rider_id = c.rider_id",
                &riders,
                &active,
                &completed,
                &at as _,
            )
            .execute(&mut *conn)
            .await?;
        }
        if !plan.status_changes.is_empty() {
            let statuses: Vec<&str> = plan.status_changes.keys().map(|s| s.as_str()).collect();
            let changes: Vec<i64> = plan.status_changes.values().copied().collect();
            sqlx::query!(
                "update status_counts s set deliveries = s.deliveries + c.change \
                 from unnest($1::text[], $2::bigint[]) as c(status, change) \
                 where s.status = c.status",
                &statuses as _,
                &changes,
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
