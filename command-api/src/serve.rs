//! `command-api serve`: its configuration, its database pool, the idempotency-key cleanup job,
//! and serving until Ctrl-C or SIGTERM.

use crate::auth::Tokens;
use crate::http::{AppState, app_with_limits};
use crate::idempotency;
use crate::limits::Limits;
use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// Serve the HTTP command endpoints.
// Deliberately not `Debug`: the tokens are secrets.
#[derive(clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "COMMAND_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer tokens and their actors: TOKEN=ROLE:ID, comma separated
    /// (roles: dispatcher, rider, customer, admin, system).
    #[arg(long, env = "COMMAND_API_TOKENS", hide_env_values = true)]
    pub tokens: String,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "COMMAND_API_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Connections in the database pool.
    #[arg(long, env = "COMMAND_API_DB_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_connections: u32,
    /// Apply the write database's migrations before serving (for a single-instance dev stack).
    #[arg(long, env = "COMMAND_API_MIGRATE")]
    pub migrate: bool,
    /// Longest wait for a pooled connection before a command gets 503, in milliseconds
    /// (must be below the request timeout).
    #[arg(long, env = "COMMAND_API_ACQUIRE_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub acquire_timeout_ms: u64,
    /// Postgres `statement_timeout` of every pooled connection, in milliseconds: a statement
    /// that runs longer (a lock wait, a slow disk) is cancelled and the command gets 503.
    #[arg(long, env = "COMMAND_API_STATEMENT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub statement_timeout_ms: u64,
    /// Longest a command may take, in milliseconds; past it the client gets 503.
    #[arg(long, env = "COMMAND_API_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Commands in progress at once; beyond it a command gets 503 at once.
    #[arg(long, env = "COMMAND_API_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,
    /// How long an Idempotency-Key is remembered, in seconds; then the key is new again.
    #[arg(long, env = "COMMAND_API_IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 60 * 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,
    /// How often expired Idempotency-Keys are deleted, in seconds.
    #[arg(long, env = "COMMAND_API_IDEMPOTENCY_CLEANUP_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_cleanup_secs: u64,
    /// Group-commit writers: statements in progress at once, each writing the events of every
    /// command (without an Idempotency-Key) that queued while the one before it ran, in one
    /// transaction. 0: each command commits in a transaction of its own.
    #[arg(long, env = "COMMAND_API_GROUP_COMMIT_WRITERS", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(0..=64))]
    pub group_commit_writers: u64,
    /// Expired Idempotency-Keys deleted per statement by the cleanup.
    #[arg(long, env = "COMMAND_API_IDEMPOTENCY_CLEANUP_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub idempotency_cleanup_batch: i64,
}

impl ServeConfig {
    /// The request's bounds, checked against each other.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        // A command waiting for a connection must get its 503 from the pool, with the
        // database named as the cause, before the request timeout answers for it.
        anyhow::ensure!(
            self.acquire_timeout_ms < self.request_timeout_ms,
            "COMMAND_API_ACQUIRE_TIMEOUT_MS ({}) must be below COMMAND_API_REQUEST_TIMEOUT_MS ({})",
            self.acquire_timeout_ms,
            self.request_timeout_ms
        );
        Ok(Limits {
            max_in_flight: usize::try_from(self.max_in_flight)
                .context("COMMAND_API_MAX_IN_FLIGHT is too large")?,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
            group_commit_writers: usize::try_from(self.group_commit_writers)
                .context("COMMAND_API_GROUP_COMMIT_WRITERS is too large")?,
        })
    }
}

/// Connection options with the statement timeout set at connection start-up, so every pooled
/// connection has it, new ones after a database restart included.
pub fn connect_options(options: PgConnectOptions, statement_timeout: Duration) -> PgConnectOptions {
    options.options([(
        "statement_timeout",
        format!("{}ms", statement_timeout.as_millis()),
    )])
}

/// The pool: bounded waits for a connection, and every connection checked before use, so one
/// that a database restart killed is replaced instead of failing a command.
pub fn pool_options(connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(true)
}

/// Connects, optionally migrates, starts the key cleanup, and serves until shut down.
pub async fn run(database_url: &str, config: ServeConfig) -> anyhow::Result<()> {
    let tokens = Tokens::parse(&config.tokens).context("reading COMMAND_API_TOKENS")?;
    let limits = config.limits()?;
    let options: PgConnectOptions = database_url.parse().context("reading WRITE_DATABASE_URL")?;
    let options = connect_options(options, Duration::from_millis(config.statement_timeout_ms));
    // Lazy: a database that is not up yet (the stack starting, Postgres restarting) is an
    // outage like any other, answered 503 until it is back, not a reason to exit.
    let pool = pool_options(
        config.db_connections,
        Duration::from_millis(config.acquire_timeout_ms),
    )
    .connect_lazy_with(options);
    if config.migrate {
        migrations::WRITE
            .run(&pool)
            .await
            .context("migrating the write database")?;
    }
    tokio::spawn(clean_up_keys(
        pool.clone(),
        limits.idempotency_ttl,
        Duration::from_secs(config.idempotency_cleanup_secs),
        config.idempotency_cleanup_batch,
    ));
    let state = AppState {
        pool,
        tokens,
        max_body_bytes: config.max_body_bytes,
    };
    // In-flight commands finish before the process exits.
    platform::service::serve(app_with_limits(state, limits), config.listen, "command API").await
}

/// Deletes expired idempotency keys every `every`, for as long as the process serves. A
/// failure (the database restarting) is logged and the next round tries again.
async fn clean_up_keys(pool: PgPool, ttl: Duration, every: Duration, batch: i64) {
    // `interval` refuses a zero period; the flag's range already does, this keeps it total.
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match idempotency::purge_expired(&pool, ttl, batch).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired idempotency keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn flags_parse_with_defaults_and_the_help_names_every_variable() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["serve", "--tokens", "t"]).expect("valid flags");
        let limits = cli.serve.limits().expect("default limits agree");
        assert_eq!(limits.max_in_flight, 64);
        assert_eq!(limits.request_timeout, Duration::from_secs(10));
        assert_eq!(limits.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(limits.group_commit_writers, 4);
        assert_eq!(
            (cli.serve.acquire_timeout_ms, cli.serve.statement_timeout_ms),
            (2000, 5000)
        );
        let slow_pool =
            Cli::try_parse_from(["serve", "--tokens", "t", "--acquire-timeout-ms", "20000"])
                .expect("valid flags");
        assert!(slow_pool.serve.limits().is_err());
        let help = Cli::command().render_long_help().to_string();
        for variable in [
            "COMMAND_API_ACQUIRE_TIMEOUT_MS",
            "COMMAND_API_STATEMENT_TIMEOUT_MS",
            "COMMAND_API_REQUEST_TIMEOUT_MS",
            "COMMAND_API_MAX_IN_FLIGHT",
            "COMMAND_API_IDEMPOTENCY_TTL_SECS",
            "COMMAND_API_IDEMPOTENCY_CLEANUP_SECS",
            "COMMAND_API_IDEMPOTENCY_CLEANUP_BATCH",
            "COMMAND_API_GROUP_COMMIT_WRITERS",
        ] {
            assert!(help.contains(variable), "{variable} missing from --help");
        }
    }
}
