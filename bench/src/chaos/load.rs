//! Lifecycle load with retrying clients, the way a careful client talks to the command API:
//! it picks the delivery id itself, sends one Idempotency-Key per command and resends the same
//! request with the same key on a connection error, a timeout or a 5xx until it is
//! acknowledged. Every acknowledgement is written down: those are the promises checked later.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::faults::Rng;
use crate::lifecycle::Lifecycle;

/// A command of the lifecycle, and the event type it appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Assign,
    PickUp,
    Complete,
    Cancel,
}

impl Step {
    pub fn event_type(self) -> &'static str {
        use domain::DeliveryEvent as E;
        match self {
            Step::Create => E::CREATED,
            Step::Assign => E::RIDER_ASSIGNED,
            Step::PickUp => E::PICKED_UP,
            Step::Complete => E::COMPLETED,
            Step::Cancel => E::CANCELLED,
        }
    }
}

/// The walks a delivery can take: most are completed, some cancelled before pick-up.
const COMPLETED: &[Step] = &[Step::Create, Step::Assign, Step::PickUp, Step::Complete];
const CANCELLED_NEW: &[Step] = &[Step::Create, Step::Cancel];
const CANCELLED_ASSIGNED: &[Step] = &[Step::Create, Step::Assign, Step::Cancel];

/// A command the command API acknowledged (2xx): the event store must hold `version` of
/// `delivery` as this step's event.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub delivery: Uuid,
    pub step: Step,
    pub version: i64,
}

/// What the clients saw during one trial.
#[derive(Debug, Default)]
pub struct Report {
    pub acks: Vec<Ack>,
    /// Commands started (each retried until acknowledged or the trial ended).
    pub commands: u64,
    /// Requests sent, first attempts and retries.
    pub attempts: u64,
    pub connection_errors: u64,
    pub server_errors: u64,
    /// Acknowledgements that were replays of an earlier attempt's stored response.
    pub replayed: u64,
    /// Commands that got a 409 to a resend and then the replay of an earlier attempt that had
    /// in fact committed: a retried command reported as failed (issue 10, item 1).
    pub conflicts_after_retry: u64,
    /// Commands still answered 409 when the trial ended.
    pub unresolved_conflicts: u64,
    /// Commands still unacknowledged when the trial ended (not losses: never promised).
    pub abandoned: u64,
    /// Answers no correct stack gives this load (4xx other than a conflict after a retry).
    pub rejected: Vec<String>,
}

pub struct Load {
    pub command_url: String,
    pub rate: u32,
    pub cancel_share: f64,
    pub lifecycle: Lifecycle,
}

#[derive(Clone, Copy)]
struct Next {
    delivery: Uuid,
    walk: &'static [Step],
    index: usize,
}

/// Commands in flight beyond this are not started: an outage must not pile up unbounded work.
const MAX_IN_FLIGHT: usize = 2000;

