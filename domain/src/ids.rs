//! Validated value types. Each is built only through `parse`/`TryFrom`, so a value that
//! exists is a valid one; serde goes through the same constructors.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Why a raw value was refused, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidValue {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The subject of every event and the Kafka message key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(Uuid);

impl DeliveryId {
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue::new("delivery_id", "must be a UUID"))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Declares a bounded, printable text identifier.
/// `$pattern` is `$allowed` as a JSON Schema regular expression: with `$max`, what the API
/// contract says the type accepts (the `openapi` feature).
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal, $allowed:expr, $pattern:expr, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
                let raw = raw.into();
                let allowed: fn(char) -> bool = $allowed;
                if raw.is_empty() || raw.chars().count() > $max {
                    return Err(InvalidValue::new(
                        $field,
                        concat!("must be 1 to ", $max, " characters"),
                    ));
                }
                if !raw.chars().all(allowed) {
                    return Err(InvalidValue::new($field, "contains characters that are not allowed"));
                }
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::text(1, $max, $pattern, $example)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

/// `is_id_char` as a regular expression (for the schema, so only with `openapi`).
#[cfg_attr(not(feature = "openapi"), allow(dead_code))]
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]+$";

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// `is_text_char` as a regular expression: no character of Unicode's Cc category.
#[cfg_attr(not(feature = "openapi"), allow(dead_code))]
const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

fn is_text_char(c: char) -> bool {
    !c.is_control()
}

text_id!(
    /// A rider, as the dispatching system knows them (`rider-42`).
    RiderId, "rider_id", 64, is_id_char, ID_PATTERN, "rider-42"
);
text_id!(
    /// The customer who ordered.
    CustomerId, "customer_id", 64, is_id_char, ID_PATTERN, "customer-7"
);
text_id!(
    /// The order (and store) this delivery fulfils, as the ordering system names it.
    OrderRef, "order_ref", 128, is_id_char, ID_PATTERN, "order-1001"
);
text_id!(
    /// Why a delivery was cancelled, free text for people.
    CancelReason, "reason", 500, is_text_char, TEXT_PATTERN, "customer changed their mind"
);

/// A place to pick up from or drop off at. Coordinates are WGS84 degrees, checked for range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAddress")]
pub struct Address {
    line: String,
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
struct RawAddress {
    line: String,
    lat: f64,
    lon: f64,
}

impl TryFrom<RawAddress> for Address {
    type Error = InvalidValue;
    fn try_from(raw: RawAddress) -> Result<Self, Self::Error> {
        Address::new(raw.line, raw.lat, raw.lon)
    }
}

impl Address {
    pub fn new(line: impl Into<String>, lat: f64, lon: f64) -> Result<Self, InvalidValue> {
        let line = line.into();
        if line.trim().is_empty()
            || line.chars().count() > 300
            || line.chars().any(char::is_control)
        {
            return Err(InvalidValue::new(
                "address.line",
                "must be 1 to 300 printable characters",
            ));
        }
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Err(InvalidValue::new(
                "address.lat",
                "must be between -90 and 90",
            ));
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Err(InvalidValue::new(
                "address.lon",
                "must be between -180 and 180",
            ));
        }
        Ok(Self { line, lat, lon })
    }

    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn lat(&self) -> f64 {
        self.lat
    }

    pub fn lon(&self) -> f64 {
        self.lon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_long_and_odd_characters() {
        assert!(RiderId::parse("rider-42").is_ok());
        assert!(RiderId::parse("").is_err());
        assert!(RiderId::parse("a".repeat(65)).is_err());
        assert!(RiderId::parse("rider 42").is_err());
        assert!(CancelReason::parse("customer changed their mind").is_ok());
        assert!(CancelReason::parse("line\nbreak").is_err());
    }

    #[test]
    fn addresses_check_coordinates_on_deserialize() {
        let ok: Result<Address, _> =
            serde_json::from_str(r#"{"line":"Main St 1","lat":52.5,"lon":13.4}"#);
        assert!(ok.is_ok());
        let bad: Result<Address, _> =
            serde_json::from_str(r#"{"line":"Main St 1","lat":91.0,"lon":13.4}"#);
        assert!(
            bad.expect_err("latitude 91 is out of range")
                .to_string()
                .contains("between -90 and 90")
        );
    }

    #[test]
    fn no_text_may_hold_a_nul_character_which_the_store_cannot_keep() {
        // Postgres jsonb refuses U+0000: refused here, it is a 422 and not a failed insert.
        assert!(RiderId::parse("rider\u{0}").is_err());
        assert!(CustomerId::parse("\u{0}").is_err());
        assert!(OrderRef::parse("order-\u{0}1").is_err());
        assert!(CancelReason::parse("gone\u{0}").is_err());
        assert!(Address::new("Main St\u{0} 1", 52.5, 13.4).is_err());
    }

    #[test]
    fn delivery_ids_must_be_uuids() {
        assert!(DeliveryId::parse("not-a-uuid").is_err());
        assert!(DeliveryId::parse("0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e").is_ok());
    }
}
