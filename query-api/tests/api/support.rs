//! The test app, a request helper, and the seeded read model.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use e2e::Contract;
use http_body_util::BodyExt;
use query_api::{AppState, FreshnessWatch, Tokens, app};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use sqlx::PgPool;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;
use tower::ServiceExt;

pub const TOKEN: &str = "reader-token-1";
pub const OTHER_TOKEN: &str = "reader-token-2";

/// Completed by rider-1 (full history seeded).
pub const D1: &str = "0190f4c2-0000-7000-8000-000000000001";
/// Assigned to rider-1 (history seeded: created, assigned).
pub const D2: &str = "0190f4c2-0000-7000-8000-000000000002";
/// Picked up by rider-2.
pub const D3: &str = "0190f4c2-0000-7000-8000-000000000003";
/// Created, no rider; same created_at as D5.
pub const D4: &str = "0190f4c2-0000-7000-8000-000000000004";
/// Cancelled before assignment; same created_at as D4.
pub const D5: &str = "0190f4c2-0000-7000-8000-000000000005";
/// Picked up by rider-1.
pub const D6: &str = "0190f4c2-0000-7000-8000-000000000006";
/// Completed by rider-1 before D1 was.
pub const D7: &str = "0190f4c2-0000-7000-8000-000000000007";
/// Seeded nowhere.
pub const UNKNOWN: &str = "0190f4c2-0000-7000-8000-0000000000ff";

/// The app over `pool`, listening for projector commits, waiting at most 5 s for a version.
pub async fn test_app(pool: PgPool) -> Router {
    let freshness = FreshnessWatch::listen(&pool)
        .await
        .expect("LISTEN on the test database");
    app(AppState {
        pool,
        tokens: Tokens::parse(&format!("{TOKEN},{OTHER_TOKEN}")).expect("test tokens are valid"),
        max_wait: Duration::from_secs(5),
        freshness,
        live: Default::default(),
    })
}

/// What the projector does: apply a batch and notify in the same transaction, naming the
/// deliveries it moved (`id:version,...`) or nothing ("something moved").
pub async fn project(pool: &PgPool, statement: &str, payload: &str) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(statement)
        .execute(&mut *tx)
        .await
        .expect("projection write");
    sqlx::query("select pg_notify($1, $2)")
        .bind(platform::read_model::CHANNEL)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as sent, for checks on field order.
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem code, after checking the response is a well-formed problem.
    pub fn problem_code(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], self.status.as_u16(), "{}", self.text);
        let code = self.body["code"].as_str().expect("a problem has a code");
        assert_eq!(
            self.body["type"],
            format!("https://delivery-platform.dev/problems/{code}")
        );
        code
    }

    /// The body with its fields in the order they were sent, for snapshots.
    pub fn wire(&self) -> Wire {
        serde_json::from_str(&self.text).expect("a JSON body")
    }

    /// The `delivery_id`s of a list of deliveries at `pointer`.
    pub fn ids(&self, pointer: &str) -> Vec<String> {
        self.body
            .pointer(pointer)
            .and_then(Value::as_array)
            .expect("a list of deliveries")
            .iter()
            .map(|d| d["delivery_id"].as_str().expect("an id").to_owned())
            .collect()
    }
}

/// GET with the test token.
pub async fn get(app: &Router, path: &str) -> Reply {
    get_as(app, path, Some(&format!("Bearer {TOKEN}"))).await
}

/// GET with any (or no) Authorization header.
pub async fn get_as(app: &Router, path: &str, authorization: Option<&str>) -> Reply {
    request(app, Method::GET, path, authorization).await
}

/// Any method, with the test token.
pub async fn send(app: &Router, method: Method, path: &str) -> Reply {
    request(app, method, path, Some(&format!("Bearer {TOKEN}"))).await
}

async fn request(app: &Router, method: Method, path: &str, authorization: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request.body(Body::empty()).expect("request builds");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body reads").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_documented(&method, path, parts.status, &body);
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        text,
    }
}

/// Fails the test unless the spec documents `status` (and the problem `code` in `body`, if
/// any) for `method path`: every helper that sends a request passes its answer through here.
pub fn assert_documented(method: &Method, path: &str, status: StatusCode, body: &Value) {
    CONTRACT.assert_documented(method.as_str(), path, status.as_u16(), body);
}

