//! The query side: HTTP reads served only from the read database's query tables, which the
//! projector builds from the event topic. It never sees the write database or Kafka, and it
//! connects as a role that can only read.
//!
//! Code tour: `http` (router, shared state and extractors) -> one module per resource
//! (`deliveries`, `history`, `riders`, `stats`), each with its queries beside its handler;
//! `freshness` waits for the projector for read-your-writes; `cursor` is the keyset
//! pagination position; `auth` and `error` are the boundary; `bounds` limits the work taken
//! on; `metrics` times routes and read-your-writes waits; `config` starts the binary. `live`
//! serves the server-sent event streams (and the dashboard's sessions), `dashboard` the page
//! that follows them.

pub mod auth;
pub mod bounds;
pub mod config;
mod cursor;
mod dashboard;
mod deliveries;
pub mod error;
pub mod freshness;
mod history;
mod http;
mod listener;
pub mod live;
pub mod metrics;
mod openapi;
mod riders;
mod stats;

pub use auth::Tokens;
pub use bounds::{HttpBounds, PoolBounds};
pub use config::{Config, serve};
pub use deliveries::DeliveryView;
pub use error::ApiError;
pub use freshness::FreshnessWatch;
pub use http::{AppState, app, app_with_bounds, openapi};
pub use live::{Live, LiveConfig};
