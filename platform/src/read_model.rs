//! The read database's schema contract between its one writer (the projector) and its reader
//! (the query API): the rows of the query tables, their column lists, the NOTIFY channel with
//! its payload (`notification`), and the role readers connect through. The DDL itself lives
//! with the projector (`projector/sql`) and the migrations; this is what Rust code on both
//! sides agrees on.
//!
//! A column added to `deliveries` is added to `DeliveryState` (or `DeliveryRow`) and to
//! `DELIVERY_COLUMNS`; the tests below fail until both agree.

use chrono::{DateTime, Utc};
use domain::{
    Actor, Address, CancelReason, CustomerId, DeliveryId, DeliveryState, EventEnvelope, OrderRef,
    RiderId, Role, Status,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{FromRow, Row};
use uuid::Uuid;

mod notification;
pub use notification::{Announced, CHANNEL, notification_payloads, parse_notification};

/// The role every query API login is a member of: it may only read the query tables
/// (created by the read migrations; the shell scripts that create logins spell it out too).
pub const READER_ROLE: &str = "delivery_reader";

/// A row of `deliveries`: the domain's state plus the projection's bookkeeping. Field names are
/// the column names, so rows also travel to and from Postgres as JSON (`to_jsonb(d)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    #[serde(flatten)]
    pub state: DeliveryState,
    /// The last applied event version.
    pub version: i64,
    /// When the last applied event happened.
    pub updated_at: DateTime<Utc>,
}

/// The columns of `deliveries`, in the order the projector's writes send them and readers
/// select them.
pub const DELIVERY_COLUMNS: &str = "delivery_id, status, order_ref, customer_id, pickup, dropoff, \
    rider_id, cancel_reason, created_at, assigned_at, picked_up_at, completed_at, cancelled_at, \
    version, updated_at";

/// Reads a row selected with [`DELIVERY_COLUMNS`]. A value the domain refuses is a decode
/// error: the projector writes only valid states, so one is a broken read model, never data
/// to pass on.
impl<'r> FromRow<'r, PgRow> for DeliveryRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let state = DeliveryState {
            delivery_id: DeliveryId::from_uuid(row.try_get("delivery_id")?),
            status: {
                let raw: &str = row.try_get("status")?;
                Status::parse(raw)
                    .ok_or_else(|| refused("status", format!("unknown status {raw:?}")))?
            },
            order_ref: parsed(row, "order_ref", OrderRef::parse)?,
            customer_id: parsed(row, "customer_id", CustomerId::parse)?,
            pickup: row.try_get::<Json<Address>, _>("pickup")?.0,
            dropoff: row.try_get::<Json<Address>, _>("dropoff")?.0,
            rider_id: parsed_optional(row, "rider_id", RiderId::parse)?,
            cancel_reason: parsed_optional(row, "cancel_reason", CancelReason::parse)?,
            created_at: row.try_get("created_at")?,
            assigned_at: row.try_get("assigned_at")?,
            picked_up_at: row.try_get("picked_up_at")?,
            completed_at: row.try_get("completed_at")?,
            cancelled_at: row.try_get("cancelled_at")?,
        };
        Ok(DeliveryRow {
            state,
            version: row.try_get("version")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// A text column read through the domain type's constructor.
fn parsed<T, E: std::error::Error + Send + Sync + 'static>(
    row: &PgRow,
    column: &str,
    parse: fn(String) -> Result<T, E>,
) -> Result<T, sqlx::Error> {
    parse(row.try_get(column)?).map_err(|error| refused(column, error))
}

fn parsed_optional<T, E: std::error::Error + Send + Sync + 'static>(
    row: &PgRow,
    column: &str,
    parse: fn(String) -> Result<T, E>,
) -> Result<Option<T>, sqlx::Error> {
    let raw: Option<String> = row.try_get(column)?;
    raw.map(parse)
        .transpose()
        .map_err(|error| refused(column, error))
}

/// A column whose value the domain refuses.
fn refused(
    column: &str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: error.into(),
    }
}

/// A row of `delivery_history`: one published envelope and where the projector read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct HistoryRow {
    pub delivery_id: Uuid,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub actor_role: String,
    pub actor_id: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub data: serde_json::Value,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The event's hash chain link as published (none for events from before the chain).
    pub hash: Option<String>,
}

/// The columns of `delivery_history`, in the order the projector's writes send them and
/// readers select them.
pub const HISTORY_COLUMNS: &str = "delivery_id, version, event_id, event_type, schema_version, \
    actor_role, actor_id, occurred_at, recorded_at, correlation_id, causation_id, data, \
    kafka_partition, kafka_offset, hash";

