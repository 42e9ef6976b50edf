//! The command API's guarantees under stress, against a real Postgres: concurrent duplicates
//! of a command with one Idempotency-Key, key expiry, bounds on time and concurrency, and a
//! database that goes away and comes back.

mod idempotency;
mod limits;
mod outage;
mod support;
