//! `deliveries`: each delivery's current state, with the events waiting for it
//! (`parked_events`) and the messages that can never apply (`poison_messages`).

use super::{PlannedBatch, Projection, async_trait};
use crate::copy::{CopyRows, encode_error, send_copy};
use crate::plan::{DeliveryRow, PoisonMessage};
use crate::poison;
use sqlx::PgConnection;
use sqlx::types::Json;
use std::collections::HashSet;
use uuid::Uuid;

pub use platform::read_model::DELIVERY_COLUMNS;

/// Each delivery's current state. Every other projection is computed from its transitions,
/// so every batch writes it.
pub struct Deliveries;

#[async_trait]
impl Projection for Deliveries {
    fn name(&self) -> &'static str {
        "deliveries"
    }

    fn about(&self) -> &'static str {
        "current state of each delivery (with parked and poison messages)"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["deliveries", "parked_events", "poison_messages"]
    }

    fn ddl(&self) -> &'static str {
        include_str!("../../sql/deliveries.sql")
    }

    fn indexes(&self) -> &'static str {
        include_str!("../../sql/deliveries.indexes.sql")
    }

    fn always_written(&self) -> bool {
        true
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<&DeliveryRow> = batch.plan.deliveries.iter().collect();
        upsert(conn, &rows).await?;
        write_waiting(conn, batch).await
    }

    /// The deliveries the working copy did not have yet are copied in; those it had (a
    /// rebuild of another projection copies nothing in, but a resumed one has rows) upserted.
    async fn load(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        let (known, new): (Vec<&DeliveryRow>, Vec<&DeliveryRow>) = (batch.plan.deliveries.iter())
            .partition(|row| batch.already_staged.contains(&row.state.delivery_id));
        copy_in(conn, &new).await?;
        upsert(conn, &known).await?;
        write_waiting(conn, batch).await
    }
}