/// Sends commands at `rate` for `duration`, then lets the commands in flight retry for up to
/// `grace` more before giving up on them.
pub async fn run(
    load: Arc<Load>,
    rng: &mut Rng,
    duration: Duration,
    grace: Duration,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        // A request the API holds longer than this is retried; the key keeps it single.
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()?;
    let report = Arc::new(Mutex::new(Report::default()));
    let (ready, mut next_steps) = mpsc::unbounded_channel::<Next>();
    let mut schedule = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(load.rate)));
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = JoinSet::new();
    let started = Instant::now();
    let stop_sending = started + duration;
    let give_up = stop_sending + grace;
    while Instant::now() < stop_sending {
        schedule.tick().await;
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            continue;
        }
        // Walk on a delivery whose previous command was acknowledged, or start a new one.
        let next = next_steps.try_recv().unwrap_or_else(|_| {
            let draw = rng.unit();
            let walk = if draw < load.cancel_share / 2.0 {
                CANCELLED_NEW
            } else if draw < load.cancel_share {
                CANCELLED_ASSIGNED
            } else {
                COMPLETED
            };
            Next {
                delivery: Uuid::now_v7(),
                walk,
                index: 0,
            }
        });
        lock(&report).commands += 1;
        let (client, load, report, ready) =
            (client.clone(), load.clone(), report.clone(), ready.clone());
        in_flight.spawn(async move {
            let step = next.walk[next.index];
            if let Some(version) =
                command(&client, &load, next.delivery, step, give_up, &report).await
            {
                lock(&report).acks.push(Ack {
                    delivery: next.delivery,
                    step,
                    version,
                });
                if next.index + 1 < next.walk.len() && Instant::now() < stop_sending {
                    let _ = ready.send(Next {
                        index: next.index + 1,
                        ..next
                    });
                }
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
    let mut report = lock(&report);
    Ok(std::mem::take(&mut *report))
}

fn lock(report: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One command, resent with the same key until acknowledged or `give_up`; its new version.
async fn command(
    client: &reqwest::Client,
    load: &Load,
    delivery: Uuid,
    step: Step,
    give_up: Instant,
    report: &Mutex<Report>,
) -> Option<i64> {
    let key = Uuid::now_v7().to_string();
    let (path, token, body) = match step {
        Step::Create => load.lifecycle.step(delivery, 0),
        Step::Assign => load.lifecycle.step(delivery, 1),
        Step::PickUp => load.lifecycle.step(delivery, 2),
        Step::Complete => load.lifecycle.step(delivery, 3),
        Step::Cancel => (
            format!("/deliveries/{delivery}/cancel"),
            load.lifecycle.dispatcher_token.as_str(),
            Some(json!({"reason": "chaos: the customer changed their mind"})),
        ),
    };
    let url = format!("{}{path}", load.command_url);
    let mut backoff = Duration::from_millis(100);
    let mut retried = false;
    let mut conflicted = false;
    loop {
        let mut request = client
            .post(&url)
            .bearer_auth(token)
            .header("idempotency-key", &key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        lock(report).attempts += 1;
        match attempt(request).await {
            Answer::Acknowledged { version, replayed } => {
                let mut report = lock(report);
                report.replayed += u64::from(replayed);
                report.conflicts_after_retry += u64::from(conflicted && replayed);
                return Some(version);
            }
            Answer::Unanswered => lock(report).connection_errors += 1,
            Answer::ServerError => lock(report).server_errors += 1,
            // An earlier attempt may still be running or may have committed: resend with the
            // same key, whose stored response then replays.
            Answer::Conflict(_) if retried => conflicted = true,
            Answer::Conflict(text) | Answer::Rejected(text) => {
                lock(report)
                    .rejected
                    .push(format!("{step:?} {delivery}: {text}"));
                return None;
            }
        }
        retried = true;
        let now = Instant::now();
        if now >= give_up {
            let mut report = lock(report);
            report.abandoned += 1;
            report.unresolved_conflicts += u64::from(conflicted);
            return None;
        }
        tokio::time::sleep(backoff.min(give_up - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// How one attempt of a command ended, as far as a client can tell.
enum Answer {
    Acknowledged {
        version: i64,
        replayed: bool,
    },
    /// No connection, a timeout, or an answer cut off: the command may or may not have run.
    Unanswered,
    /// 5xx or 429: worth another try.
    ServerError,
    Conflict(String),
    /// Any other answer, or a 2xx without a version.
    Rejected(String),
}

async fn attempt(request: reqwest::RequestBuilder) -> Answer {
    let Ok(response) = request.send().await else {
        return Answer::Unanswered;
    };
    let status = response.status();
    let replayed = response.headers().contains_key("idempotency-replayed");
    let Ok(text) = response.text().await else {
        return Answer::Unanswered;
    };
    if status.is_server_error() || status.as_u16() == 429 {
        return Answer::ServerError;
    }
    if status.as_u16() == 409 {
        return Answer::Conflict(format!("{status} {text}"));
    }
    let version = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|answer| answer["version"].as_i64());
    match version {
        Some(version) if status.is_success() => Answer::Acknowledged { version, replayed },
        _ => Answer::Rejected(format!("{status} {text}")),
    }
}
