//! `bench`: benchmarks, not tests; they print figures and assert nothing.
//! - `commands`: the command API alone, closed loop.
//! - `pipeline`: a steady command rate, timing each command from accepted to visible in the
//!   query API.
//! - `catch-up`: the projector's apply rate over a backlog already in Kafka.
//! - `rebuild`: `projector rebuild` over a backlog, beside the broker's raw consume rate.
//! - `queries`: the query API's read latency at a fixed request rate over a large read model.
//! - `broker`: the broker's own latency, for comparison.
//! - `chaos`: not a benchmark but the fault-injection suite's driver; it asserts.

mod broker;
mod catch_up;
mod chaos;
mod commands;
mod lifecycle;
mod pipeline;
mod queries;
mod rebuild;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Benchmarks of the delivery platform")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Load the command API with concurrent delivery lifecycles (closed loop).
    Commands(commands::Config),
    /// Time commands from accepted to visible in the query API at a steady rate (open loop).
    Pipeline(pipeline::Config),
    /// The query API's read latency at a fixed request rate (open loop), reads by id and
    /// listing pages over a read model of `--deliveries` rows.
    Queries(queries::Config),
    /// The broker's own produce and consume latency, nothing of ours in the path.
    Broker(broker::Config),
    /// Put a backlog of events in Kafka and time the projector catching up on it.
    CatchUp(catch_up::Config),
    /// Put a backlog in Kafka, project it live, then time `projector rebuild` replaying it.
    Rebuild(rebuild::Config),
    /// Lifecycle load with retrying clients while faults hit the running stack, then checks
    /// that nothing acknowledged was lost (scripts/chaos.sh runs it). Exits 1 on a violation.
    Chaos(chaos::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    platform::service::Tracing::from_env_or("warn").init();
    match Cli::parse().bench {
        Bench::Commands(config) => commands::run(config).await?,
        Bench::Pipeline(config) => pipeline::run(config).await?,
        Bench::Queries(config) => queries::run(config).await?,
        Bench::CatchUp(config) => catch_up::run(config).await?,
        Bench::Broker(config) => broker::run(config).await?,
        Bench::Rebuild(config) => rebuild::run(config).await?,
        Bench::Chaos(config) => return chaos::run(config).await,
    }
    Ok(ExitCode::SUCCESS)
}
