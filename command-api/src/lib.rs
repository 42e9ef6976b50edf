//! The command side: HTTP command endpoints over an event store with a transactional outbox.
//!
//! Layers, each knowing only the one below: HTTP (`http`: a `context::CommandContext` and a
//! command) -> `service` (load, `domain::Delivery::decide`, append; answers with an
//! `Outcome`) -> event store + outbox (`store`), written by a group commit shared with
//! concurrent commands (`group_commit`), or in the command's own transaction when it has an
//! idempotency key.

pub mod auth;
pub mod context;
pub mod error;
pub mod group_commit;
mod http;
pub mod idempotency;
pub mod limits;
pub mod metrics;
mod openapi;
pub mod relay;
pub mod serve;
pub mod service;
pub mod store;
pub mod wake;

pub use auth::Tokens;
pub use http::{AppState, app, app_with_limits, openapi};
pub use limits::Limits;
