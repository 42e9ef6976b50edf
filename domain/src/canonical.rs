//! The one JSON spelling that hashes and fingerprints are taken over.
//!
//! A hash over JSON is only as stable as the spelling it is taken over. Values here are written
//! to Postgres `jsonb` and read back, and `jsonb` keeps the *value* of a document, not its text:
//! it reorders keys, drops whitespace, turns `\u00e9` into `é`, and stores numbers as `numeric`,
//! which has no negative zero (`-0.0` comes back as `0.0`) and prints `1e-7` as `0.0000001`.
//! So the canonical form is a function of what survives that round trip, and nothing else:
//!
//! - objects: keys sorted by their UTF-8 bytes, at every depth; no whitespace anywhere;
//! - strings: as serde_json escapes them (`"` `\` and control characters; everything else,
//!   astral characters included, as raw UTF-8);
//! - integers: their decimal digits;
//! - other numbers: the shortest decimal that reads back as the same `f64` (serde_json's
//!   spelling), with a zero of either sign written `0.0`.
//!
//! Reading `0.0000001` back gives the same `f64` as `1e-7`, so both spell `1e-7`; a float that
//! could read back as an integer (at most 20 digits) is always written with a `.0` that `numeric`
//! keeps, so it reads back as a float again. That holds only if reading a decimal yields the
//! nearest `f64`, which is why this crate turns on serde_json's `float_roundtrip`.
//!
//! Postgres refuses one string `jsonb` cannot hold, the NUL character: the domain's text types
//! refuse every control character, NUL included, so no accepted command carries one.

use serde_json::Value;

/// `value` in its canonical spelling (see the module documentation).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value, &mut Zeros::Unsigned);
    out
}

/// How float zeros are spelled. Only the verifier asks for anything but `Unsigned`: events
/// hashed before the form dropped the sign of zero spelled some zeros `-0.0`.
pub(crate) enum Zeros {
    /// Every zero is `0.0`, as the store gives it back.
    Unsigned,
    /// The float zeros met so far (`seen`); those whose bit is set in `negative` are `-0.0`.
    Legacy { negative: u64, seen: u32 },
}

/// How many float zeros `value` holds (each one could have been `-0.0` before it was stored).
pub(crate) fn count_zeros(value: &Value) -> u32 {
    match value {
        Value::Object(map) => map.values().map(count_zeros).sum(),
        Value::Array(items) => items.iter().map(count_zeros).sum(),
        Value::Number(n) if n.is_f64() && n.as_f64() == Some(0.0) => 1,
        _ => 0,
    }
}

/// `value` canonically, except that float zeros are spelled as `zeros` says.
pub(crate) fn canonical_json_with(value: &Value, zeros: &mut Zeros) -> String {
    let mut out = String::new();
    write(&mut out, value, zeros);
    out
}

/// Sorts keys by itself rather than trusting the map type: serde_json keeps insertion order
/// when some crate in the build enables its `preserve_order` feature.
fn write(out: &mut String, value: &Value, zeros: &mut Zeros) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write(out, value, zeros);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write(out, item, zeros);
            }
            out.push(']');
        }
        Value::String(text) => write_string(out, text),
        Value::Number(n) if n.is_f64() && n.as_f64() == Some(0.0) => {
            let negative = match zeros {
                Zeros::Unsigned => false,
                Zeros::Legacy { negative, seen } => {
                    let bit = 1u64
                        .checked_shl(*seen)
                        .is_some_and(|bit| *negative & bit != 0);
                    *seen += 1;
                    bit
                }
            };
            out.push_str(if negative { "-0.0" } else { "0.0" });
        }
        // null, booleans and the other numbers have one compact spelling in serde_json.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(out: &mut String, text: &str) {
    // `Value`'s Display writes a string as a JSON string literal; it cannot fail.
    out.push_str(&Value::String(text.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_without_whitespace() {
        let value = json!({"b": 1, "a": {"y": [true, null], "x": "é"}});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"x":"é","y":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn zero_has_no_sign_as_in_numeric() {
        assert_eq!(canonical_json(&json!(-0.0)), "0.0");
        assert_eq!(canonical_json(&json!(0.0)), "0.0");
        assert_eq!(canonical_json(&json!(0)), "0");
    }

    #[test]
    fn a_number_and_its_plain_decimal_spelling_agree() {
        for (memory, stored) in [
            ("1e-7", "0.0000001"),
            ("1e21", "1000000000000000000000"),
            ("-1.5e-300", &format!("-0.{}15", "0".repeat(299))),
            (
                "1.7976931348623157e308",
                &format!("17976931348623157{}", "0".repeat(292)),
            ),
            ("5e-324", &format!("0.{}5", "0".repeat(323))),
            ("100000000000000000000.0", "100000000000000000000.0"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
        ] {
            let a: Value = serde_json::from_str(memory).expect("json");
            let b: Value = serde_json::from_str(stored).expect("json");
            assert_eq!(
                canonical_json(&a),
                canonical_json(&b),
                "{memory} vs {stored}"
            );
        }
    }

    #[test]
    fn escaped_and_raw_unicode_spell_the_same() {
        let escaped: Value = serde_json::from_str(r#""\u00e9\ud83d\ude00\"\\\/\t""#).expect("json");
        assert_eq!(canonical_json(&escaped), "\"é😀\\\"\\\\/\\t\"");
    }

    #[test]
    fn legacy_zeros_take_the_sign_their_bit_gives() {
        let value = json!({"a": 0.0, "b": 0.0, "c": 0});
        assert_eq!(count_zeros(&value), 2);
        let mut zeros = Zeros::Legacy {
            negative: 0b10,
            seen: 0,
        };
        assert_eq!(
            canonical_json_with(&value, &mut zeros),
            r#"{"a":0.0,"b":-0.0,"c":0}"#
        );
    }
}