/// Inserts or advances `rows` (a delivery's row only ever moves to a higher version).
async fn upsert(conn: &mut PgConnection, rows: &[&DeliveryRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let states = || rows.iter().map(|row| &row.state);
    // Borrowed texts and JSON wrappers are bound `as _`: the macro's parameter check knows
    // only owned types. The statement and its column types are still checked.
    sqlx::query!(
        "insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff,
             rider_id, cancel_reason, created_at, assigned_at, picked_up_at, completed_at,
             cancelled_at, version, updated_at)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
             $6::jsonb[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[],
             $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::bigint[],
             $15::timestamptz[])
         on conflict (delivery_id) do update set
             status = excluded.status, order_ref = excluded.order_ref,
             customer_id = excluded.customer_id, pickup = excluded.pickup,
             dropoff = excluded.dropoff, rider_id = excluded.rider_id,
             cancel_reason = excluded.cancel_reason, created_at = excluded.created_at,
             assigned_at = excluded.assigned_at, picked_up_at = excluded.picked_up_at,
             completed_at = excluded.completed_at, cancelled_at = excluded.cancelled_at,
             version = excluded.version, updated_at = excluded.updated_at
         where deliveries.version < excluded.version",
        &states()
            .map(|s| s.delivery_id.as_uuid())
            .collect::<Vec<_>>(),
        states().map(|s| s.status.as_str()).collect::<Vec<_>>() as _,
        states().map(|s| s.order_ref.as_str()).collect::<Vec<_>>() as _,
        states().map(|s| s.customer_id.as_str()).collect::<Vec<_>>() as _,
        states().map(|s| Json(&s.pickup)).collect::<Vec<_>>() as _,
        states().map(|s| Json(&s.dropoff)).collect::<Vec<_>>() as _,
        states()
            .map(|s| s.rider_id.as_ref().map(|r| r.as_str()))
            .collect::<Vec<_>>() as _,
        states()
            .map(|s| s.cancel_reason.as_ref().map(|r| r.as_str()))
            .collect::<Vec<_>>() as _,
        &states().map(|s| s.created_at).collect::<Vec<_>>(),
        states().map(|s| s.assigned_at).collect::<Vec<_>>() as _,
        states().map(|s| s.picked_up_at).collect::<Vec<_>>() as _,
        states().map(|s| s.completed_at).collect::<Vec<_>>() as _,
        states().map(|s| s.cancelled_at).collect::<Vec<_>>() as _,
        &rows.iter().map(|row| row.version).collect::<Vec<_>>(),
        &rows.iter().map(|row| row.updated_at).collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A replay's new rows, in one COPY.
async fn copy_in(conn: &mut PgConnection, rows: &[&DeliveryRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut copy = CopyRows::new();
    for row in rows {
        let s = &row.state;
        copy.row(15)
            .uuid(s.delivery_id.as_uuid())
            .text(s.status.as_str())
            .text(s.order_ref.as_str())
            .text(s.customer_id.as_str())
            .jsonb(&s.pickup)
            .map_err(encode_error)?
            .jsonb(&s.dropoff)
            .map_err(encode_error)?
            .text_or_null(s.rider_id.as_ref().map(|r| r.as_str()))
            .text_or_null(s.cancel_reason.as_ref().map(|r| r.as_str()))
            .timestamptz(s.created_at)
            .timestamptz_or_null(s.assigned_at)
            .timestamptz_or_null(s.picked_up_at)
            .timestamptz_or_null(s.completed_at)
            .timestamptz_or_null(s.cancelled_at)
            .int8(row.version)
            .timestamptz(row.updated_at);
    }
    send_copy(
        conn,
        // COPY takes no parameters and returns no rows: nothing for the query macros to check.
        &format!("copy deliveries ({DELIVERY_COLUMNS}) from stdin (format binary)"),
        copy,
    )
    .await
}

/// The events that wait (parked, or leaving the parking table) and the poison messages.
async fn write_waiting(
    conn: &mut PgConnection,
    batch: &PlannedBatch<'_>,
) -> Result<(), sqlx::Error> {
    let plan = batch.plan;
    if !plan.parked.is_empty() {
        sqlx::query!(
            "insert into parked_events \
                 (delivery_id, version, applied_version, envelope, kafka_partition, kafka_offset)
             select delivery_id, version, applied_version, envelope, kafka_partition, kafka_offset
             from jsonb_to_recordset($1) as p(delivery_id uuid, version bigint,
                 applied_version bigint, envelope jsonb, kafka_partition int, kafka_offset bigint)
             on conflict do nothing",
            Json(&plan.parked) as _,
        )
        .execute(&mut *conn)
        .await?;
    }
    if !plan.unparked.is_empty() {
        let (ids, versions): (Vec<Uuid>, Vec<i64>) = plan.unparked.iter().copied().unzip();
        sqlx::query!(
            "delete from parked_events p using unnest($1::uuid[], $2::bigint[]) as u(id, version) \
             where p.delivery_id = u.id and p.version = u.version",
            &ids,
            &versions,
        )
        .execute(&mut *conn)
        .await?;
    }
    if !plan.poison.is_empty() {
        let skipped = skipped_messages(conn, batch.topic, &plan.poison).await?;
        let records: Vec<poison::Record> = (plan.poison.iter())
            .filter(|p| !skipped.contains(&(p.kafka_partition, p.kafka_offset)))
            .map(poison::Record::of)
            .collect();
        poison::insert(conn, batch.topic, &records).await?;
    }
    Ok(())
}

/// The poison messages an operator already skipped (`projector dlq skip`): a rebuild that
/// reads them again does not make them stuck again.
async fn skipped_messages(
    conn: &mut PgConnection,
    topic: &str,
    poison: &[PoisonMessage],
) -> Result<HashSet<(i32, i64)>, sqlx::Error> {
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = poison
        .iter()
        .map(|p| (p.kafka_partition, p.kafka_offset))
        .unzip();
    // The `in` leaves only skips of one message, whose position is never null.
    let rows = sqlx::query!(
        r#"select kafka_partition as "kafka_partition!", kafka_offset as "kafka_offset!"
           from public.dlq_actions
           where action = 'skip' and topic = $1
             and (kafka_partition, kafka_offset) in (select * from unnest($2::int[], $3::bigint[]))"#,
        topic,
        &partitions,
        &offsets,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.kafka_partition, row.kafka_offset))
        .collect())
}
