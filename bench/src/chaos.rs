//! `bench chaos`: the fault-injection suite's driver (run by `scripts/chaos.sh`, which starts
//! the stack). Each trial drives lifecycle load with retrying clients while it kills parts of
//! the running stack, then, with the load stopped and the stack caught up, checks that every
//! acknowledged command is stored, the read model holds every stored event exactly once,
//! nothing is parked or poisoned and the audit is clean. Unlike the benchmarks it asserts: it
//! exits non-zero on any violation.

mod check;
mod faults;
mod load;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lifecycle::Lifecycle;
use check::Findings;
use faults::{Kind, Rng, Stack};

#[derive(clap::Args)]
pub struct Config {
    /// Base URL of the command API.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    command_url: String,
    /// The write database (event store, outbox).
    #[arg(long, env = "WRITE_DATABASE_URL")]
    write_database_url: String,
    /// The read database (query tables).
    #[arg(long, env = "READ_DATABASE_URL")]
    read_database_url: String,
    /// The stack's directory: `pids/<part>.pid` to kill, `hold/<part>` to keep a part down.
    #[arg(long, env = "STACK_DIR", default_value = ".stack-chaos")]
    stack_dir: PathBuf,
    /// The projector binary, for the second projector and the audit (inherits this process's
    /// environment: READ_DATABASE_URL, WRITE_DATABASE_URL, KAFKA_BROKERS, ...).
    #[arg(long, default_value = "target/release/projector")]
    projector_bin: PathBuf,
    /// A shell command that restarts the (dedicated!) Postgres cluster in immediate mode.
    #[arg(long, default_value = "pg_ctlcluster 15 chaos restart -m immediate")]
    postgres_restart: String,
    /// Seeds the fault schedule (and the choice of cancelled deliveries); random when omitted.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 2)]
    trials: u32,
    /// Seconds of load (and faults) per trial.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Commands started per second.
    #[arg(long, default_value_t = 60)]
    rate: u32,
    /// How long the broker stays down.
    #[arg(long, default_value_t = 20)]
    broker_down_secs: u64,
    /// After the load stops, how long commands in flight go on retrying.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// How long the stack gets to catch up before the checks.
    #[arg(long, default_value_t = 180)]
    settle_secs: u64,
    /// Share of deliveries cancelled (after creation or after assignment) instead of completed.
    #[arg(long, default_value_t = 0.15)]
    cancel_share: f64,
    #[command(flatten)]
    lifecycle: Lifecycle,
}

