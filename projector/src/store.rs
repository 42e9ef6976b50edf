//! The projector's SQL: one transaction per batch that applies the planned writes and stores
//! the consumed offsets beside them.

use crate::catalog::Writes;
use crate::copy::CopyRows;
use crate::poison;
use crate::projection::{
    self, Current, Decoded, DeliveryRow, HistoryRow, Incoming, ParkedEvent, Plan, PoisonMessage,
};
use domain::DeliveryId;
use platform::read_model::{self as contract, DELIVERY_COLUMNS, HISTORY_COLUMNS};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// Which consumer's offsets, on which topic.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub group: String,
    pub topic: String,
}

/// Where a batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The query tables the query API reads (schema `public`), those of the projections listed
    /// live in `projections`. Read-your-writes waiters are woken when the batch commits.
    Live,
    /// A rebuild's schema of its own, with the tables `writes` names. Nobody waits on it.
    Staging { schema: String, writes: Writes },
}

impl Target {
    /// The `search_path` its batches run with.
    pub(crate) fn search_path(&self) -> String {
        match self {
            Target::Live => "public".to_owned(),
            Target::Staging { schema, .. } => format!("\"{}\"", schema.replace('"', "\"\"")),
        }
    }
}

/// What one applied batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Messages read again below the stored offset (a rebalance or restart overlap), skipped.
    pub already_consumed: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub parked: usize,
    pub poison: usize,
}

/// Applies `messages` in one transaction: the query-table writes, the parked and poison
/// records, and the next offsets. Either all of it commits or none of it does.
pub async fn apply_batch(
    pool: &PgPool,
    subscription: &Subscription,
    messages: &[Incoming],
) -> Result<Applied, sqlx::Error> {
    apply_batch_to(pool, &Target::Live, subscription, messages).await
}

/// `apply_batch` into `target`. Every statement names its tables unqualified, so the one
/// `search_path` set here decides which version of the query tables the batch writes.
pub async fn apply_batch_to(
    pool: &PgPool,
    target: &Target,
    subscription: &Subscription,
    messages: &[Incoming],
) -> Result<Applied, sqlx::Error> {
    // Parsed before the transaction opens: it holds its locks no longer than the SQL needs.
    let decoded: Vec<Decoded> = messages.iter().map(Decoded::new).collect();
    let mut tx = pool.begin().await?;
    // One round trip for both settings. The offsets commit with the rows they caused: a commit
    // lost in a database crash loses both, and the batch is read again. So the commit need not
    // wait for the WAL flush.
    sqlx::query(
        "select set_config('search_path', $1, true), \
                set_config('synchronous_commit', 'off', true)",
    )
    .bind(target.search_path())
    .execute(&mut *tx)
    .await?;
    let partitions: Vec<i32> = messages
        .iter()
        .map(|m| m.partition)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Two projector instances briefly share a partition during a rebalance. The partition
    // lock makes the second wait for the first, and then read the offsets it stored.
    lock_partitions(&mut tx, subscription, &partitions).await?;
    // Read after the partition locks: a rebuild switches tables while holding them, so a
    // batch that waited for a switch writes the tables it switched in.
    let writes = match target {
        Target::Live => Writes::of(
            sqlx::query_scalar::<_, String>("select name from projections")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(String::as_str),
        ),
        Target::Staging { writes, .. } => *writes,
    };
    let stored = stored_offsets(&mut tx, subscription, &partitions).await?;
    let fresh: Vec<Decoded> = decoded
        .into_iter()
        .filter(|m| {
            stored
                .get(&m.partition())
                .is_none_or(|next| m.offset() >= *next)
        })
        .collect();
    let already_consumed = messages.len() - fresh.len();
    if fresh.is_empty() {
        tx.rollback().await?;
        return Ok(Applied {
            already_consumed,
            ..Applied::default()
        });
    }

    let mut ids: Vec<Uuid> = fresh
        .iter()
        .filter_map(Decoded::delivery_id)
        .map(|id| id.as_uuid())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let current = load_current(&mut tx, &ids).await?;
    // Which deliveries the staging tables already hold (only a rebuild copies rows in).
    let existing: HashSet<DeliveryId> = match target {
        Target::Live => HashSet::new(),
        Target::Staging { .. } => current.rows.keys().copied().collect(),
    };
    let plan = projection::plan_decoded(current, fresh);
    match target {
        Target::Live => {
            let rows: Vec<&DeliveryRow> = plan.deliveries.iter().collect();
            write(&mut tx, subscription, writes, &plan, &rows).await?;
        }
        // A rebuild's tables are written by it alone, a partition's batches one after the
        // other, and its plan applies each version once: rows it adds cannot be there yet, so
        // they are copied in, without the conflict checks of the live upserts.
        Target::Staging { .. } => {
            copy_in(&mut tx, writes, &plan, &existing).await?;
            let rows: Vec<&DeliveryRow> = (plan.deliveries.iter())
                .filter(|row| existing.contains(&row.state.delivery_id))
                .collect();
            let rest = Writes {
                history: false,
                ..writes
            };
            write(&mut tx, subscription, rest, &plan, &rows).await?;
        }
    }
    if *target == Target::Live {
        // Wakes read-your-writes waiters in the query API once this commits, telling them
        // which deliveries reached which version.
        sqlx::query("select pg_notify($1, payload) from unnest($2::text[]) as payload")
            .bind(contract::CHANNEL)
            .bind(notifications(&plan))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Applied {
        already_consumed,
        applied: plan.applied(),
        duplicates: plan.duplicates,
        parked: plan.parked.len(),
        poison: plan.poison.len(),
    })
}

