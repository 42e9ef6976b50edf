//! The query API over HTTP against a real Postgres: a fresh database with the read migrations
//! per test, seeded by plain SQL with fixed ids and times, driven without a socket.
//!
//! One test binary; its modules live in `api/`.

#[path = "api/bounds.rs"]
mod bounds;
#[path = "api/deliveries.rs"]
mod deliveries;
#[path = "api/errors.rs"]
mod errors;
#[path = "api/faults.rs"]
mod faults;
#[path = "api/freshness.rs"]
mod freshness;
#[path = "api/history.rs"]
mod history;
#[path = "api/listing.rs"]
mod listing;
#[path = "api/outage.rs"]
mod outage;
#[path = "api/reader_role.rs"]
mod reader_role;
#[path = "api/riders.rs"]
mod riders;
#[path = "api/stats.rs"]
mod stats;
#[path = "api/support.rs"]
mod support;

/// Every snapshot goes through here, so they all live in `tests/snapshots/`.
fn snapshot(name: &str, value: &impl serde::Serialize) {
    insta::assert_json_snapshot!(name, value);
}