/// A history row names an actor role this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored event {event_id} has unknown actor role {role:?}")]
pub struct UnknownActorRole {
    pub event_id: Uuid,
    pub role: String,
}

impl HistoryRow {
    /// The history row of an event read from `partition` at `offset`.
    pub fn from_envelope(envelope: &EventEnvelope, partition: i32, offset: i64) -> Self {
        Self::from_owned(envelope.clone(), partition, offset)
    }

    /// `from_envelope`, taking the envelope's strings and data instead of copying them.
    pub fn from_owned(envelope: EventEnvelope, partition: i32, offset: i64) -> Self {
        HistoryRow {
            delivery_id: envelope.delivery_id.as_uuid(),
            version: envelope.version,
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            actor_role: envelope.actor.role.as_str().to_owned(),
            actor_id: envelope.actor.id,
            occurred_at: envelope.occurred_at,
            recorded_at: envelope.recorded_at,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            data: envelope.data,
            kafka_partition: partition,
            kafka_offset: offset,
            hash: envelope.hash,
        }
    }

    /// The envelope this row was made from (the inverse of `from_owned`). Its event is not
    /// decoded here: `EventEnvelope::decode` checks the schema version and the data.
    pub fn into_envelope(self) -> Result<EventEnvelope, UnknownActorRole> {
        let Some(role) = Role::parse(&self.actor_role) else {
            return Err(UnknownActorRole {
                event_id: self.event_id,
                role: self.actor_role,
            });
        };
        Ok(EventEnvelope {
            event_id: self.event_id,
            delivery_id: DeliveryId::from_uuid(self.delivery_id),
            version: self.version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: Actor::new(role, self.actor_id),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            data: self.data,
            hash: self.hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// `list` names exactly the fields `row` is serialized with (in any order).
    fn assert_lists_every_field(row: impl Serialize, list: &str) {
        let Ok(Value::Object(fields)) = serde_json::to_value(row) else {
            panic!("a row serializes as an object")
        };
        let mut fields: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut listed: Vec<&str> = list.split(',').map(str::trim).collect();
        fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(fields, listed);
    }

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, minute, 0)
            .single()
            .expect("a valid time")
    }

    fn delivery_row() -> DeliveryRow {
        let address = |line| Address::new(line, 52.52, 13.405).expect("a valid address");
        DeliveryRow {
            state: DeliveryState {
                delivery_id: DeliveryId::from_uuid(id(1)),
                status: Status::RiderAssigned,
                order_ref: OrderRef::parse("order-1").expect("valid"),
                customer_id: CustomerId::parse("customer-1").expect("valid"),
                pickup: address("Main St 1"),
                dropoff: address("Elm St 9"),
                rider_id: Some(RiderId::parse("rider-1").expect("valid")),
                cancel_reason: None,
                created_at: at(0),
                assigned_at: Some(at(5)),
                picked_up_at: None,
                completed_at: None,
                cancelled_at: None,
            },
            version: 2,
            updated_at: at(5),
        }
    }

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: id(11),
            delivery_id: DeliveryId::from_uuid(id(1)),
            version: 2,
            event_type: "delivery.rider_assigned".to_owned(),
            schema_version: domain::SCHEMA_VERSION,
            occurred_at: at(5),
            recorded_at: at(6),
            actor: Actor::new(Role::Dispatcher, "desk-1"),
            correlation_id: id(21),
            causation_id: id(31),
            data: json!({"rider_id": "rider-1"}),
            hash: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn the_delivery_column_list_names_every_field_of_a_delivery_row() {
        assert_lists_every_field(delivery_row(), DELIVERY_COLUMNS);
    }

    #[test]
    fn the_history_column_list_names_every_field_of_a_history_row() {
        let row = HistoryRow::from_envelope(&envelope(), 3, 42);
        assert_lists_every_field(row, HISTORY_COLUMNS);
    }

    #[test]
    fn a_history_row_gives_back_the_envelope_it_was_made_from() {
        let row = HistoryRow::from_envelope(&envelope(), 3, 42);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
        assert_eq!(row.into_envelope(), Ok(envelope()));
    }

    #[test]
    fn a_history_row_with_an_unknown_role_is_refused() {
        let mut row = HistoryRow::from_envelope(&envelope(), 0, 0);
        row.actor_role = "robot".to_owned();
        assert_eq!(
            row.into_envelope(),
            Err(UnknownActorRole {
                event_id: id(11),
                role: "robot".to_owned()
            })
        );
    }
}