/// The NOTIFY payloads announcing the deliveries `plan` changed and their versions (see
/// `platform::read_model::notification_payloads`).
pub fn notifications(plan: &Plan) -> Vec<String> {
    contract::notification_payloads(
        (plan.deliveries.iter()).map(|row| (row.state.delivery_id.as_uuid(), row.version)),
    )
}

/// Takes the subscription's partition locks until the transaction ends, in partition order so
/// that two lockers never deadlock. Held by every batch, and by a rebuild while it switches.
pub async fn lock_partitions(
    conn: &mut PgConnection,
    subscription: &Subscription,
    partitions: &[i32],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || p::text, 0)) \
         from unnest($3::int[]) as p order by p",
    )
    .bind(&subscription.group)
    .bind(&subscription.topic)
    .bind(partitions)
    .execute(conn)
    .await?;
    Ok(())
}

/// The next offset to read per partition, as last committed with the read model.
pub async fn stored_offsets(
    conn: &mut PgConnection,
    subscription: &Subscription,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "select kafka_partition, next_offset from consumer_offsets \
         where consumer_group = $1 and topic = $2 and kafka_partition = any($3)",
    )
    .bind(&subscription.group)
    .bind(&subscription.topic)
    .bind(partitions)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

pub(crate) async fn load_current(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Current, sqlx::Error> {
    let rows: Vec<Json<DeliveryRow>> = sqlx::query_scalar(
        "select to_jsonb(d) from deliveries d where delivery_id = any($1) \
         order by delivery_id for update",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    // One round trip for the parked events and the skipped versions. The skips are operator
    // decisions, not part of any projection: a rebuild (whose search_path is its own schema)
    // honours them too, so they are read from `public` by name.
    type Waiting = (Json<Vec<ParkedEvent>>, Json<Vec<(Uuid, i64)>>);
    let (parked, skipped): Waiting = sqlx::query_as(
        "select (select coalesce(jsonb_agg(to_jsonb(p)), '[]') from parked_events p
                 where delivery_id = any($1)),
                (select coalesce(jsonb_agg(jsonb_build_array(delivery_id, version)), '[]')
                 from public.dlq_actions
                 where action = 'skip' and version is not null and delivery_id = any($1))",
    )
    .bind(ids)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Current {
        rows: rows
            .into_iter()
            .map(|Json(row)| (DeliveryId::from_uuid(row.state.delivery_id.as_uuid()), row))
            .collect(),
        parked: parked.0,
        skipped: (skipped.0.into_iter())
            .map(|(id, version)| (DeliveryId::from_uuid(id), version))
            .collect(),
    })
}

