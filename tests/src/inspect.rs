//! What the end-to-end tests check the stack's read model by: against the event store, and
//! against itself before and after a disturbance.

use crate::TestStack;
use serde_json::Value;
use uuid::Uuid;

impl TestStack {
    /// Checks the whole read model against the event store: every event projected exactly
    /// once, each delivery at its last version and status, and every counter exact.
    pub async fn assert_read_model_matches_event_store(&self) {
        let stored: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(
            "select delivery_id, version, event_id from events order by delivery_id, version",
        )
        .fetch_all(&self.write)
        .await
        .expect("events");
        let projected: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(
            "select delivery_id, version, event_id from delivery_history \
             order by delivery_id, version",
        )
        .fetch_all(&self.read)
        .await
        .expect("history");
        assert_eq!(projected, stored, "history differs from the event store");

        // The last event of each delivery names its status (delivery.picked_up -> picked_up).
        let expected: Vec<(Uuid, i64, String)> = sqlx::query_as(
            "select distinct on (delivery_id) delivery_id, version, \
                    substr(event_type, length('delivery.') + 1) \
             from events order by delivery_id, version desc",
        )
        .fetch_all(&self.write)
        .await
        .expect("last events");
        let rows: Vec<(Uuid, i64, String)> =
            sqlx::query_as("select delivery_id, version, status from deliveries order by 1")
                .fetch_all(&self.read)
                .await
                .expect("deliveries");
        assert_eq!(rows, expected, "current state differs from the event store");

        let counted: Vec<(String, i64)> = sqlx::query_as(
            "select s.status, count(d.delivery_id) from status_counts s \
             left join deliveries d on d.status = s.status group by s.status order by 1",
        )
        .fetch_all(&self.read)
        .await
        .expect("counts from rows");
        let kept: Vec<(String, i64)> =
            sqlx::query_as("select status, deliveries from status_counts order by 1")
                .fetch_all(&self.read)
                .await
                .expect("kept counts");
        assert_eq!(kept, counted, "status counts are not exact");

        let riders_expected: Vec<(String, i64, i64)> = sqlx::query_as(
            "select rider_id, \
                    count(*) filter (where status in ('rider_assigned', 'picked_up')), \
                    count(*) filter (where status = 'completed') \
             from deliveries where rider_id is not null group by rider_id order by 1",
        )
        .fetch_all(&self.read)
        .await
        .expect("riders from rows");
        let riders_kept: Vec<(String, i64, i64)> = sqlx::query_as(
            "select rider_id, active_deliveries::bigint, completed_deliveries::bigint \
             from riders where active_deliveries > 0 or completed_deliveries > 0 order by 1",
        )
        .fetch_all(&self.read)
        .await
        .expect("riders");
        let riders_expected: Vec<_> = riders_expected
            .into_iter()
            .filter(|(_, active, completed)| active + completed > 0)
            .collect();
        assert_eq!(riders_kept, riders_expected, "rider counters are not exact");

        let (parked, poison): (i64, i64) = sqlx::query_as(
            "select (select count(*) from parked_events), (select count(*) from poison_messages)",
        )
        .fetch_one(&self.read)
        .await
        .expect("parked and poison");
        assert_eq!((parked, poison), (0, 0));
    }

    /// Everything the read model shows, to compare before and after a disturbance.
    pub async fn read_model(&self) -> Value {
        sqlx::query_scalar(
            "select jsonb_build_object(
                'deliveries', (select jsonb_agg(to_jsonb(d) order by delivery_id) from deliveries d),
                'history', (select jsonb_agg(to_jsonb(h) - 'kafka_offset' - 'kafka_partition'
                            order by delivery_id, version) from delivery_history h),
                'riders', (select jsonb_agg(to_jsonb(r) order by rider_id) from riders r),
                'counts', (select jsonb_object_agg(status, deliveries) from status_counts))",
        )
        .fetch_one(&self.read)
        .await
        .expect("read model")
    }

    /// Messages the projector group has consumed, over all partitions.
    pub async fn consumed_offsets(&self) -> i64 {
        sqlx::query_scalar("select coalesce(sum(next_offset), 0)::bigint from consumer_offsets")
            .fetch_one(&self.read)
            .await
            .expect("offsets")
    }
}
