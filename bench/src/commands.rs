//! `bench commands`: N concurrent clients walk deliveries through create, assign, pick-up and
//! complete (4 commands per delivery); prints commands/s and latency percentiles.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::lifecycle::{Lifecycle, STEPS};

/// Closed loop: N clients, each with one command in flight.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// Base URL of the command API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[command(flatten)]
    pub lifecycle: Lifecycle,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.clients)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(config.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..config.clients)
        .map(|_| {
            let client = client.clone();
            let config = config.clone();
            tokio::spawn(async move { walk_deliveries(&client, &config, deadline).await })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new(3)?;
    for worker in workers {
        latencies.add(worker.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let commands = latencies.len();
    println!(
        "clients={} commands={} elapsed={:.1}s throughput={:.0} commands/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
        config.clients,
        commands,
        elapsed,
        commands as f64 / elapsed,
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
    );
    Ok(())
}

/// One client: whole lifecycles until the deadline; returns its latencies in microseconds.
async fn walk_deliveries(
    client: &reqwest::Client,
    config: &Config,
    deadline: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    while Instant::now() < deadline {
        let id = Uuid::now_v7();
        for step in 0..STEPS {
            let sent = Instant::now();
            let response = config
                .lifecycle
                .send(client, &config.url, id, step)
                .await
                .context("sending a command")?;
            let status = response.status();
            response.bytes().await?;
            latencies.record(sent.elapsed().as_micros() as u64)?;
            if !status.is_success() {
                bail!("step {step} of delivery {id} answered {status}");
            }
        }
    }
    Ok(latencies)
}