/// Many rows per statement: each table gets one statement per batch, fed as arrays.
pub(crate) async fn write(
    conn: &mut PgConnection,
    subscription: &Subscription,
    writes: Writes,
    plan: &Plan,
    deliveries: &[&DeliveryRow],
) -> Result<(), sqlx::Error> {
    upsert_deliveries(conn, deliveries).await?;
    if writes.history && !plan.history.is_empty() {
        write_history(conn, &plan.history).await?;
    }
    if writes.counts && !plan.rider_changes.is_empty() {
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
        // New riders first, at zero: a CHECK constraint is tested on the proposed row before
        // ON CONFLICT resolves, so negative changes cannot ride on the insert.
        sqlx::query(
            "insert into riders (rider_id, last_event_at)
             select * from unnest($1::text[], $2::timestamptz[]) on conflict do nothing",
        )
        .bind(&riders)
        .bind(&at)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "update riders r set
                 active_deliveries = r.active_deliveries + c.active,
                 completed_deliveries = r.completed_deliveries + c.completed,
                 last_event_at = greatest(r.last_event_at, c.at)
             from unnest($1::text[], $2::int[], $3::int[], $4::timestamptz[])
                 as c(rider_id, active, completed, at)
             where r.rider_id = c.rider_id",
        )
        .bind(&riders)
        .bind(&active)
        .bind(&completed)
        .bind(&at)
        .execute(&mut *conn)
        .await?;
    }
    if writes.counts && !plan.status_changes.is_empty() {
        let statuses: Vec<&str> = plan.status_changes.keys().map(|s| s.as_str()).collect();
        let changes: Vec<i64> = plan.status_changes.values().copied().collect();
        sqlx::query(
            "update status_counts s set deliveries = s.deliveries + c.change \
             from unnest($1::text[], $2::bigint[]) as c(status, change) where s.status = c.status",
        )
        .bind(&statuses)
        .bind(&changes)
        .execute(&mut *conn)
        .await?;
    }
    if !plan.parked.is_empty() {
        sqlx::query(
            "insert into parked_events \
                 (delivery_id, version, applied_version, envelope, kafka_partition, kafka_offset)
             select delivery_id, version, applied_version, envelope, kafka_partition, kafka_offset
             from jsonb_to_recordset($1) as p(delivery_id uuid, version bigint,
                 applied_version bigint, envelope jsonb, kafka_partition int, kafka_offset bigint)
             on conflict do nothing",
        )
        .bind(Json(&plan.parked))
        .execute(&mut *conn)
        .await?;
    }
    if !plan.unparked.is_empty() {
        let (ids, versions): (Vec<Uuid>, Vec<i64>) = plan.unparked.iter().copied().unzip();
        sqlx::query(
            "delete from parked_events p using unnest($1::uuid[], $2::bigint[]) as u(id, version) \
             where p.delivery_id = u.id and p.version = u.version",
        )
        .bind(&ids)
        .bind(&versions)
        .execute(&mut *conn)
        .await?;
    }
    if !plan.poison.is_empty() {
        let skipped = skipped_messages(conn, &subscription.topic, &plan.poison).await?;
        let records: Vec<poison::Record> = (plan.poison.iter())
            .filter(|p| !skipped.contains(&(p.kafka_partition, p.kafka_offset)))
            .map(poison::Record::of)
            .collect();
        poison::insert(conn, &subscription.topic, &records).await?;
    }
    if plan.next_offsets.is_empty() {
        return Ok(()); // a `dlq` action: it moves no offset
    }
    store_offsets(conn, subscription, &plan.next_offsets).await
}

/// Moves the subscription's stored offsets forward (never back) to `next`.
pub(crate) async fn store_offsets(
    conn: &mut PgConnection,
    subscription: &Subscription,
    next: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().unzip();
    sqlx::query(
        "insert into consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
         select $1, $2, p, o from unnest($3::int[], $4::bigint[]) as t(p, o)
         on conflict (consumer_group, topic, kafka_partition) do update set
             next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),
             updated_at = now()",
    )
    .bind(&subscription.group)
    .bind(&subscription.topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *conn)
    .await?;
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
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "select kafka_partition, kafka_offset from public.dlq_actions
         where action = 'skip' and topic = $1
           and (kafka_partition, kafka_offset) in (select * from unnest($2::int[], $3::bigint[]))",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Inserts or advances `rows` (a delivery's row only ever moves to a higher version).
