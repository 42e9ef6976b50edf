//! The comparison: one delivery's copies (event store, topic, history, state) checked
//! against each other, without IO.

use super::topic::TopicCopy;
use super::{Check, Problem};
use crate::plan::{DeliveryRow, HistoryRow};
use domain::{Delivery, DeliveryId, EventEnvelope, verify_chain};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One delivery as each copy holds it.
#[derive(Debug, Clone)]
pub struct Copies {
    pub delivery_id: DeliveryId,
    /// From the event store, in version order.
    pub stored: Vec<EventEnvelope>,
    pub topic: BTreeMap<i64, TopicCopy>,
    /// From `delivery_history`, in version order.
    pub history: Vec<HistoryRow>,
    /// From `deliveries`.
    pub projected: Option<DeliveryRow>,
}

/// Every disagreement between the copies of one delivery, checks in order.
pub fn check(copies: &Copies) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut report = |check: Check, version: Option<i64>, detail: String| {
        problems.push(Problem {
            check,
            delivery_id: Some(copies.delivery_id),
            version,
            detail,
        });
    };

    if let Err(broken) = verify_chain(&copies.stored) {
        report(Check::Chain, Some(broken.version()), broken.to_string());
    }

    let stored: BTreeMap<i64, &EventEnvelope> =
        copies.stored.iter().map(|e| (e.version, e)).collect();
    let versions: BTreeSet<i64> = stored.keys().chain(copies.topic.keys()).copied().collect();
    for version in versions {
        match (stored.get(&version), copies.topic.get(&version)) {
            (Some(_), None) => report(Check::Topic, Some(version), "not on the topic".into()),
            (None, Some(copy)) => report(
                Check::Topic,
                Some(version),
                format!(
                    "on the topic (partition {} offset {}) but not in the event store",
                    copy.partition, copy.offset
                ),
            ),
            (Some(event), Some(copy)) => {
                let fields = differences(*event, &copy.envelope, ("store", "topic"));
                if !fields.is_empty() {
                    report(
                        Check::Topic,
                        Some(version),
                        format!(
                            "the topic's copy (partition {} offset {}) differs: {fields}",
                            copy.partition, copy.offset
                        ),
                    );
                }
            }
            (None, None) => {}
        }
        if let Some(copy) = copies.topic.get(&version) {
            for conflict in &copy.conflicts {
                report(
                    Check::Topic,
                    Some(version),
                    format!(
                        "conflicting copies on the topic: first at partition {} offset {}, {conflict}",
                        copy.partition, copy.offset
                    ),
                );
            }
        }
    }

    let history: BTreeMap<i64, &HistoryRow> = copies
        .history
        .iter()
        .map(|row| (row.version, row))
        .collect();
    let versions: BTreeSet<i64> = stored.keys().chain(history.keys()).copied().collect();
    for version in versions {
        match (stored.get(&version), history.get(&version)) {
            (Some(_), None) => report(
                Check::History,
                Some(version),
                "not in delivery_history".into(),
            ),
            (None, Some(_)) => report(
                Check::History,
                Some(version),
                "in delivery_history but not in the event store".into(),
            ),
            (Some(event), Some(row)) => {
                let expected =
                    HistoryRow::from_envelope(event, row.kafka_partition, row.kafka_offset);
                let fields = differences(&expected, *row, ("store", "read model"));
                if !fields.is_empty() {
                    report(
                        Check::History,
                        Some(version),
                        format!("delivery_history differs: {fields}"),
                    );
                }
            }
            (None, None) => {}
        }
    }

    match (fold(&copies.stored), &copies.projected) {
        (Err((version, why)), _) => report(
            Check::State,
            version,
            format!("the stored events do not fold into a state: {why}"),
        ),
        (Ok(None), None) => {}
        (Ok(Some(expected)), None) => report(
            Check::State,
            Some(expected.version),
            "not in deliveries".into(),
        ),
        (Ok(None), Some(row)) => report(
            Check::State,
            Some(row.version),
            "in deliveries but the event store has no events".into(),
        ),
        (Ok(Some(expected)), Some(row)) => {
            let fields = differences(&expected, row, ("events", "read model"));
            if !fields.is_empty() {
                report(
                    Check::State,
                    Some(expected.version),
                    format!("deliveries differs from the folded events: {fields}"),
                );
            }
        }
    }
    problems
}

/// The `deliveries` row the stored events should have produced: the domain's fold, at the
/// last event's version and time. `Err` names the version that cannot be folded.
fn fold(stored: &[EventEnvelope]) -> Result<Option<DeliveryRow>, (Option<i64>, String)> {
    let events = stored
        .iter()
        .map(|envelope| {
            envelope
                .decode()
                .map_err(|e| (Some(envelope.version), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let delivery = Delivery::replay(&events).map_err(|e| (None, e.to_string()))?;
    let (Some(state), Some(last)) = (delivery.state, stored.last()) else {
        return Ok(None);
    };
    Ok(Some(DeliveryRow {
        state,
        version: delivery.version,
        updated_at: last.occurred_at,
    }))
}

/// The fields in which two values differ, with both values, as `field (a: x, b: y), ...`;
/// empty when they agree. Compared as serialized, so every field is seen.
pub(super) fn differences<T: Serialize>(a: &T, b: &T, labels: (&str, &str)) -> String {
    let (left, right) = labels;
    let (Value::Object(a), Value::Object(b)) = (as_json(a), as_json(b)) else {
        // Not rows with fields: the whole values are the difference.
        let (a, b) = (as_json(a), as_json(b));
        return if a == b {
            String::new()
        } else {
            format!("value ({left}: {a}, {right}: {b})")
        };
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let x = a.get(key).unwrap_or(&Value::Null);
            let y = b.get(key).unwrap_or(&Value::Null);
            (x != y).then(|| format!("{key} ({left}: {x}, {right}: {y})"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row as JSON. The rows compared are structs of plain fields with string keys, which
/// serde_json always serializes.
#[expect(
    clippy::unwrap_used,
    reason = "a struct of plain fields always serializes"
)]
fn as_json<T: Serialize>(row: &T) -> Value {
    serde_json::to_value(row).unwrap()
}
