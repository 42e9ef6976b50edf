//! The test kit every crate's tests share, and the real stack for the end-to-end tests.
//!
//! For any crate's tests: a Kafka-protocol broker process and a publisher to it ([`broker`]),
//! a fresh migrated database on the local Postgres and a way to tamper with the event store
//! ([`db`]), polling with a deadline ([`wait`]), and a check of answers against an API's
//! OpenAPI contract ([`contract`]). The command
//! API, the projector and the query API take this crate as a dev-dependency (cargo allows that
//! cycle for tests); event fixtures live beside the events, in `domain::fixtures`.
//!
//! For the end-to-end tests: [`TestStack`], the relay, projector and both APIs running
//! in-process over a broker and fresh write and read databases, each of which a test can stop,
//! kill and start again; a [`CommandClient`] that walks deliveries through the HTTP API;
//! [`redact`] for snapshots; [`Scrape`], a `/metrics` endpoint read and parsed; [`sse`] to read
//! the query API's live streams and [`Browser`], headless chromium, to drive its dashboard.

pub mod broker;
mod browser;
mod client;
pub mod contract;
pub mod db;
mod inspect;
mod redact;
mod scrape;
pub mod sse;
mod stack;
pub mod wait;

pub use broker::{Broker, Publisher, free_port};
pub use browser::Browser;
pub use client::{CommandClient, Fate};
pub use contract::Contract;
pub use db::{FreshDatabase, admin_url, tamper};
pub use redact::redact;
pub use scrape::{Sample, Scrape};
pub use stack::{Monitors, TestStack};
pub use wait::eventually;

/// The topic the relay publishes to and the projectors read.
pub const TOPIC: &str = "delivery.events";
/// The consumer group of the stack's projectors.
pub const PROJECTOR_GROUP: &str = "e2e-projector";
pub const DISPATCHER: &str = "e2e-dispatcher-token";
pub const ADMIN: &str = "e2e-admin-token";
pub const READER: &str = "e2e-reader-token";

/// Riders `rider-1` ... `rider-9` each have the token `e2e-rider-N-token`.
pub fn rider_token(n: u32) -> String {
    format!("e2e-rider-{n}-token")
}
