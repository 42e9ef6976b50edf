//! `bench pipeline`: commands at a steady rate (open loop: the schedule does not wait for
//! answers), each walked on through its delivery's lifecycle. For every accepted command it
//! asks the query API for the returned version (`?min_version=`, which waits server-side for
//! the projection) and records the time from accepted to visible.

use anyhow::Context;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::lifecycle::{Lifecycle, STEPS};

#[derive(clap::Args)]
pub struct Config {
    /// Base URL of the command API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    /// Base URL of the query API.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    /// Commands per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long to send commands.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[command(flatten)]
    lifecycle: Lifecycle,
    #[arg(long, default_value = "dev-reader-token")]
    reader_token: String,
}

/// A delivery and the lifecycle step it is ready for (0 = create ... 3 = complete).
#[derive(Clone, Copy)]
struct Next {
    id: Uuid,
    step: u8,
}

#[derive(Default)]
struct Figures {
    accepted: Option<Histogram<u64>>,
    visible: Option<Histogram<u64>>,
    failed: u64,
    /// Why commands failed, each reason with its count: a figure of failures says little
    /// without what failed (a refusal, a timeout, a dropped connection).
    failures: BTreeMap<String, u64>,
    not_visible: u64,
    /// Why reads did not see their command, each reason with its count: a read that waited
    /// its whole wait (`not-yet-projected`) says something else than one shed at once
    /// (`too-many-waiters`).
    not_visible_reasons: BTreeMap<String, u64>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let figures = Arc::new(Mutex::new(Figures {
        accepted: Some(Histogram::new(3)?),
        visible: Some(Histogram::new(3)?),
        ..Figures::default()
    }));
    warm_up(&client, &config).await?;
    let (ready, mut next_steps) = mpsc::unbounded_channel::<Next>();
    let mut schedule = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(config.rate)));
    let mut in_flight = JoinSet::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(config.seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        schedule.tick().await;
        // Continue a delivery whose previous command was accepted, or start a new one.
        let next = next_steps.try_recv().unwrap_or(Next {
            id: Uuid::now_v7(),
            step: 0,
        });
        sent += 1;
        let (client, config, figures, ready) = (
            client.clone(),
            config.clone(),
            figures.clone(),
            ready.clone(),
        );
        in_flight.spawn(async move {
            let result = one_command(&client, &config, next, &ready, &figures).await;
            if let Err(error) = result {
                let mut figures = lock(&figures);
                figures.failed += 1;
                *figures.failures.entry(failure_reason(&error)).or_default() += 1;
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    let sending = started.elapsed().as_secs_f64();
    while in_flight.join_next().await.is_some() {}

    let figures = lock(&figures);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let accepted = figures.accepted.as_ref().context("histogram")?;
    let visible = figures.visible.as_ref().context("histogram")?;
    println!(
        "rate={}/s sent={sent} in {sending:.1}s ({:.0} commands/s) failed={} not_visible={}",
        config.rate,
        sent as f64 / sending,
        figures.failed,
        figures.not_visible
    );
    for (reason, count) in &figures.failures {
        println!("failed: {count} x {reason}");
    }
    for (reason, count) in &figures.not_visible_reasons {
        println!("not visible: {count} x {reason}");
    }
    println!(
        "command accepted: p50={:.2}ms p99={:.2}ms max={:.2}ms",
        ms(accepted, 0.5),
        ms(accepted, 0.99),
        accepted.max() as f64 / 1000.0
    );
    println!(
        "accepted -> visible in the query API: p50={:.2}ms p99={:.2}ms max={:.2}ms (n={})",
        ms(visible, 0.5),
        ms(visible, 0.99),
        visible.max() as f64 / 1000.0,
        visible.len()
    );
    Ok(())
}

/// Waits until one command is visible end to end: the relay is publishing and the projector
/// has joined its group, so start-up is not measured as latency.
async fn warm_up(client: &reqwest::Client, config: &Config) -> anyhow::Result<()> {
    let (ready, _) = mpsc::unbounded_channel();
    let figures = Mutex::new(Figures {
        accepted: Some(Histogram::new(3)?),
        visible: Some(Histogram::new(3)?),
        ..Figures::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let next = Next {
            id: Uuid::now_v7(),
            step: 0,
        };
        one_command(client, config, next, &ready, &figures).await?;
        if lock(&figures).not_visible == 0 {
            return Ok(());
        }
        lock(&figures).not_visible = 0;
    }
    anyhow::bail!("nothing became visible in the query API within a minute")
}

/// A failure's kind without its ids (a status, or reqwest's own words), so alike failures
/// count together.
fn failure_reason(error: &anyhow::Error) -> String {
    match error.downcast_ref::<reqwest::Error>() {
        Some(error) if error.status().is_some() => {
            format!("HTTP {}", error.status().unwrap_or_default())
        }
        Some(error) if error.is_timeout() => "timed out".to_owned(),
        Some(error) if error.is_connect() => "could not connect".to_owned(),
        Some(error) if error.is_request() => {
            "request failed (connection closed or reset)".to_owned()
        }
        Some(error) if error.is_body() || error.is_decode() => "answer unreadable".to_owned(),
        _ => error.to_string().chars().take(80).collect(),
    }
}

/// A refused read's reason: its status and problem code (`503 too-many-waiters`), or its
/// status alone when the answer is not a problem.
fn problem_reason(status: reqwest::StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| Some(problem.get("code")?.as_str()?.to_owned()));
    match code {
        Some(code) => format!("HTTP {} {code}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

fn lock(figures: &Mutex<Figures>) -> std::sync::MutexGuard<'_, Figures> {
    figures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn one_command(
    client: &reqwest::Client,
    config: &Config,
    next: Next,
    ready: &mpsc::UnboundedSender<Next>,
    figures: &Mutex<Figures>,
) -> anyhow::Result<()> {
    let id = next.id;
    let sent = Instant::now();
    let response = config
        .lifecycle
        .send(client, &config.command_url, id, next.step)
        .await?
        .error_for_status()?;
    let answer: serde_json::Value = response.json().await?;
    let accepted = Instant::now();
    let version = answer["version"].as_i64().context("no version")?;
    if next.step + 1 < STEPS {
        let _ = ready.send(Next {
            id,
            step: next.step + 1,
        });
    }
    let visible = client
        .get(format!(
            "{}/deliveries/{id}?min_version={version}&wait_ms=5000",
            config.query_url
        ))
        .bearer_auth(&config.reader_token)
        .send()
        .await?;
    let status = visible.status();
    let body = visible.bytes().await?;
    let mut figures = lock(figures);
    if let Some(h) = figures.accepted.as_mut() {
        h.record(accepted.duration_since(sent).as_micros() as u64)?;
    }
    if status.is_success() {
        if let Some(h) = figures.visible.as_mut() {
            h.record(accepted.elapsed().as_micros() as u64)?;
        }
    } else {
        figures.not_visible += 1;
        *figures
            .not_visible_reasons
            .entry(problem_reason(status, &body))
            .or_default() += 1;
    }
    Ok(())
}
