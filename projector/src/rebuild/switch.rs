//! The switch: the last stretch of the replay with the live projector held between two
//! batches, then the swap of the rebuilt tables into `public`, in one transaction.

use super::replay::{Reader, Replay};
use super::{RebuildConfig, RebuildError, replay_partitions};
use crate::batch;
use crate::catalog::Projection;
use platform::read_model::READER_ROLE;
use rdkafka::consumer::StreamConsumer;
use sqlx::{Acquire, PgConnection};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The last stretch and the swap, with the live projector held between two batches.
pub(super) struct Switch<'a> {
    pub(super) config: &'a RebuildConfig,
    /// Asked for the partition count once more before the swap.
    pub(super) consumer: &'a StreamConsumer,
    pub(super) partitions: &'a [i32],
    /// The projections rebuilt, whose tables are swapped in.
    pub(super) chosen: &'a [&'static dyn Projection],
    pub(super) names: &'a [&'static str],
    pub(super) schema: &'a str,
}

pub(super) enum Switched {
    /// Switched; the old tables kept in this schema, if asked to.
    Done(Option<String>),
    /// The live projector could not be held, or the last stretch took too long: try later.
    NotYet,
    Interrupted,
}

impl Switch<'_> {
    pub(super) async fn run(
        &self,
        readers: &mut [Reader<'_>],
        replay: &mut Replay,
        shutdown: &CancellationToken,
    ) -> Result<Switched, RebuildError> {
        let live_subscription = self.config.live_subscription();
        let mut conn = replay.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Neither a long live batch nor a long query on an old table may stall us (and the
        // readers queued behind our table locks) for long: give up and try again instead.
        sqlx::query!("set local lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let locked = batch::lock_partitions(&mut tx, &live_subscription, self.partitions).await;
        if lock_timed_out(&locked) {
            return Ok(Switched::NotYet);
        }
        locked?;
        let live = batch::stored_offsets(&mut tx, &live_subscription, self.partitions).await?;
        replay.check_not_ahead(&live)?;
        let deadline = Instant::now() + self.config.switch_timeout;
        while replay.gap(&live) > 0 {
            if shutdown.is_cancelled() {
                return Ok(Switched::Interrupted);
            }
            if Instant::now() > deadline {
                tracing::info!(
                    gap = replay.gap(&live),
                    "last stretch too slow; switching later"
                );
                return Ok(Switched::NotYet);
            }
            replay
                .step(readers, &live, Duration::from_millis(50), shutdown)
                .await?;
        }
        // Partitions added since the start were never replayed (and the live projector reads
        // them from their first event): switching now would lose their events.
        let now = replay_partitions(self.consumer, &self.config.topic)?;
        if now.len() != self.partitions.len() {
            return Err(RebuildError::PartitionsChanged {
                topic: self.config.topic.clone(),
                before: self.partitions.len(),
                now: now.len(),
            });
        }
        if !self.take_tables(&mut tx, deadline).await? {
            tracing::info!("the old tables stayed busy; switching later");
            return Ok(Switched::NotYet);
        }
        let swapped = self.swap(&mut tx).await;
        if lock_timed_out(&swapped) {
            return Ok(Switched::NotYet);
        }
        let kept = swapped?;
        tx.commit().await?;
        Ok(Switched::Done(kept))
    }

    /// Locks every old table the swap replaces, all or none, without ever waiting while
    /// holding one. A reader holds one table and then asks for another (a stats query reads
    /// several); a switch that waited for the first while holding the second would deadlock
    /// with it, and the deadlock detector might pick the reader. So each try takes them with
    /// NOWAIT, and a busy table undoes the try; false when `deadline` passes first.
    async fn take_tables(
        &self,
        tx: &mut PgConnection,
        deadline: Instant,
    ) -> Result<bool, sqlx::Error> {
        let mut tables = Vec::new();
        for projection in self.chosen {
            for table in projection.tables() {
                let existing: bool = sqlx::query_scalar!(
                    r#"select to_regclass($1) is not null as "existing!""#,
                    format!("public.{table}"),
                )
                .fetch_one(&mut *tx)
                .await?;
                if existing {
                    tables.push(format!("public.{table}"));
                }
            }
        }
        if tables.is_empty() {
            return Ok(true);
        }
        // Dynamic, like every statement here that names a table or schema: named at run time.
        let lock = format!(
            "lock table {} in access exclusive mode nowait",
            tables.join(", ")
        );
        loop {
            sqlx::query!("savepoint take_tables")
                .execute(&mut *tx)
                .await?;
            let taken = sqlx::raw_sql(&lock).execute(&mut *tx).await;
            if !lock_timed_out(&taken) {
                taken?;
                return Ok(true);
            }
            sqlx::query!("rollback to savepoint take_tables")
                .execute(&mut *tx)
                .await?;
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Moves the rebuilt tables into `public` in place of the old ones (dropped, or moved to a
    /// `retired_...` schema), marks the projections live, and drops the staging schema with the
    /// working tables left in it. One transaction: readers see all of it or none.
    async fn swap(&self, tx: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        let kept = self.config.keep_old.then(|| {
            format!(
                "retired_{}_{}",
                self.names.join("_"),
                chrono::Utc::now().format("%Y%m%d_%H%M%S")
            )
        });
        if let Some(kept) = &kept {
            // Dynamic: a schema named at run time (so are the statements below that move tables).
            sqlx::raw_sql(&format!("create schema {kept}"))
                .execute(&mut *tx)
                .await?;
        }
        let reader_role: bool = sqlx::query_scalar!(
            r#"select exists (select 1 from pg_roles where rolname = $1::text) as "exists!""#,
            READER_ROLE,
        )
        .fetch_one(&mut *tx)
        .await?;
        for projection in self.chosen {
            for table in projection.tables() {
                let existing: bool = sqlx::query_scalar!(
                    r#"select to_regclass($1) is not null as "existing!""#,
                    format!("public.{table}"),
                )
                .fetch_one(&mut *tx)
                .await?;
                let mut statements = Vec::new();
                if existing {
                    statements.push(match &kept {
                        Some(kept) => format!("alter table public.{table} set schema {kept}"),
                        None => format!("drop table public.{table}"),
                    });
                }
                statements.push(format!(
                    "alter table {}.{table} set schema public",
                    self.schema
                ));
                if reader_role {
                    statements.push(format!("grant select on public.{table} to {READER_ROLE}"));
                }
                sqlx::raw_sql(&statements.join(";\n"))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query!(
                "insert into projections (name, rebuilt_at) values ($1, now()) \
                 on conflict (name) do update set rebuilt_at = excluded.rebuilt_at",
                projection.name(),
            )
            .execute(&mut *tx)
            .await?;
        }
        // Dynamic: the staging schema, named at run time.
        sqlx::raw_sql(&format!("drop schema {} cascade", self.schema))
            .execute(&mut *tx)
            .await?;
        Ok(kept)
    }
}

fn lock_timed_out<T>(result: &Result<T, sqlx::Error>) -> bool {
    matches!(result, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03"))
}
