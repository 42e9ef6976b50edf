//! The chain is computed over what the store gives back, not over the value in memory.
//!
//! Postgres `jsonb` keeps the value of a document, not its spelling: numbers become `numeric`
//! (no negative zero, printed as plain decimals: `1e-7` reads back as `0.0000001`) and escapes
//! become characters. Here that round trip is imitated without a database, for any event the
//! domain accepts; `command-api/tests/store.rs` checks the same against a real Postgres.

use domain::fixtures::{chained, details, id};
use domain::{
    Address, CancelReason, Cancelled, Created, DeliveryEvent, EventEnvelope, canonical_json,
    verify_chain,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

/// Coordinates that have broken number handling somewhere before.
const EDGE_NUMBERS: [f64; 14] = [
    -0.0,
    0.0,
    1e-7,
    -1e-7,
    5e-324,
    -2.2250738585072014e-308,
    1e-300,
    90.0,
    -90.0,
    180.0,
    -180.0,
    89.999_999_999_999_99,
    0.1,
    12.345_678_901_234_567,
];

fn coordinate(limit: f64) -> impl Strategy<Value = f64> {
    prop_oneof![
        select(EDGE_NUMBERS.to_vec()).prop_filter("in range", move |n| n.abs() <= limit),
        -limit..=limit,
        // Any finite float folded into range keeps tiny magnitudes, subnormals and signed zeros.
        any::<f64>().prop_map(move |n| if n.is_finite() { n % limit } else { -0.0 }),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Printable characters of every plane, astral ones included, plus the ones JSON escapes.
    let pattern = format!("[\"\\\\/a-zé€😀\u{200b}\u{feff}\u{2028}\\PC]{{1,{max}}}");
    proptest::string::string_regex(&pattern)
        .expect("a valid pattern")
        .prop_filter("not blank", |s: &String| !s.trim().is_empty())
}

fn event() -> impl Strategy<Value = DeliveryEvent> {
    prop_oneof![
        (
            text(300),
            coordinate(90.0),
            coordinate(180.0),
            coordinate(90.0),
            coordinate(180.0)
        )
            .prop_filter_map("a valid address", |(line, a, b, c, d)| {
                Some(DeliveryEvent::Created(Created {
                    pickup: Address::new(line.clone(), a, b).ok()?,
                    dropoff: Address::new(line, c, d).ok()?,
                    ..details()
                }))
            }),
        text(500).prop_filter_map("a valid reason", |reason| {
            Some(DeliveryEvent::Cancelled(Cancelled {
                reason: CancelReason::parse(reason).ok()?,
            }))
        }),
    ]
}

/// `value` spelled as `jsonb` prints it: numbers as `numeric` prints them.
fn as_jsonb_prints(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), as_jsonb_prints(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(as_jsonb_prints).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Number(n) => as_numeric_prints(&n.to_string()),
        other => other.to_string(),
    }
}

/// A JSON number as Postgres `numeric` prints it: plain digits, the input's scale, no `-0`.
fn as_numeric_prints(json: &str) -> String {
    let (negative, unsigned) = json
        .strip_prefix('-')
        .map_or((false, json), |rest| (true, rest));
    let (mantissa, exponent) = unsigned
        .split_once(['e', 'E'])
        .map_or((unsigned, 0), |(m, e)| {
            (m, e.parse::<i64>().expect("exponent"))
        });
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    // Where the decimal point goes, counted from the left of `digits`.
    let point = i64::try_from(whole.len()).expect("short") + exponent;
    let scale = (i64::try_from(fraction.len()).expect("short") - exponent).max(0);
    let (int_part, frac_part) = if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).expect("non-negative"));
        ("0".to_owned(), format!("{zeros}{digits}"))
    } else {
        let point = usize::try_from(point).expect("positive");
        let padded = format!("{digits:0<point$}");
        (padded[..point].to_owned(), padded[point..].to_owned())
    };
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let scale = usize::try_from(scale).expect("non-negative");
    let frac_part = format!("{frac_part:0<scale$}");
    let frac_part = &frac_part[..scale];
    let is_zero = int_part == "0" && frac_part.chars().all(|c| c == '0');
    let sign = if negative && !is_zero { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{frac_part}")
    }
}

/// `change` as version 1 of a delivery, sealed as the store seals it when appending.
fn sealed(change: &DeliveryEvent) -> EventEnvelope {
    chained(id(2), vec![change.clone()]).remove(0)
}

#[test]
fn numeric_prints_numbers_as_postgres_does() {
    for (json, numeric) in [
        ("-0.0", "0.0"),
        ("1e-7", "0.0000001"),
        ("1.5e-7", "0.00000015"),
        ("1e21", "1000000000000000000000"),
        ("52.5", "52.5"),
        ("90.0", "90.0"),
        ("-180", "-180"),
        ("12.5e1", "125"),
    ] {
        assert_eq!(as_numeric_prints(json), numeric, "{json}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_accepted_event_verifies_as_the_store_gives_it_back(change in event()) {
        let event = sealed(&change);
        let mut stored = event.clone();
        stored.data = serde_json::from_str(&as_jsonb_prints(&event.data))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(canonical_json(&stored.data), canonical_json(&event.data));
        prop_assert_eq!(verify_chain(&[stored]), Ok(()));
    }
}
