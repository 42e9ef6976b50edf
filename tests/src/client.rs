//! The command API as a client sees it: commands over HTTP, and whole lifecycles walked.

use crate::{DISPATCHER, rider_token};
use serde_json::Value;
use uuid::Uuid;

/// How far a test walks a delivery through its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Created,
    Assigned,
    PickedUp,
    Completed,
    CancelledAfterAssignment,
}

impl Fate {
    pub const ALL: [Fate; 5] = [
        Fate::Created,
        Fate::Assigned,
        Fate::PickedUp,
        Fate::Completed,
        Fate::CancelledAfterAssignment,
    ];
}

/// The command API's address and an HTTP client.
#[derive(Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base: String,
}

impl CommandClient {
    /// A client for the command API at `base` (`http://host:port`).
    pub fn new(http: reqwest::Client, base: String) -> CommandClient {
        CommandClient { http, base }
    }

    /// POSTs a command; returns the status and the JSON body.
    pub async fn command(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("command API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Walks delivery `id` through the HTTP command API to `fate`, with rider `rider-N`.
    /// Returns the delivery's last version.
    pub async fn walk(&self, id: Uuid, rider: u32, fate: Fate) -> i64 {
        let path = |step: &str| format!("/deliveries/{id}/{step}");
        let mut steps: Vec<(String, String, Option<Value>)> = vec![(
            "/deliveries".into(),
            DISPATCHER.into(),
            Some(serde_json::json!({
                "delivery_id": id,
                "order_ref": format!("order-{}", id.simple()),
                "customer_id": "customer-1",
                "pickup": {"line": "Store 12, Main St 1", "lat": 52.52, "lon": 13.405},
                "dropoff": {"line": "Elm St 9", "lat": 52.51, "lon": 13.39},
            })),
        )];
        if fate != Fate::Created {
            steps.push((
                path("assign"),
                DISPATCHER.into(),
                Some(serde_json::json!({"rider_id": format!("rider-{rider}")})),
            ));
        }
        match fate {
            Fate::PickedUp => steps.push((path("pickup"), rider_token(rider), None)),
            Fate::Completed => {
                steps.push((path("pickup"), rider_token(rider), None));
                steps.push((path("complete"), rider_token(rider), None));
            }
            Fate::CancelledAfterAssignment => steps.push((
                path("cancel"),
                DISPATCHER.into(),
                Some(serde_json::json!({"reason": "customer asked"})),
            )),
            Fate::Created | Fate::Assigned => {}
        }
        let mut version = 0;
        for (path, token, body) in steps {
            let (status, response) = self.command(&path, &token, body).await;
            assert!((200..300).contains(&status), "{path}: {status} {response}");
            version = response["version"].as_i64().expect("a version");
        }
        version
    }
}
