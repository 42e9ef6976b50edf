//! The projections the projector builds: each a named set of query tables with its DDL. The
//! live projector writes the ones listed in the read database's `projections` table; `rebuild`
//! builds any of them anew from the first event and swaps it in.

/// One projection: the tables it owns and the statements that create them.
#[derive(Debug, PartialEq, Eq)]
pub struct Projection {
    pub name: &'static str,
    pub about: &'static str,
    pub tables: &'static [&'static str],
    /// Creates the tables, unqualified: run with `search_path` set to the target schema.
    pub ddl: &'static str,
    /// Creates the indexes the projector's own writes do not need. A rebuild runs it once its
    /// replay has caught up: one sort per index is much cheaper than row-by-row upkeep.
    pub indexes: &'static str,
}

/// Each delivery's current state. Every other projection is computed from its transitions,
/// so it is always live, and a rebuild of any projection builds a working copy of it.
pub const DELIVERIES: Projection = Projection {
    name: "deliveries",
    about: "current state of each delivery (with parked and poison messages)",
    tables: &["deliveries", "parked_events", "poison_messages"],
    ddl: include_str!("../sql/deliveries.sql"),
    indexes: include_str!("../sql/deliveries.indexes.sql"),
};

pub const HISTORY: Projection = Projection {
    name: "history",
    about: "every event of every delivery",
    tables: &["delivery_history"],
    ddl: include_str!("../sql/history.sql"),
    indexes: include_str!("../sql/history.indexes.sql"),
};

pub const COUNTS: Projection = Projection {
    name: "counts",
    about: "deliveries per status and each rider's workload",
    tables: &["riders", "status_counts"],
    ddl: include_str!("../sql/counts.sql"),
    indexes: include_str!("../sql/counts.indexes.sql"),
};

pub const ALL: [&Projection; 3] = [&DELIVERIES, &HISTORY, &COUNTS];

pub fn by_name(name: &str) -> Option<&'static Projection> {
    ALL.into_iter().find(|p| p.name == name)
}

/// Which of the optional projections a batch writes (`deliveries` always is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    pub history: bool,
    pub counts: bool,
}

impl Writes {
    pub const ALL: Writes = Writes {
        history: true,
        counts: true,
    };

    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Writes {
        let mut writes = Writes {
            history: false,
            counts: false,
        };
        for name in names {
            match name {
                "history" => writes.history = true,
                "counts" => writes.counts = true,
                _ => {}
            }
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_owned_by_one_projection() {
        let mut tables: Vec<&str> = ALL.iter().flat_map(|p| p.tables.iter().copied()).collect();
        let count = tables.len();
        tables.sort_unstable();
        tables.dedup();
        assert_eq!(tables.len(), count);
    }

    #[test]
    fn each_ddl_creates_exactly_its_tables() {
        for projection in ALL {
            let created: Vec<&str> = projection
                .ddl
                .split("create table ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            assert_eq!(created, projection.tables, "{}", projection.name);
        }
    }

    #[test]
    fn writes_name_the_optional_projections() {
        assert_eq!(
            Writes::of(["deliveries", "counts"]),
            Writes {
                history: false,
                counts: true
            }
        );
        assert_eq!(Writes::of(["history", "counts", "later"]), Writes::ALL);
        assert_eq!(by_name("counts"), Some(&COUNTS));
        assert_eq!(by_name("nope"), None);
    }
}
