//! The command side: HTTP command endpoints over an event store with a transactional outbox.
//!
//! Layers, each knowing only the one below: HTTP (`http`) -> `domain::Delivery::decide` ->
//! event store + outbox (`store`), in one Postgres transaction per command.

pub mod auth;
pub mod error;
mod http;
mod idempotency;
pub mod relay;
pub mod store;

pub use auth::Tokens;
pub use http::{AppState, app};
