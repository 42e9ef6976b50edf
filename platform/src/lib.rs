//! What the services share, so that each contract has one definition (ADR 0007):
//! - `read_model`: the read database's schema contract between the projector (writer) and the
//!   query API (reader): row types, column lists, the NOTIFY channel and its payload, the
//!   reader role;
//! - `stored`: an event store row and its conversion to the domain's envelope;
//! - `problem`: problem+json errors;
//! - `openapi`: what both APIs' OpenAPI contracts share, and the router serving spec and docs;
//! - `service`: start-up every binary repeats: tracing, the shutdown signal, serving a router,
//!   and Prometheus metrics (`service::metrics`).

pub mod openapi;
pub mod problem;
pub mod read_model;
pub mod service;
pub mod stored;
