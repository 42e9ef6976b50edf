//! The query API over HTTP against a real Postgres: a fresh database with the read migrations
//! per test, seeded by plain SQL with fixed ids and times, driven without a socket.
//!
//! One test binary; its modules live beside this file, its snapshots in `snapshots/`.

mod bounds;
mod contract;
mod dashboard;
mod deliveries;
mod errors;
mod faults;
mod freshness;
mod history;
mod listing;
mod live;
mod outage;
mod reader_role;
mod riders;
mod stats;
mod support;

/// Every snapshot goes through here, so they all live in `tests/api/snapshots/`.
fn snapshot(name: &str, value: &impl serde::Serialize) {
    insta::assert_json_snapshot!(name, value);
}
