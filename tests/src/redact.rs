//! Snapshots of what the stack answered, without what differs between runs.

use serde_json::Value;

/// Replaces values that differ between runs (server-made ids and times) with placeholders,
/// wherever they are in `value`.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let volatile = key.ends_with("_at")
                    || matches!(key.as_str(), "event_id" | "correlation_id" | "causation_id")
                    || key.contains("seconds");
                if volatile && !field.is_null() {
                    *field = Value::String(format!("[{key}]"));
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}
