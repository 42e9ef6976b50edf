//! The keyset-pagination cursor: the position after the last item of a page.
//!
//! It is opaque to clients (hex of the created_at microseconds and the delivery id), so the
//! encoding can change without breaking anyone who only sends back what they were given.
//! Microseconds are exactly what Postgres stores, so the position survives the round trip.

use chrono::{DateTime, Utc};
use std::fmt::Write;
use uuid::Uuid;

/// The `(created_at, delivery_id)` of the last item already returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub delivery_id: Uuid,
}

/// 8 bytes of microseconds, then 16 bytes of UUID.
const LEN: usize = 24;

/// The earliest `timestamptz` Postgres holds (4713 BC), in microseconds since the Unix epoch:
/// its `MIN_TIMESTAMP` (microseconds since 2000-01-01) plus 2000-01-01 since 1970.
const PG_MIN_MICROS: i64 = -211_813_488_000_000_000 + 946_684_800_000_000;

/// Microseconds past the latest `timestamptz` Postgres holds (294277 AD), from its
/// `END_TIMESTAMP`. Unreachable in an `i64` of Unix microseconds, but written down so the
/// range check says what it means rather than relying on that.
const PG_END_MICROS: i128 = 9_223_371_331_200_000_000 + 946_684_800_000_000;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(LEN);
        bytes.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.delivery_id.as_bytes());
        bytes
            .iter()
            .fold(String::with_capacity(LEN * 2), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    /// `None` for anything this API did not issue. Every cursor it issues holds a `created_at`
    /// read from Postgres, so a time Postgres cannot store is refused here: it would otherwise
    /// reach the database and fail there ("timestamp out of range") as a 500.
    pub fn decode(raw: &str) -> Option<Self> {
        if raw.len() != LEN * 2 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = (0..LEN)
            .map(|i| u8::from_str_radix(raw.get(i * 2..i * 2 + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let (micros, id) = bytes.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().ok()?);
        if micros < PG_MIN_MICROS || i128::from(micros) >= PG_END_MICROS {
            return None;
        }
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros)?,
            delivery_id: Uuid::from_slice(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(micros: i64, id: u128) -> String {
        format!("{:016x}{id:032x}", micros.cast_unsigned())
    }

    proptest! {
        /// Whatever a client sends, decoding never panics, and what it accepts is a time
        /// Postgres can store that encodes back to the same cursor.
        #[test]
        fn any_string_decodes_to_nothing_or_to_a_storable_cursor(raw in ".{0,64}") {
            if let Some(cursor) = Cursor::decode(&raw) {
                prop_assert!(cursor.created_at.timestamp_micros() >= PG_MIN_MICROS);
                prop_assert_eq!(cursor.encode(), raw.to_lowercase());
            }
        }

        #[test]
        fn any_well_formed_cursor_is_accepted_exactly_in_the_range_postgres_stores(
            micros in any::<i64>(),
            id in any::<u128>(),
        ) {
            let decoded = Cursor::decode(&raw(micros, id));
            // Postgres stores later times than chrono can hold: chrono's limit is the upper one.
            let storable = (PG_MIN_MICROS..=DateTime::<Utc>::MAX_UTC.timestamp_micros())
                .contains(&micros);
            prop_assert_eq!(decoded.is_some(), storable, "{}", micros);
            if let Some(cursor) = decoded {
                prop_assert_eq!(cursor.created_at.timestamp_micros(), micros);
                prop_assert_eq!(cursor.delivery_id.as_u128(), id);
            }
        }
    }

    #[test]
    fn times_postgres_cannot_store_are_refused() {
        assert!(Cursor::decode(&raw(PG_MIN_MICROS, 1)).is_some());
        for micros in [PG_MIN_MICROS - 1, i64::MIN, -(1 << 62)] {
            assert_eq!(Cursor::decode(&raw(micros, 1)), None, "{micros}");
        }
        // The far future is refused too (beyond what a time value here can hold).
        assert_eq!(Cursor::decode(&raw(i64::MAX, 1)), None);
    }

    #[test]
    fn a_cursor_survives_the_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_772_355_600_123_456).expect("valid time"),
            delivery_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        };
        let encoded = cursor.encode();
        assert_eq!(encoded.len(), 48);
        assert_eq!(Cursor::decode(&encoded), Some(cursor));
        assert_eq!(Cursor::decode(&encoded.to_uppercase()), Some(cursor));
        let signed = format!("+{}", &encoded[1..]);
        for garbage in [
            "",
            "abc",
            &encoded[..46],
            &format!("{encoded}00"),
            &"zz".repeat(24),
            &signed,
        ] {
            assert_eq!(Cursor::decode(garbage), None, "{garbage}");
        }
        // Multi-byte characters of the right byte length must not panic on slicing.
        assert_eq!(Cursor::decode(&"é".repeat(24)), None);
    }
}
