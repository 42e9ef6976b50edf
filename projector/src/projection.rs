//! A projection: a named set of query tables, the SQL that creates them, and how a planned
//! batch writes them, live or in a rebuild's replay. The built-in ones are `deliveries`,
//! `history` and `counts`; the [`Catalog`](crate::catalog::Catalog) lists them. A new
//! projection is one more implementation of [`Projection`] and its SQL.

mod counts;
mod deliveries;
mod history;

pub use async_trait::async_trait;
pub use counts::Counts;
pub use deliveries::{DELIVERY_COLUMNS, Deliveries};
pub use history::{HISTORY_COLUMNS, History};

use crate::plan::Plan;
use domain::DeliveryId;
use sqlx::PgConnection;
use std::collections::HashSet;
use std::fmt;

/// One projection. Every statement names its tables unqualified: the batch sets the
/// `search_path` to the schema being written (`public`, or a rebuild's own).
#[async_trait]
pub trait Projection: Send + Sync {
    /// Its name in the `projections` table and on the command line.
    fn name(&self) -> &'static str;
    /// One line for `--help` and error messages.
    fn about(&self) -> &'static str;
    /// The tables it owns, as its DDL creates them.
    fn tables(&self) -> &'static [&'static str];
    /// Creates the tables, unqualified: run with `search_path` set to the target schema.
    fn ddl(&self) -> &'static str;
    /// Creates the indexes its own writes do not need. A rebuild runs it once its replay has
    /// caught up: one sort per index is much cheaper than row-by-row upkeep.
    fn indexes(&self) -> &'static str;

    /// Whether every batch writes it, whether or not `projections` lists it: true only for
    /// the state every other projection is computed from (`deliveries`), so a rebuild of any
    /// projection builds a working copy of it too.
    fn always_written(&self) -> bool {
        false
    }

    /// Writes a planned batch into tables others may write too (the live tables): upserts
    /// guarded by version, or changes the plan makes exact.
    async fn write(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error>;

    /// Writes a planned batch of a rebuild's replay. Its tables are written by the replay
    /// alone, a partition's batches one after the other, and the plan applies each version
    /// once: rows it adds cannot be there yet, so they may be bulk-loaded (COPY) without the
    /// conflict checks of `write`. By default the same as `write`.
    async fn load(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        self.write(conn, batch).await
    }
}

impl fmt::Debug for dyn Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A planned batch as each projection's writer sees it.
pub struct PlannedBatch<'a> {
    pub plan: &'a Plan,
    /// The topic its messages were read from (poison records name it).
    pub topic: &'a str,
    /// In a replay, the deliveries the staging tables held before this batch; empty live.
    pub already_staged: &'a HashSet<DeliveryId>,
}
