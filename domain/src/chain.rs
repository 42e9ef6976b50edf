//! Tamper evidence: every stored event carries a hash chained to the previous event of the same
//! delivery, so changing or removing a stored event breaks the chain where it happened.
//!
//! The hash is the lowercase hex SHA-256 of the UTF-8 bytes of the event's *canonical form*: one
//! JSON object in the spelling of `crate::canonical_json` (keys sorted by their bytes at every
//! depth, no whitespace, strings escaped as serde_json escapes them, numbers as they read back
//! from the store: a zero of either sign is `0.0`):
//!
//! ```text
//! {"actor":{"id":"desk-1","role":"dispatcher"},"causation_id":"<uuid>","correlation_id":"<uuid>",
//!  "data":{...},"delivery_id":"<uuid>","event_id":"<uuid>","occurred_at":"2026-11-23T12:00:00.000000Z",
//!  "previous_hash":null,"schema_version":1,"type":"delivery.created","version":1}
//! ```
//!
//! (shown wrapped; it is one line). Uuids are lowercase and hyphenated; `occurred_at` is UTC
//! with exactly six fractional digits, the precision Postgres keeps, finer digits dropped;
//! `previous_hash` is the previous version's hash, `null` for version 1. `recorded_at` is left
//! out: the database sets it after the hash is computed. Changing this form breaks every stored
//! chain, so it is as much a contract as the event type names.
//!
//! The form is a function of what the store gives back, not of the value in memory: the command
//! API hashes when appending and the audit re-hashes the stored row, and the two must agree for
//! every event the API accepts (`command-api/tests/store.rs` checks this against Postgres with
//! generated commands). Until 2026-12 the form wrote the sign of a zero (`-0.0`), which the store
//! drops; `verify_chain` still accepts those hashes (see `matches_legacy_zeros`).
//!
//! The hashes are not secret. The chain shows a change made by editing or deleting rows; someone
//! who also rewrites every later hash leaves a chain that verifies on its own, and only copies
//! held elsewhere (the published messages, the read model's history) show it. The audit
//! (`projector audit verify`) compares those copies too.

use crate::EventEnvelope;
use crate::canonical::{Zeros, canonical_json_with, count_zeros};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Zeros beyond this many in one event are not tried with both signs: 2^n forms are too many to
/// try, and no event this domain writes holds more than four (two coordinates, two addresses).
const MAX_LEGACY_ZEROS: u32 = 8;

/// Where a delivery's stored history stops being the one that was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The event's content is not what was hashed when it was appended.
    #[error("version {version} was changed: it does not match its stored hash")]
    Changed { version: i64 },
    /// A gap in the versions: an event was removed.
    #[error("version {version} is missing")]
    Missing { version: i64 },
    /// A version appears again or out of order.
    #[error("version {version} appears where version {expected} should be")]
    OutOfOrder { version: i64, expected: i64 },
    /// No hash stored: appended before the chain existed, or the hash itself was removed.
    #[error("version {version} has no hash")]
    Unhashed { version: i64 },
}

impl ChainError {
    /// The version where the chain breaks.
    pub fn version(&self) -> i64 {
        match self {
            ChainError::Changed { version }
            | ChainError::Missing { version }
            | ChainError::Unhashed { version } => *version,
            ChainError::OutOfOrder { expected, .. } => *expected,
        }
    }
}

impl EventEnvelope {
    /// The canonical form hashed for the chain (see the module documentation).
    pub fn canonical_form(&self, previous: Option<&str>) -> String {
        canonical_json_with(&self.fact(previous), &mut Zeros::Unsigned)
    }

    /// This event's link in its delivery's chain: hex SHA-256 of its canonical form, which
    /// includes `previous`, the hash of the version before (`None` for version 1).
    pub fn chain_hash(&self, previous: Option<&str>) -> String {
        hex_sha256(&self.canonical_form(previous))
    }

    /// Whether `stored` is the hash the earlier form gave this event: the same, except that
    /// some float zeros were spelled `-0.0`. The store keeps no sign for zero, so which zeros
    /// were negative is unknown and every choice is tried; since the sign of a zero is not
    /// information the store holds, accepting any of them hides no change to a stored event.
    fn matches_legacy_zeros(&self, previous: Option<&str>, stored: &str) -> bool {
        let fact = self.fact(previous);
        let zeros = count_zeros(&fact);
        if zeros == 0 || zeros > MAX_LEGACY_ZEROS {
            return false;
        }
        (1..1u64 << zeros).any(|negative| {
            let mut spelling = Zeros::Legacy { negative, seen: 0 };
            hex_sha256(&canonical_json_with(&fact, &mut spelling)) == stored
        })
    }

    /// What the chain covers, as one JSON object.
    fn fact(&self, previous: Option<&str>) -> Value {
        serde_json::json!({
            "event_id": self.event_id,
            "delivery_id": self.delivery_id,
            "version": self.version,
            "type": self.event_type,
            "schema_version": self.schema_version,
            "occurred_at": self.occurred_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "actor": { "role": self.actor.role.as_str(), "id": self.actor.id },
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "data": self.data,
            "previous_hash": previous,
        })
    }
}

fn hex_sha256(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Checks one delivery's stored history, in the order it was loaded: versions 1..=n without
/// gaps, and every stored hash equal to the hash of its event chained to the one before.
/// Reports the first break. Removing the *last* events leaves a shorter chain that is still
/// intact: only a copy elsewhere (the topic, the read model) can show those are gone.
pub fn verify_chain(events: &[EventEnvelope]) -> Result<(), ChainError> {
    let mut previous: Option<&str> = None;
    for (expected, event) in (1..).zip(events) {
        let version = event.version;
        if version > expected {
            return Err(ChainError::Missing { version: expected });
        }
        if version < expected {
            return Err(ChainError::OutOfOrder { version, expected });
        }
        let Some(stored) = event.hash.as_deref() else {
            return Err(ChainError::Unhashed { version });
        };
        if event.chain_hash(previous) != stored && !event.matches_legacy_zeros(previous, stored) {
            return Err(ChainError::Changed { version });
        }
        previous = Some(stored);
    }
    Ok(())
}
