//! The JSON schemas of the value types the HTTP APIs take and return (the `openapi` feature),
//! beside the rules they describe: what `parse` accepts is what the contract promises.

use crate::{Address, DeliveryId, Role, Status};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// No character of Unicode's Cc category, and at least one that is not white space: the
/// address line `Address::new` accepts.
const LINE_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// A string of `min..=max` characters matching `pattern`.
pub(crate) fn text(min: usize, max: usize, pattern: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

fn number(min: f64, max: f64, example: f64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
        .minimum(Some(min))
        .maximum(Some(max))
        .examples([example])
}

impl PartialSchema for DeliveryId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .examples(["0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e"])
            .into()
    }
}

impl ToSchema for DeliveryId {}

/// The checks of `Address::new`. Other fields are ignored, as serde ignores them.
impl PartialSchema for Address {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A place: a printable line and WGS84 coordinates in degrees.",
            ))
            .property("line", text(1, 300, LINE_PATTERN, "Store 12, Main St 1"))
            .property("lat", number(-90.0, 90.0, 52.52))
            .property("lon", number(-180.0, 180.0, 13.405))
            .required("line")
            .required("lat")
            .required("lon")
            .into()
    }
}

impl ToSchema for Address {}

/// The stable names of `Status::as_str`, in lifecycle order.
impl PartialSchema for Status {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Status::ALL.map(Status::as_str)))
            .into()
    }
}

impl ToSchema for Status {}

impl PartialSchema for Role {
    fn schema() -> RefOr<Schema> {
        let roles = [
            Role::Dispatcher,
            Role::Rider,
            Role::Customer,
            Role::Admin,
            Role::System,
        ];
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(roles.map(Role::as_str)))
            .into()
    }
}

impl ToSchema for Role {}
