//! End-to-end tests against the real stack: local Postgres, a real Kafka-protocol broker
//! (nisshi, started per test), and the relay, projector and both APIs.

mod isolation;
mod live;
mod pipeline;
mod projector_failures;
mod rebuild;
mod relay;
mod relay_healing;
