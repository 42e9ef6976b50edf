//! The staging schema: the rebuild's lock, its tables (created from the projections' DDL),
//! their indexes (built once the replay caught up) and the replay's offsets.

use super::{Offsets, RebuildConfig, RebuildError};
use crate::batch;
use crate::catalog::Projection;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Instant;

/// Takes one session lock per projection on a connection of its own, or refuses.
pub(super) async fn lock_projections(
    pool: &PgPool,
    names: &[&'static str],
) -> Result<PgConnection, RebuildError> {
    let mut conn = pool.acquire().await?.detach();
    for &name in names {
        let locked: bool = sqlx::query_scalar!(
            r#"select pg_try_advisory_lock(hashtextextended('projector rebuild/' || $1, 0))
                   as "locked!""#,
            name,
        )
        .fetch_one(&mut conn)
        .await?;
        if !locked {
            conn.close().await?;
            return Err(RebuildError::AlreadyRunning(name));
        }
    }
    Ok(conn)
}

/// Releases the locks of `lock_projections` before closing their connection: the server
/// frees a closed session's locks only once its backend has exited, which a rebuild started
/// right after this one could otherwise race.
pub(super) async fn release_projections(mut conn: PgConnection) -> Result<(), RebuildError> {
    sqlx::query!("select pg_advisory_unlock_all()")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Creates the staging schema with the tables of `staged` (the chosen projections, plus the
/// `deliveries` ones they are computed from) and the replay's own offsets; or finds it left by
/// an interrupted run. `names` are the chosen projections'.
pub(super) async fn prepare_staging(
    pool: &PgPool,
    schema: &str,
    staged: &[&'static dyn Projection],
    names: &[&'static str],
    topic: &str,
) -> Result<(), RebuildError> {
    let exists: bool = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_namespace where nspname = $1::text) as "exists!""#,
        schema,
    )
    .fetch_one(pool)
    .await?;
    if exists {
        // Dynamic: the schema is this rebuild's, named at run time.
        let recorded: String =
            sqlx::query_scalar(&format!("select topic from {schema}.rebuild_info"))
                .fetch_one(pool)
                .await?;
        if recorded != topic {
            return Err(RebuildError::ForeignStaging {
                schema: schema.to_owned(),
                topic: recorded,
            });
        }
        tracing::info!(%schema, "resuming an interrupted rebuild");
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    // Dynamic: DDL for a schema named at run time, and the projections' own DDL files.
    sqlx::raw_sql(&format!(
        "create schema {schema}; set local search_path = {schema}"
    ))
    .execute(&mut *tx)
    .await?;
    for projection in staged {
        sqlx::raw_sql(projection.ddl()).execute(&mut *tx).await?;
    }
    // Dynamic (raw_sql): DDL, several statements, in the staging schema.
    sqlx::raw_sql(
        "create table consumer_offsets (like public.consumer_offsets including all);
         create table rebuild_info (
             topic text not null,
             projections text[] not null,
             started_at timestamptz not null default now(),
             -- the projections whose indexes (built once the replay caught up) exist
             indexed text[] not null default '{}'
         )",
    )
    .execute(&mut *tx)
    .await?;
    // Dynamic: rebuild_info exists only in a staging schema, which the check database has not.
    sqlx::query("insert into rebuild_info (topic, projections) values ($1, $2)")
        .bind(topic)
        .bind(names)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The projections whose indexes the staging schema has.
pub(super) async fn indexes_built(pool: &PgPool, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    // Dynamic: the schema is this rebuild's, named at run time.
    sqlx::query_scalar(&format!("select indexed from {schema}.rebuild_info"))
        .fetch_one(pool)
        .await
}

/// Creates the chosen projections' indexes in the staging schema: a transaction per
/// projection, all at once (each index build is one backend's sort), each with the mark that
/// its indexes exist. The working copy of `deliveries` (when it is not rebuilt) is dropped at
/// the switch and needs none.
pub(super) async fn build_indexes(
    pool: &PgPool,
    schema: &str,
    chosen: &[&'static dyn Projection],
    built: &[String],
) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let builds = (chosen.iter())
        .filter(|projection| !built.iter().any(|b| b == projection.name()))
        .map(|projection| async move {
            let mut tx = pool.begin().await?;
            // Dynamic: a schema named at run time, then the projection's own index DDL.
            sqlx::raw_sql(&format!("set local search_path = {schema}"))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(projection.indexes())
                .execute(&mut *tx)
                .await?;
            // Dynamic: rebuild_info exists only in a staging schema.
            sqlx::query("update rebuild_info set indexed = array_append(indexed, $1)")
                .bind(projection.name())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        });
    futures::future::try_join_all(builds).await?;
    tracing::info!(elapsed = ?started.elapsed(), "indexes built");
    Ok(())
}

pub(super) async fn staged_offsets(
    pool: &PgPool,
    schema: &str,
    topic: &str,
) -> Result<Offsets, sqlx::Error> {
    // Dynamic: the staging schema's own offsets, named at run time.
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "select kafka_partition, next_offset from {schema}.consumer_offsets where topic = $1"
    ))
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

pub(super) async fn live_offsets(
    pool: &PgPool,
    config: &RebuildConfig,
    partitions: &[i32],
) -> Result<Offsets, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    batch::stored_offsets(&mut conn, &config.live_subscription(), partitions).await
}
