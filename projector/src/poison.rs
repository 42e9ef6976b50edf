//! Recording poison must never fail: a record that cannot be written would fail its batch
//! again on every retry and stop every partition in it. Postgres `text` and `jsonb` refuse
//! NUL characters and invalid UTF-8, and a serde error can quote the offending input, so every
//! text that goes into a record is first made storable here; the raw bytes go into `bytea`
//! columns, which hold anything.

use crate::plan::PoisonMessage;
use sqlx::PgConnection;
use uuid::Uuid;

/// Longest error text kept; the rest is cut (an error quoting a huge payload).
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest readable key kept; the raw key is kept whole in `message_key_bytes` up to the
/// payload limit.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most payload bytes kept. Kafka caps messages near 1 MiB by default; a broker configured
/// for more still gives a bounded record.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// A poison message as it is written: every value storable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The key as text: as is when it is valid UTF-8 without NUL, else escaped.
    pub message_key: Option<String>,
    /// The key's bytes (capped like the payload).
    pub message_key_bytes: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
    pub delivery_id: Option<Uuid>,
    pub version: Option<i64>,
}

impl Record {
    pub fn of(poison: &PoisonMessage) -> Record {
        let mut error = storable_text(&poison.error, MAX_ERROR_BYTES);
        let payload = poison.payload.as_deref().map(|payload| {
            if payload.len() > MAX_PAYLOAD_BYTES {
                error.push_str(&format!(
                    " (payload of {} bytes, the first {MAX_PAYLOAD_BYTES} kept)",
                    payload.len()
                ));
            }
            payload[..payload.len().min(MAX_PAYLOAD_BYTES)].to_vec()
        });
        Record {
            kafka_partition: poison.kafka_partition,
            kafka_offset: poison.kafka_offset,
            message_key: poison.message_key.as_deref().map(key_text),
            message_key_bytes: (poison.message_key.as_deref())
                .map(|key| key[..key.len().min(MAX_PAYLOAD_BYTES)].to_vec()),
            payload,
            error,
            delivery_id: poison.delivery_id,
            version: poison.version,
        }
    }

    /// The last resort when even a sanitized record was refused: only numbers and ASCII.
    pub fn bare(&self, why: &str) -> Record {
        Record {
            message_key: None,
            message_key_bytes: None,
            payload: None,
            error: format!(
                "the poison record could not be stored ({}); original error lost",
                why.chars()
                    .filter(char::is_ascii_graphic)
                    .collect::<String>()
            ),
            ..self.clone()
        }
    }
}

/// Text Postgres accepts: NUL written as `\u0000` (and a literal backslash before `u0000`
/// doubled, so the escape is never ambiguous), cut at a character boundary to `max` bytes.
pub fn storable_text(text: &str, max: usize) -> String {
    let escaped = text
        .replace("\\u0000", "\\\\u0000")
        .replace('\0', "\\u0000");
    if escaped.len() <= max {
        return escaped;
    }
    let mut cut = max;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}... ({} more bytes)",
        &escaped[..cut],
        escaped.len() - cut
    )
}

/// A key as readable text: as is when it is valid UTF-8, else `hex:` and its bytes.
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => storable_text(text, MAX_KEY_BYTES),
        Err(_) => {
            let shown = &key[..key.len().min(MAX_KEY_BYTES / 2)];
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            if shown.len() < key.len() {
                format!("hex:{hex}... ({} more bytes)", key.len() - shown.len())
            } else {
                format!("hex:{hex}")
            }
        }
    }
}

/// Writes `records` of `topic`; a record already there (a retry of the same message) takes
/// the new error.
pub async fn insert(
    conn: &mut PgConnection,
    topic: &str,
    records: &[Record],
) -> Result<(), sqlx::Error> {
    for record in records {
        sqlx::query!(
            "insert into poison_messages (topic, kafka_partition, kafka_offset, message_key, \
                 payload, error, message_key_bytes, delivery_id, version)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             on conflict (topic, kafka_partition, kafka_offset) do update set
                 error = excluded.error, delivery_id = excluded.delivery_id,
                 version = excluded.version, received_at = now()",
            topic,
            record.kafka_partition,
            record.kafka_offset,
            record.message_key.as_deref(),
            record.payload.as_deref(),
            &record.error,
            record.message_key_bytes.as_deref(),
            record.delivery_id,
            record.version,
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poison(key: &[u8], error: &str) -> PoisonMessage {
        PoisonMessage {
            kafka_partition: 0,
            kafka_offset: 1,
            message_key: Some(key.to_vec()),
            payload: Some(vec![0, 159, 146, 150]),
            error: error.into(),
            delivery_id: None,
            version: None,
        }
    }

    #[test]
    fn nul_characters_are_escaped_and_the_escape_is_unambiguous() {
        let record = Record::of(&poison(b"a\0b", "bad \0 byte, or literally \\u0000"));
        assert_eq!(record.message_key.as_deref(), Some("a\\u0000b"));
        assert_eq!(record.error, "bad \\u0000 byte, or literally \\\\u0000");
        assert_eq!(record.message_key_bytes.as_deref(), Some(&b"a\0b"[..]));
    }

    #[test]
    fn a_key_that_is_not_utf8_is_shown_in_hex_and_kept_raw() {
        let record = Record::of(&poison(&[0xff, 0x00, 0x41], "e"));
        assert_eq!(record.message_key.as_deref(), Some("hex:ff0041"));
        assert_eq!(record.payload.as_deref(), Some(&[0, 159, 146, 150][..]));
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let stored = storable_text(&long, MAX_ERROR_BYTES);
        assert!(stored.starts_with("éé"));
        assert!(stored.ends_with(&format!("({} more bytes)", MAX_ERROR_BYTES)));
        assert!(stored.len() < MAX_ERROR_BYTES + 40);
    }

    #[test]
    fn huge_payloads_are_capped_and_the_error_says_so() {
        let mut message = poison(b"k", "too big");
        message.payload = Some(vec![b'x'; MAX_PAYLOAD_BYTES + 10]);
        let record = Record::of(&message);
        assert_eq!(record.payload.map(|p| p.len()), Some(MAX_PAYLOAD_BYTES));
        assert!(
            record.error.contains("payload of 1048586 bytes"),
            "{}",
            record.error
        );
    }
}
