//! The command side: HTTP command endpoints over an event store with a transactional outbox.
//!
//! Layers, each knowing only the one below: HTTP (`http`) -> `command` (one transaction:
//! idempotency claim, `domain::Delivery::decide`, append) -> event store + outbox (`store`).

pub mod auth;
mod command;
pub mod error;
mod http;
pub mod idempotency;
pub mod limits;
pub mod relay;
pub mod serve;
pub mod store;

pub use auth::Tokens;
pub use http::{AppState, app, app_with_limits};
pub use limits::Limits;
