//! Rows in PostgreSQL's binary COPY format, for the rebuild's bulk writes: `COPY ... FROM STDIN
//! (FORMAT binary)` skips the planner, the executor's per-row work and the text parsing of
//! `INSERT ... SELECT unnest(...)`, and takes the rows as one stream.
//!
//! Values are encoded as sqlx encodes bound parameters (timestamps as whole microseconds since
//! 2000, truncated), so a row copied here equals the same row inserted by the live projector.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// A COPY stream being built: the header, then rows, then [`CopyRows::finish`].
pub struct CopyRows {
    buf: Vec<u8>,
    rows: usize,
    /// A value longer than the format can say (2 GiB; Postgres itself takes 1 GiB): `finish`
    /// refuses the stream rather than send a wrong length.
    oversize: bool,
}

impl Default for CopyRows {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyRows {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self {
            buf,
            rows: 0,
            oversize: false,
        }
    }

    /// Starts a row of `columns` values; exactly that many must follow.
    pub fn row(&mut self, columns: i16) -> &mut Self {
        self.rows += 1;
        self.buf.extend_from_slice(&columns.to_be_bytes());
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn value(&mut self, bytes: &[u8]) -> &mut Self {
        let len = self.length(bytes.len());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// `len` as the format's 32-bit length, noting a value too long to send.
    fn length(&mut self, len: usize) -> i32 {
        i32::try_from(len).unwrap_or_else(|_| {
            self.oversize = true;
            -1
        })
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.value(value.as_bytes())
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.value(value.as_bytes())
    }

    pub fn text_or_null(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, value: DateTime<Utc>) -> &mut Self {
        // chrono's whole range (about 262,000 years either way) fits in i64 microseconds.
        let micros = (value - postgres_epoch())
            .num_microseconds()
            .expect("any chrono time is within i64 microseconds of 2000");
        self.int8(micros)
    }

    pub fn timestamptz_or_null(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(value) => self.timestamptz(value),
            None => self.null(),
        }
    }

    /// A `jsonb` value: format version 1, then the JSON text, serialized in place.
    pub fn jsonb(&mut self, value: &impl Serialize) -> serde_json::Result<&mut Self> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0i32.to_be_bytes());
        self.buf.push(1);
        serde_json::to_writer(&mut self.buf, value)?;
        let len = self.length(self.buf.len() - at - 4);
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(self)
    }

    /// The stream with its trailer, ready to send; an error if a value was too long.
    pub fn finish(mut self) -> Result<Vec<u8>, sqlx::Error> {
        if self.oversize {
            return Err(sqlx::Error::Encode(
                "a value is too long for a binary COPY field".into(),
            ));
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        Ok(self.buf)
    }
}

/// Sends `rows` with `statement` (a `copy ... from stdin (format binary)`).
pub(crate) async fn send_copy(
    conn: &mut PgConnection,
    statement: &str,
    rows: CopyRows,
) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(rows.finish()?).await?;
    copy.finish().await?;
    Ok(())
}

/// A value that cannot be serialized fails its batch as the data's fault.
pub(crate) fn encode_error(error: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(error))
}

fn postgres_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("2000-01-01 00:00 UTC exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_has_header_rows_and_trailer() {
        let mut rows = CopyRows::new();
        rows.row(2).int4(7).null();
        assert_eq!(rows.rows(), 1);
        let bytes = rows.finish().expect("no oversize value");
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn timestamps_are_microseconds_since_2000_truncated() {
        let mut rows = CopyRows::new();
        let at = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 1)
            .single()
            .expect("a valid time")
            + chrono::Duration::nanoseconds(1_999);
        rows.timestamptz(at);
        let bytes = rows.finish().expect("no oversize value");
        let value = &bytes[19..19 + 12];
        assert_eq!(&value[..4], &8i32.to_be_bytes());
        assert_eq!(&value[4..], &1_000_001i64.to_be_bytes());
    }

    #[test]
    fn jsonb_is_version_one_then_the_text_with_its_length() {
        let mut rows = CopyRows::new();
        rows.jsonb(&serde_json::json!({"a": 1}))
            .expect("serializable");
        let bytes = rows.finish().expect("no oversize value");
        let value = &bytes[19..bytes.len() - 2];
        assert_eq!(&value[..4], &8i32.to_be_bytes());
        assert_eq!(&value[4..], b"\x01{\"a\":1}");
    }
}
