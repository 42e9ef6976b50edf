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

    /// `None` for anything this API did not issue.
    pub fn decode(raw: &str) -> Option<Self> {
        if raw.len() != LEN * 2 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = (0..LEN)
            .map(|i| u8::from_str_radix(raw.get(i * 2..i * 2 + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let (micros, id) = bytes.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().ok()?);
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros)?,
            delivery_id: Uuid::from_slice(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