/// Totals over the trials, for the summary.
#[derive(Default)]
struct Totals {
    passed: u32,
    failed: u32,
    faults: BTreeMap<Kind, u32>,
    acknowledged: u64,
    lost: u64,
    events: u64,
    commands: u64,
    attempts: u64,
    abandoned: u64,
    conflicts_after_retry: u64,
    /// Parts that exited though nothing killed them, by "part (status)".
    own_exits: BTreeMap<String, u32>,
}

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let seed = match config.seed {
        Some(seed) => seed,
        None => u64::from(std::process::id()) ^ chrono::Utc::now().timestamp_micros() as u64,
    };
    println!(
        "chaos: seed {seed}, {} trials of {}s at {} commands/s (repeat with --seed {seed})",
        config.trials, config.seconds, config.rate
    );
    let write = pool(&config.write_database_url).await?;
    let read = pool(&config.read_database_url).await?;
    let stack = Arc::new(Stack {
        dir: config.stack_dir.clone(),
        projector_bin: config.projector_bin.clone(),
        postgres_restart: config.postgres_restart.clone(),
    });
    let load = Arc::new(load::Load {
        command_url: config.command_url.clone(),
        rate: config.rate,
        cancel_share: config.cancel_share,
        lifecycle: config.lifecycle.clone(),
    });
    let settle_timeout = Duration::from_secs(config.settle_secs);
    // Start from a quiet, caught-up stack, so a trial's findings are its own.
    check::settle(&write, &read, settle_timeout)
        .await
        .map_err(|e| anyhow::anyhow!("the stack is not ready: {e}"))?;
    let mut totals = Totals::default();
    let mut rng = Rng::new(seed);
    for trial in 1..=config.trials {
        let passed = one_trial(
            &config,
            seed,
            trial,
            &stack,
            &load,
            &mut rng,
            &write,
            &read,
            &mut totals,
        )
        .await?;
        if passed {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
    }
    summary(&totals, seed);
    Ok(if totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        // Short, so a check polls through a Postgres restart instead of hanging on it.
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one trial's whole context, used once"
)]
async fn one_trial(
    config: &Config,
    seed: u64,
    trial: u32,
    stack: &Arc<Stack>,
    load: &Arc<load::Load>,
    rng: &mut Rng,
    write: &PgPool,
    read: &PgPool,
    totals: &mut Totals,
) -> anyhow::Result<bool> {
    let duration = Duration::from_secs(config.seconds);
    let plan = faults::plan(
        seed,
        trial,
        duration,
        Duration::from_secs(config.broker_down_secs),
    );
    let mut exits = faults::SupervisorLog::from_end(stack);
    let started = Instant::now();
    let injector = {
        let stack = stack.clone();
        tokio::spawn(async move {
            let handles: Vec<_> = plan
                .into_iter()
                .map(|fault| {
                    let stack = stack.clone();
                    tokio::spawn(async move {
                        let outcome = faults::inject(&stack, fault, started).await;
                        (fault, outcome)
                    })
                })
                .collect();
            let mut done = Vec::new();
            for handle in handles {
                done.push(handle.await);
            }
            done
        })
    };
    let report = load::run(
        load.clone(),
        rng,
        duration,
        Duration::from_secs(config.grace_secs),
    )
    .await?;
    let mut findings = Findings::default();
    for done in injector.await.context("the fault injector panicked")? {
        let (fault, outcome) = done.context("a fault panicked")?;
        match outcome {
            Ok((detail, second)) => {
                println!(
                    "  trial {trial} t={:>4.1}s {}: {detail}",
                    fault.at.as_secs_f64(),
                    fault.kind
                );
                *totals.faults.entry(fault.kind).or_default() += 1;
                if let Some(second) = second {
                    faults::stop_second(second)
                        .await
                        .context("stopping the second projector")?;
                }
            }
            // The harness could not do it: the trial proves less than it claims, so it fails.
            Err(e) => findings.add("fault not injected", format!("{}: {e:#}", fault.kind)),
        }
    }
    let settled = check::settle(write, read, Duration::from_secs(config.settle_secs)).await;
    if let Err(e) = &settled {
        findings.add("settle", e.clone());
    }
    check::acknowledged(write, &report.acks, &mut findings).await?;
    let events = check::exactly_once(write, read, &mut findings).await?;
    check::nothing_stuck(read, &mut findings).await?;
    check::audit(
        &config.projector_bin,
        Duration::from_secs(300),
        &mut findings,
    )
    .await;
    for rejected in &report.rejected {
        findings.add("unexpected answer", rejected.clone());
    }
    if report.unresolved_conflicts > 0 {
        findings.add(
            "409 never resolved by the key's replay",
            format!("{} commands", report.unresolved_conflicts),
        );
    }
    let lost = findings.count(check::LOST);
    let passed = findings.is_empty();
    println!(
        "trial {trial}: {} | {} commands, {} acknowledged, {} lost | {} attempts ({} connection errors, {} 5xx), {} replayed, {} 409-after-retry, {} abandoned | settled in {} | {events} events in the store",
        if passed { "PASS" } else { "FAIL" },
        report.commands,
        report.acks.len(),
        lost,
        report.attempts,
        report.connection_errors,
        report.server_errors,
        report.replayed,
        report.conflicts_after_retry,
        report.abandoned,
        settled.map_or_else(|_| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
    );
    let (killed, own) = exits.exits();
    println!("  restarted after a kill: {}", counts(&killed));
    println!(
        "  exited on their own (restarted by the supervisor): {}",
        counts(&own)
    );
    for (part, n) in own {
        *totals.own_exits.entry(part).or_default() += n;
    }
    findings.print();
    totals.acknowledged += report.acks.len() as u64;
    totals.lost += lost;
    totals.events = events;
    totals.commands += report.commands;
    totals.attempts += report.attempts;
    totals.abandoned += report.abandoned;
    totals.conflicts_after_retry += report.conflicts_after_retry;
    Ok(passed)
}

fn counts(counts: &BTreeMap<String, u32>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(what, n)| format!("{what} x{n}"))
        .collect();
    counts.join(", ")
}

fn summary(totals: &Totals, seed: u64) {
    let faults: Vec<String> = totals
        .faults
        .iter()
        .map(|(kind, n)| format!("{kind} x{n}"))
        .collect();
    println!(
        "summary (seed {seed}): {} trials; faults: {}; {} commands, {} acknowledged, {} lost; {} attempts, {} 409-after-retry, {} abandoned at trial end; {} events stored",
        totals.passed + totals.failed,
        faults.join(", "),
        totals.commands,
        totals.acknowledged,
        totals.lost,
        totals.attempts,
        totals.conflicts_after_retry,
        totals.abandoned,
        totals.events,
    );
    println!(
        "parts that exited on their own (the supervisor restarted them): {}",
        counts(&totals.own_exits)
    );
    println!("chaos: {} passed, {} failed", totals.passed, totals.failed);
}