/// The contract every answer of these tests must keep.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    Contract::new(serde_json::to_value(query_api::openapi()).expect("the spec serializes"))
});

/// JSON that keeps object fields in the order they were sent (`serde_json::Value` sorts them),
/// so snapshots show the wire format clients see.
pub enum Wire {
    Scalar(Value),
    Array(Vec<Wire>),
    Object(Vec<(String, Wire)>),
}

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WireVisitor;
        impl<'de> Visitor<'de> for WireVisitor {
            type Value = Wire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Wire, E> {
                Ok(Wire::Scalar(Value::Null))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Wire, E> {
                Ok(Wire::Scalar(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Wire, E> {
                Ok(Wire::Scalar(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Wire, E> {
                Ok(Wire::Scalar(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Wire, E> {
                Ok(Wire::Scalar(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Wire, E> {
                Ok(Wire::Scalar(v.into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Wire, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Wire::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(Wire::Object(fields))
            }
        }
        deserializer.deserialize_any(WireVisitor)
    }
}

impl Serialize for Wire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Wire::Scalar(value) => value.serialize(serializer),
            Wire::Array(items) => items.serialize(serializer),
            Wire::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
    }
}

pub async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .expect("seed SQL runs");
}

/// Seven deliveries on 2026-03-02 as the projector would have left them, the history of D1
/// and D2, the riders, and status counts that agree with the deliveries.
pub async fn seed(pool: &PgPool) {
    exec(pool, SEED).await;
}

const SEED: &str = r#"
insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff, rider_id,
    cancel_reason, created_at, assigned_at, picked_up_at, completed_at, cancelled_at, version,
    updated_at)
values
    ('0190f4c2-0000-7000-8000-000000000001', 'completed', 'order-1001', 'customer-7',
     '{"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405}',
     '{"line": "Elm St 9", "lat": 52.51, "lon": 13.39}', 'rider-1', null,
     '2026-03-02T09:00:00Z', '2026-03-02T09:05:00Z', '2026-03-02T09:20:00Z',
     '2026-03-02T09:45:00Z', null, 4, '2026-03-02T09:45:00Z'),
    ('0190f4c2-0000-7000-8000-000000000002', 'rider_assigned', 'order-1002', 'customer-8',
     '{"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405}',
     '{"line": "Oak Ave 3", "lat": 52.5, "lon": 13.42}', 'rider-1', null,
     '2026-03-02T09:10:00Z', '2026-03-02T09:12:00Z', null, null, null, 2,
     '2026-03-02T09:12:00Z'),
    ('0190f4c2-0000-7000-8000-000000000003', 'picked_up', 'order-1003', 'customer-7',
     '{"line": "Store 4, Market Sq 2", "lat": 52.53, "lon": 13.4}',
     '{"line": "Elm St 9", "lat": 52.51, "lon": 13.39}', 'rider-2', null,
     '2026-03-02T09:20:00Z', '2026-03-02T09:22:00Z', '2026-03-02T09:30:00Z', null, null, 3,
     '2026-03-02T09:30:00Z'),
    ('0190f4c2-0000-7000-8000-000000000004', 'created', 'order-1004', 'customer-9',
     '{"line": "Store 4, Market Sq 2", "lat": 52.53, "lon": 13.4}',
     '{"line": "Birch Rd 17", "lat": 52.49, "lon": 13.38}', null, null,
     '2026-03-02T09:30:00Z', null, null, null, null, 1, '2026-03-02T09:30:00Z'),
    ('0190f4c2-0000-7000-8000-000000000005', 'cancelled', 'order-1005', 'customer-9',
     '{"line": "Store 4, Market Sq 2", "lat": 52.53, "lon": 13.4}',
     '{"line": "Birch Rd 17", "lat": 52.49, "lon": 13.38}', null,
     'customer changed their mind', '2026-03-02T09:30:00Z', null, null, null,
     '2026-03-02T09:35:00Z', 2, '2026-03-02T09:35:00Z'),
    ('0190f4c2-0000-7000-8000-000000000006', 'picked_up', 'order-1006', 'customer-8',
     '{"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405}',
     '{"line": "Oak Ave 3", "lat": 52.5, "lon": 13.42}', 'rider-1', null,
     '2026-03-02T09:40:00Z', '2026-03-02T09:41:00Z', '2026-03-02T09:50:00Z', null, null, 3,
     '2026-03-02T09:50:00Z'),
    ('0190f4c2-0000-7000-8000-000000000007', 'completed', 'order-1007', 'customer-7',
     '{"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405}',
     '{"line": "Elm St 9", "lat": 52.51, "lon": 13.39}', 'rider-1', null,
     '2026-03-02T08:00:00Z', '2026-03-02T08:02:00Z', '2026-03-02T08:10:00Z',
     '2026-03-02T08:40:00Z', null, 4, '2026-03-02T08:40:00Z');

insert into delivery_history (delivery_id, version, event_id, event_type, schema_version,
    actor_role, actor_id, occurred_at, recorded_at, correlation_id, causation_id, data,
    kafka_partition, kafka_offset)
values
    ('0190f4c2-0000-7000-8000-000000000001', 1, '0190f4c2-0000-7000-9000-000000000011',
     'delivery.created', 1, 'dispatcher', 'desk-1', '2026-03-02T09:00:00Z',
     '2026-03-02T09:00:00.012Z', '0190f4c2-0000-7000-a000-000000000011',
     '0190f4c2-0000-7000-b000-000000000011',
     '{"order_ref": "order-1001", "customer_id": "customer-7",
       "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
       "dropoff": {"line": "Elm St 9", "lat": 52.51, "lon": 13.39}}', 0, 10),
    ('0190f4c2-0000-7000-8000-000000000001', 2, '0190f4c2-0000-7000-9000-000000000012',
     'delivery.rider_assigned', 1, 'dispatcher', 'desk-1', '2026-03-02T09:05:00Z',
     '2026-03-02T09:05:00.015Z', '0190f4c2-0000-7000-a000-000000000012',
     '0190f4c2-0000-7000-b000-000000000012', '{"rider_id": "rider-1"}', 0, 12),
    ('0190f4c2-0000-7000-8000-000000000001', 3, '0190f4c2-0000-7000-9000-000000000013',
     'delivery.picked_up', 1, 'rider', 'rider-1', '2026-03-02T09:20:00Z',
     '2026-03-02T09:20:00.011Z', '0190f4c2-0000-7000-a000-000000000013',
     '0190f4c2-0000-7000-b000-000000000013', '{"rider_id": "rider-1"}', 0, 17),
    ('0190f4c2-0000-7000-8000-000000000001', 4, '0190f4c2-0000-7000-9000-000000000014',
     'delivery.completed', 1, 'rider', 'rider-1', '2026-03-02T09:45:00Z',
     '2026-03-02T09:45:00.020Z', '0190f4c2-0000-7000-a000-000000000014',
     '0190f4c2-0000-7000-b000-000000000014', '{"rider_id": "rider-1"}', 0, 25),
    ('0190f4c2-0000-7000-8000-000000000002', 1, '0190f4c2-0000-7000-9000-000000000021',
     'delivery.created', 1, 'dispatcher', 'desk-1', '2026-03-02T09:10:00Z',
     '2026-03-02T09:10:00.010Z', '0190f4c2-0000-7000-a000-000000000021',
     '0190f4c2-0000-7000-b000-000000000021',
     '{"order_ref": "order-1002", "customer_id": "customer-8",
       "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
       "dropoff": {"line": "Oak Ave 3", "lat": 52.5, "lon": 13.42}}', 1, 4),
    ('0190f4c2-0000-7000-8000-000000000002', 2, '0190f4c2-0000-7000-9000-000000000022',
     'delivery.rider_assigned', 1, 'dispatcher', 'desk-1', '2026-03-02T09:12:00Z',
     '2026-03-02T09:12:00.010Z', '0190f4c2-0000-7000-a000-000000000022',
     '0190f4c2-0000-7000-b000-000000000022', '{"rider_id": "rider-1"}', 1, 6);

insert into riders (rider_id, active_deliveries, completed_deliveries, last_event_at)
values
    ('rider-1', 2, 2, '2026-03-02T09:50:00Z'),
    ('rider-2', 1, 0, '2026-03-02T09:30:00Z'),
    ('rider-3', 0, 0, '2026-03-02T07:00:00Z');

update status_counts s
set deliveries = (select count(*) from deliveries d where d.status = s.status);
"#;
