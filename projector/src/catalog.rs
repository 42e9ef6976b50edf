//! The projections the projector knows. The live projector writes the ones listed in the read
//! database's `projections` table (and `deliveries`, always); `rebuild` builds any of them anew
//! from the first event and swaps it in. The built-in catalog is [`Catalog::BUILT_IN`]; a
//! caller with a projection of its own passes a catalog that lists it (see `run_with` and
//! `rebuild_with`).

pub use crate::projection::Projection;
use crate::projection::{Counts, Deliveries, History};

/// Each delivery's current state: every other projection is computed from its transitions.
pub const DELIVERIES: &dyn Projection = &Deliveries;
pub const HISTORY: &dyn Projection = &History;
pub const COUNTS: &dyn Projection = &Counts;

/// The built-in projections.
pub const ALL: [&dyn Projection; 3] = [DELIVERIES, HISTORY, COUNTS];

/// A list of projections, each table owned by one of them.
#[derive(Debug, Clone, Copy)]
pub struct Catalog {
    projections: &'static [&'static dyn Projection],
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::BUILT_IN
    }
}

impl Catalog {
    pub const BUILT_IN: Catalog = Catalog::new(&ALL);

    /// A catalog of `projections`, which must include one that is always written (the state
    /// the others are computed from, `DELIVERIES` for the built-in ones).
    pub const fn new(projections: &'static [&'static dyn Projection]) -> Catalog {
        Catalog { projections }
    }

    pub fn projections(&self) -> &'static [&'static dyn Projection] {
        self.projections
    }

    pub fn by_name(&self, name: &str) -> Option<&'static dyn Projection> {
        self.projections.iter().copied().find(|p| p.name() == name)
    }

    /// What a live batch writes, given the names the `projections` table lists: those, and
    /// the ones always written. A listed name this build does not know is left alone.
    pub fn written<'a>(
        &self,
        listed: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'static dyn Projection> {
        let listed: Vec<&str> = listed.into_iter().collect();
        (self.projections.iter().copied())
            .filter(|p| p.always_written() || listed.contains(&p.name()))
            .collect()
    }

    /// What a rebuild of `chosen` builds and writes: the ones always written (a working copy
    /// when they are not chosen), then the chosen ones, each once.
    pub fn with_always_written(
        &self,
        chosen: &[&'static dyn Projection],
    ) -> Vec<&'static dyn Projection> {
        let mut built: Vec<&'static dyn Projection> = (self.projections.iter().copied())
            .filter(|p| p.always_written())
            .collect();
        for projection in chosen {
            if !built.iter().any(|b| b.name() == projection.name()) {
                built.push(*projection);
            }
        }
        built
    }
}

/// A built-in projection by name.
pub fn by_name(name: &str) -> Option<&'static dyn Projection> {
    Catalog::BUILT_IN.by_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(projections: &[&dyn Projection]) -> Vec<&'static str> {
        projections.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn every_table_is_owned_by_one_projection() {
        let mut tables: Vec<&str> = ALL
            .iter()
            .flat_map(|p| p.tables().iter().copied())
            .collect();
        let count = tables.len();
        tables.sort_unstable();
        tables.dedup();
        assert_eq!(tables.len(), count);
    }

    #[test]
    fn each_ddl_creates_exactly_its_tables() {
        for projection in ALL {
            let created: Vec<&str> = projection
                .ddl()
                .split("create table ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            assert_eq!(created, projection.tables(), "{}", projection.name());
        }
    }

    #[test]
    fn a_batch_writes_deliveries_and_the_listed_projections() {
        let catalog = Catalog::BUILT_IN;
        assert_eq!(
            names(&catalog.written(["deliveries", "counts"])),
            ["deliveries", "counts"]
        );
        assert_eq!(
            names(&catalog.written(["counts"])),
            ["deliveries", "counts"]
        );
        assert_eq!(
            names(&catalog.written(["history", "counts", "later"])),
            ["deliveries", "history", "counts"]
        );
        assert_eq!(by_name("counts").map(|p| p.name()), Some("counts"));
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn a_rebuild_builds_a_working_copy_of_deliveries() {
        let catalog = Catalog::BUILT_IN;
        assert_eq!(
            names(&catalog.with_always_written(&[COUNTS])),
            ["deliveries", "counts"]
        );
        assert_eq!(
            names(&catalog.with_always_written(&[COUNTS, DELIVERIES])),
            ["deliveries", "counts"]
        );
    }
}
