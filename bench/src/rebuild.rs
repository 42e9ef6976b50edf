//! `bench rebuild`: a backlog of whole lifecycles in a fresh topic, the broker's raw consume
//! rate, the live projector brought to the end of it, then `projector rebuild` (the release
//! binary, as a user runs it) replaying every projection from the first event and switching
//! it in. Prints the rebuild's own report (events/s, peak RSS) and its ratio to the raw rate.
//! Before the rebuild starts, the live projection's tables are vacuumed and checkpointed.

use crate::catch_up;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Config {
    #[command(flatten)]
    backlog: catch_up::Config,
    /// The projector binary to run the rebuild with.
    #[arg(long, default_value = "target/release/projector")]
    projector_bin: PathBuf,
    /// Messages per transaction in the rebuild.
    #[arg(long, default_value_t = 2500)]
    rebuild_batch_size: usize,
    /// Concurrent transactions in the rebuild.
    #[arg(long, default_value_t = 2)]
    rebuild_lanes: usize,
}

const LIVE_GROUP: &str = "bench-live-projector";

pub async fn run(config: Config) -> anyhow::Result<()> {
    let backlog = &config.backlog;
    let deliveries = backlog.events / 4;
    let events = deliveries * 4;
    let produced = Instant::now();
    catch_up::produce(&backlog.brokers, &backlog.topic, deliveries).await?;
    println!(
        "backlog: {events} events ({deliveries} deliveries) produced in {:.1}s",
        produced.elapsed().as_secs_f64()
    );
    let raw = catch_up::raw_consume(&backlog.brokers, &backlog.topic, events).await?;
    let raw_rate = events as f64 / raw;
    println!("raw rdkafka consume: {events} messages in {raw:.2}s ({raw_rate:.0} messages/s)");

    catch_up::fresh_database(&backlog.read_database_url).await?;
    let (elapsed, _) = catch_up::project(backlog, LIVE_GROUP, events).await?;
    println!(
        "live projector to the end of the topic: {elapsed:.1}s ({:.0} events/s)",
        events as f64 / elapsed
    );

    settle(&backlog.read_database_url).await?;

    let started = Instant::now();
    let output = tokio::process::Command::new(&config.projector_bin)
        .args(["--database-url", &backlog.read_database_url, "rebuild"])
        .args(["--brokers", &backlog.brokers, "--topic", &backlog.topic])
        .args(["--group", LIVE_GROUP, "--no-progress"])
        .arg(format!("--batch-size={}", config.rebuild_batch_size))
        .arg(format!("--lanes={}", config.rebuild_lanes))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("running {}", config.projector_bin.display()))?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "the rebuild failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rate = events as f64 / wall;
    print!(
        "projector rebuild: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    println!(
        "rebuild wall time (process start to exit): {wall:.2}s, {rate:.0} events/s = {:.2}x the raw consume rate",
        rate / raw_rate
    );
    Ok(())
}

/// Does now what the live projection's million rows would set off during the rebuild (vacuum
/// of the new tables, a checkpoint), as one does after a bulk load, so the rebuild is timed
/// alone.
async fn settle(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query!("vacuum (analyze)").execute(&mut conn).await?;
    sqlx::query!("checkpoint").execute(&mut conn).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while Instant::now() < deadline {
        let vacuuming: i64 = sqlx::query_scalar!(
            r#"select count(*) as "workers!" from pg_stat_activity
               where backend_type = 'autovacuum worker' and datname = current_database()"#,
        )
        .fetch_one(&mut conn)
        .await?;
        if vacuuming == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    conn.close().await?;
    Ok(())
}
