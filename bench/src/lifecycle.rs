//! The command API lifecycle both load benchmarks walk: create, assign, pick up, complete.

use serde_json::{Value, json};
use uuid::Uuid;

/// Who sends the commands: a dispatcher, and the rider every delivery is assigned to.
#[derive(clap::Args, Clone)]
pub struct Lifecycle {
    /// Token of a dispatcher (creates and assigns).
    #[arg(long, default_value = "dev-dispatcher-token")]
    pub dispatcher_token: String,
    /// Token of the rider every delivery is assigned to.
    #[arg(long, default_value = "dev-rider-42-token")]
    pub rider_token: String,
    /// The rider id that token stands for.
    #[arg(long, default_value = "rider-42")]
    pub rider_id: String,
}

/// Commands in one delivery's lifecycle.
pub const STEPS: u8 = 4;

impl Lifecycle {
    /// Step `step` (0 = create ... 3 = complete) of delivery `id`: path, token and body.
    pub fn step(&self, id: Uuid, step: u8) -> (String, &str, Option<Value>) {
        match step {
            0 => (
                "/deliveries".to_owned(),
                &self.dispatcher_token,
                Some(json!({
                    "delivery_id": id,
                    "order_ref": format!("bench-{id}"),
                    "customer_id": "bench-customer",
                    "pickup": {"line": "Store 1", "lat": 52.52, "lon": 13.40},
                    "dropoff": {"line": "Home 2", "lat": 52.50, "lon": 13.42},
                })),
            ),
            1 => (
                format!("/deliveries/{id}/assign"),
                &self.dispatcher_token,
                Some(json!({"rider_id": self.rider_id})),
            ),
            2 => (format!("/deliveries/{id}/pickup"), &self.rider_token, None),
            _ => (
                format!("/deliveries/{id}/complete"),
                &self.rider_token,
                None,
            ),
        }
    }

    /// Sends step `step` of delivery `id` to the command API at `base`.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        base: &str,
        id: Uuid,
        step: u8,
    ) -> reqwest::Result<reqwest::Response> {
        let (path, token, body) = self.step(id, step);
        let mut request = client.post(format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await
    }
}