async fn upsert_deliveries(
    conn: &mut PgConnection,
    rows: &[&DeliveryRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let states = || rows.iter().map(|row| &row.state);
    sqlx::query(&format!(
        "insert into deliveries ({DELIVERY_COLUMNS})
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
         where deliveries.version < excluded.version"
    ))
    .bind(
        states()
            .map(|s| s.delivery_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(states().map(|s| s.status.as_str()).collect::<Vec<_>>())
    .bind(states().map(|s| s.order_ref.as_str()).collect::<Vec<_>>())
    .bind(states().map(|s| s.customer_id.as_str()).collect::<Vec<_>>())
    .bind(states().map(|s| Json(&s.pickup)).collect::<Vec<_>>())
    .bind(states().map(|s| Json(&s.dropoff)).collect::<Vec<_>>())
    .bind(
        states()
            .map(|s| s.rider_id.as_ref().map(|r| r.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        states()
            .map(|s| s.cancel_reason.as_ref().map(|r| r.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(states().map(|s| s.created_at).collect::<Vec<_>>())
    .bind(states().map(|s| s.assigned_at).collect::<Vec<_>>())
    .bind(states().map(|s| s.picked_up_at).collect::<Vec<_>>())
    .bind(states().map(|s| s.completed_at).collect::<Vec<_>>())
    .bind(states().map(|s| s.cancelled_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.updated_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// A rebuild's new rows: the deliveries its working copy did not have yet, and the history.
async fn copy_in(
    conn: &mut PgConnection,
    writes: Writes,
    plan: &Plan,
    existing: &HashSet<DeliveryId>,
) -> Result<(), sqlx::Error> {
    let mut deliveries = CopyRows::new();
    for row in &plan.deliveries {
        let s = &row.state;
        if existing.contains(&s.delivery_id) {
            continue;
        }
        deliveries
            .row(15)
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
    if deliveries.rows() > 0 {
        copy(
            conn,
            &format!("copy deliveries ({DELIVERY_COLUMNS}) from stdin (format binary)"),
            deliveries,
        )
        .await?;
    }
    if !writes.history || plan.history.is_empty() {
        return Ok(());
    }
    let mut history = CopyRows::new();
    for r in &plan.history {
        history
            .row(15)
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
    copy(
        conn,
        &format!("copy delivery_history ({HISTORY_COLUMNS}) from stdin (format binary)"),
        history,
    )
    .await
}

async fn copy(conn: &mut PgConnection, statement: &str, rows: CopyRows) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    Ok(())
}

fn encode_error(error: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(error))
}

/// History rows as one array per column: Postgres decodes binary arrays much faster than it
/// parses one large JSON document, and history is most of what a batch writes.
async fn write_history(conn: &mut PgConnection, rows: &[HistoryRow]) -> Result<(), sqlx::Error> {
    let column = |f: fn(&HistoryRow) -> Uuid| rows.iter().map(f).collect::<Vec<_>>();
    let texts = |f: fn(&HistoryRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "insert into delivery_history ({HISTORY_COLUMNS})
         select * from unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::int[],
             $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::uuid[],
             $11::uuid[], $12::jsonb[], $13::int[], $14::bigint[], $15::text[])
         on conflict do nothing"
    ))
    .bind(column(|r| r.delivery_id))
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(column(|r| r.event_id))
    .bind(texts(|r| &r.event_type))
    .bind(rows.iter().map(|r| r.schema_version).collect::<Vec<_>>())
    .bind(texts(|r| &r.actor_role))
    .bind(texts(|r| &r.actor_id))
    .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
    .bind(column(|r| r.correlation_id))
    .bind(column(|r| r.causation_id))
    .bind(rows.iter().map(|r| Json(&r.data)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kafka_partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kafka_offset).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.hash.as_deref()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
