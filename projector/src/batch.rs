//! The live batch transaction: one per batch, which takes the partition locks, skips what the
//! stored offsets say was applied, plans the rest, has each projection write its part, stores
//! the consumed offsets beside those writes and, live, wakes the query API's waiters.

use crate::catalog::Catalog;
use crate::plan::{self, Current, Decoded, DeliveryRow, Incoming, ParkedEvent, Plan};
use crate::projection::{PlannedBatch, Projection};
use domain::DeliveryId;
use platform::read_model;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use uuid::Uuid;

/// Which consumer's offsets, on which topic.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub group: String,
    pub topic: String,
}

/// Where a batch is written.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The query tables the query API reads (schema `public`): those of the catalog's
    /// projections listed live in `projections`. Read-your-writes waiters are woken when the
    /// batch commits.
    Live(Catalog),
    /// A rebuild's schema of its own, with the tables of `projections`. Nobody waits on it.
    Staging {
        schema: String,
        projections: Vec<&'static dyn Projection>,
    },
}

impl Destination {
    /// The live tables of the built-in projections.
    pub const LIVE: Destination = Destination::Live(Catalog::BUILT_IN);

    /// The `search_path` its batches run with.
    pub(crate) fn search_path(&self) -> String {
        match self {
            Destination::Live(_) => "public".to_owned(),
            Destination::Staging { schema, .. } => {
                format!("\"{}\"", schema.replace('"', "\"\""))
            }
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
    apply_batch_to(pool, &Destination::LIVE, subscription, messages).await
}

/// `apply_batch` into `destination`. Every statement names its tables unqualified, so the one
/// `search_path` set here decides which version of the query tables the batch writes.
pub async fn apply_batch_to(
    pool: &PgPool,
    destination: &Destination,
    subscription: &Subscription,
    messages: &[Incoming],
) -> Result<Applied, sqlx::Error> {
    // Parsed before the transaction opens: it holds its locks no longer than the SQL needs.
    let decoded: Vec<Decoded> = messages.iter().map(Decoded::new).collect();
    let mut tx = pool.begin().await?;
    // One round trip for both settings. The offsets commit with the rows they caused: a commit
    // lost in a database crash loses both, and the batch is read again. So the commit need not
    // wait for the WAL flush.
    sqlx::query!(
        "select set_config('search_path', $1, true) as search_path, \
                set_config('synchronous_commit', 'off', true) as synchronous_commit",
        destination.search_path(),
    )
    .fetch_one(&mut *tx)
    .await?;
    let partitions: Vec<i32> = (messages.iter().map(|m| m.partition))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Two projector instances briefly share a partition during a rebalance. The partition
    // lock makes the second wait for the first, and then read the offsets it stored.
    lock_partitions(&mut tx, subscription, &partitions).await?;
    // Read after the partition locks: a rebuild switches tables while holding them, so a
    // batch that waited for a switch writes the tables it switched in.
    let projections = match destination {
        Destination::Live(catalog) => live_projections(&mut tx, catalog).await?,
        Destination::Staging { projections, .. } => projections.clone(),
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
    match destination {
        Destination::Live(_) => {
            let plan = plan::plan_decoded(current, fresh);
            write_live(&mut tx, subscription, &projections, &plan).await?;
            notify_waiters(&mut tx, &plan).await?;
            tx.commit().await?;
            Ok(applied(&plan, already_consumed))
        }
        Destination::Staging { .. } => {
            // Which deliveries the staging tables already hold (only a rebuild copies rows in).
            let already_staged: HashSet<DeliveryId> = current.rows.keys().copied().collect();
            let plan = plan::plan_decoded(current, fresh);
            let batch = PlannedBatch {
                plan: &plan,
                topic: &subscription.topic,
                already_staged: &already_staged,
            };
            for projection in &projections {
                projection.load(&mut tx, &batch).await?;
            }
            store_offsets(&mut tx, subscription, &plan.next_offsets).await?;
            tx.commit().await?;
            Ok(applied(&plan, already_consumed))
        }
    }
}

fn applied(plan: &Plan, already_consumed: usize) -> Applied {
    Applied {
        already_consumed,
        applied: plan.applied(),
        duplicates: plan.duplicates,
        parked: plan.parked.len(),
        poison: plan.poison.len(),
    }
}

/// Wakes read-your-writes waiters in the query API once the transaction commits, telling them
/// which deliveries reached which version.
pub(crate) async fn notify_waiters(
    conn: &mut PgConnection,
    plan: &Plan,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "select pg_notify($1, payload) from unnest($2::text[]) as payload",
        read_model::CHANNEL,
        &notifications(plan),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The NOTIFY payloads announcing the deliveries `plan` changed and their versions (see
/// `platform::read_model::notification_payloads`).
pub fn notifications(plan: &Plan) -> Vec<String> {
    read_model::notification_payloads(
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
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || p::text, 0)) \
         from unnest($3::int[]) as p order by p",
        &subscription.group,
        &subscription.topic,
        partitions,
    )
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
    let rows = sqlx::query!(
        "select kafka_partition, next_offset from consumer_offsets \
         where consumer_group = $1 and topic = $2 and kafka_partition = any($3)",
        &subscription.group,
        &subscription.topic,
        partitions,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.kafka_partition, row.next_offset))
        .collect())
}

pub(crate) async fn load_current(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Current, sqlx::Error> {
    let rows: Vec<Json<DeliveryRow>> = sqlx::query_scalar!(
        r#"select to_jsonb(d) as "row!: Json<DeliveryRow>" from deliveries d
           where delivery_id = any($1) order by delivery_id for update"#,
        ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    // One round trip for the parked events and the skipped versions. The skips are operator
    // decisions, not part of any projection: a rebuild (whose search_path is its own schema)
    // honours them too, so they are read from `public` by name.
    let waiting = sqlx::query!(
        r#"select (select coalesce(jsonb_agg(to_jsonb(p)), '[]') from parked_events p
                   where delivery_id = any($1)) as "parked!: Json<Vec<ParkedEvent>>",
                  (select coalesce(jsonb_agg(jsonb_build_array(delivery_id, version)), '[]')
                   from public.dlq_actions
                   where action = 'skip' and version is not null and delivery_id = any($1))
                  as "skipped!: Json<Vec<(Uuid, i64)>>""#,
        ids,
    )
    .fetch_one(&mut *conn)
    .await?;
    let (parked, skipped) = (waiting.parked, waiting.skipped);
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

/// Writes a planned batch into the live tables of `projections`, then moves the stored
/// offsets to the plan's (a `dlq` action's plan moves none).
pub(crate) async fn write_live(
    conn: &mut PgConnection,
    subscription: &Subscription,
    projections: &[&'static dyn Projection],
    plan: &Plan,
) -> Result<(), sqlx::Error> {
    let batch = PlannedBatch {
        plan,
        topic: &subscription.topic,
        already_staged: &HashSet::new(),
    };
    for projection in projections {
        projection.write(conn, &batch).await?;
    }
    if plan.next_offsets.is_empty() {
        return Ok(());
    }
    store_offsets(conn, subscription, &plan.next_offsets).await
}

/// The projections a live batch writes: those `projections` lists, and those always written.
pub(crate) async fn live_projections(
    conn: &mut PgConnection,
    catalog: &Catalog,
) -> Result<Vec<&'static dyn Projection>, sqlx::Error> {
    let listed: Vec<String> = sqlx::query_scalar!("select name from projections")
        .fetch_all(conn)
        .await?;
    Ok(catalog.written(listed.iter().map(String::as_str)))
}

/// Moves the subscription's stored offsets forward (never back) to `next`.
pub(crate) async fn store_offsets(
    conn: &mut PgConnection,
    subscription: &Subscription,
    next: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().unzip();
    sqlx::query!(
        "insert into consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
         select $1, $2, p, o from unnest($3::int[], $4::bigint[]) as t(p, o)
         on conflict (consumer_group, topic, kafka_partition) do update set
             next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),
             updated_at = now()",
        &subscription.group,
        &subscription.topic,
        &partitions,
        &offsets,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
