//! `history`: every event of every delivery (`delivery_history`), as published.

use super::{PlannedBatch, Projection, async_trait};
use crate::copy::{CopyRows, encode_error, send_copy};
use crate::plan::HistoryRow;
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

pub use platform::read_model::HISTORY_COLUMNS;

pub struct History;

#[async_trait]
impl Projection for History {
    fn name(&self) -> &'static str {
        "history"
    }

    fn about(&self) -> &'static str {
        "every event of every delivery"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["delivery_history"]
    }

    fn ddl(&self) -> &'static str {
        include_str!("../../sql/history.sql")
    }

    fn indexes(&self) -> &'static str {
        include_str!("../../sql/history.indexes.sql")
    }

    /// History rows as one array per column: Postgres decodes binary arrays much faster than
    /// it parses one large JSON document, and history is most of what a batch writes.
    async fn write(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        let rows = &batch.plan.history;
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&HistoryRow) -> Uuid| rows.iter().map(f).collect::<Vec<_>>();
        let texts = |f: fn(&HistoryRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
        // Borrowed texts and JSON wrappers are bound `as _`: the macro's parameter check knows
        // only owned types. The statement and its column types are still checked.
        sqlx::query!(
            "insert into delivery_history (delivery_id, version, event_id, event_type,
                 schema_version, actor_role, actor_id, occurred_at, recorded_at, correlation_id,
                 causation_id, data, kafka_partition, kafka_offset, hash)
             select * from unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::int[],
                 $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::uuid[],
                 $11::uuid[], $12::jsonb[], $13::int[], $14::bigint[], $15::text[])
             on conflict do nothing",
            &column(|r| r.delivery_id),
            &rows.iter().map(|r| r.version).collect::<Vec<_>>(),
            &column(|r| r.event_id),
            texts(|r| &r.event_type) as _,
            &rows.iter().map(|r| r.schema_version).collect::<Vec<_>>(),
            texts(|r| &r.actor_role) as _,
            texts(|r| &r.actor_id) as _,
            &rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>(),
            &column(|r| r.correlation_id),
            &column(|r| r.causation_id),
            rows.iter().map(|r| Json(&r.data)).collect::<Vec<_>>() as _,
            &rows.iter().map(|r| r.kafka_partition).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.kafka_offset).collect::<Vec<_>>(),
            rows.iter().map(|r| r.hash.as_deref()).collect::<Vec<_>>() as _,
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Every applied event is a new row: one COPY.
    async fn load(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        if batch.plan.history.is_empty() {
            return Ok(());
        }
        let mut copy = CopyRows::new();
        for r in &batch.plan.history {
            copy.row(15)
                .uuid(r.delivery_id)
                .int8(r.version)
                .uuid(r.event_id)
                .text(&r.event_type)
                .int4(r.schema_version)
                .text(&r.actor_role)
                .text(&r.actor_id)
                .timestamptz(r.occurred_at)
                .timestamptz(r.recorded_at)
                .uuid(r.correlation_id)
                .uuid(r.causation_id)
                .jsonb(&r.data)
                .map_err(encode_error)?
                .int4(r.kafka_partition)
                .int8(r.kafka_offset)
                .text_or_null(r.hash.as_deref());
        }
        send_copy(
            conn,
            // COPY takes no parameters and returns no rows: nothing for the macros to check.
            &format!("copy delivery_history ({HISTORY_COLUMNS}) from stdin (format binary)"),
            copy,
        )
        .await
    }
}
