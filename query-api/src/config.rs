//! The binary's configuration and start-up: flags with environment fallbacks, then serve until
//! Ctrl-C or SIGTERM.

use crate::auth::Tokens;
use crate::bounds::{DEFAULT_MAX_CONCURRENT_REQUESTS, HttpBounds, PoolBounds};
use crate::freshness::{DEFAULT_MAX_WAITERS, FreshnessWatch};
use crate::http::{AppState, app_with_bounds};
use crate::live::{Live, LiveConfig};
use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::time::Duration;

/// The delivery query API: HTTP reads over the read database's query tables.
// Deliberately not `Debug`: the database URL and the tokens are secrets.
#[derive(clap::Parser)]
#[command(version, about)]
pub struct Config {
    /// The read database (query tables), as the read-only login created by `migrate`.
    #[arg(long, env = "QUERY_API_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "QUERY_API_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Bearer tokens, comma separated, each at least 8 characters; any of them may read everything.
    #[arg(long, env = "QUERY_API_TOKENS", hide_env_values = true)]
    pub tokens: String,
    /// Connections in the database pool (one of them is held for LISTEN).
    #[arg(long, env = "QUERY_API_DB_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub db_connections: u32,
    /// The longest a read with `?min_version=` waits for the projector, in milliseconds
    /// (at most 60000).
    #[arg(long, env = "QUERY_API_MAX_WAIT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub max_wait_ms: u64,
    /// Reads with `?min_version=` allowed to wait for the projector at once; past this a read
    /// that would wait gets 503 `too-many-waiters` at once.
    #[arg(long, env = "QUERY_API_MAX_WAITERS", default_value_t = DEFAULT_MAX_WAITERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_waiters: u32,
    /// The longest a read waits for a pooled connection, in milliseconds, before answering 503
    /// `database-unavailable`. Must be below QUERY_API_MAX_WAIT_MS (when that is not 0).
    #[arg(long, env = "QUERY_API_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub db_acquire_timeout_ms: u64,
    /// Postgres `statement_timeout` on every connection, in milliseconds; a statement that
    /// runs longer is cancelled and the read answers 503 `read-timed-out`.
    #[arg(long, env = "QUERY_API_STATEMENT_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub statement_timeout_ms: u64,
    /// The longest a request may take, in milliseconds, before it answers 503
    /// `request-timed-out`. Must exceed QUERY_API_MAX_WAIT_MS + QUERY_API_DB_ACQUIRE_TIMEOUT_MS +
    /// QUERY_API_STATEMENT_TIMEOUT_MS, so a wait always gets to give its own answer.
    #[arg(long, env = "QUERY_API_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// Requests served at once (health checks aside); past this a request gets 503
    /// `overloaded` at once.
    #[arg(long, env = "QUERY_API_MAX_CONCURRENT_REQUESTS",
          default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_requests: u32,
    /// Live streams (`/deliveries/{id}/stream`, `/stats/stream`, `/events/stream`) open at
    /// once; past this a new stream gets 503 `too-many-streams` at once. They do not count
    /// against QUERY_API_MAX_CONCURRENT_REQUESTS.
    #[arg(long, env = "QUERY_API_MAX_STREAMS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams: u32,
    /// Seconds between keep-alive comments on an idle live stream.
    #[arg(long, env = "QUERY_API_STREAM_KEEP_ALIVE_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stream_keep_alive_secs: u64,
    /// How long a dashboard session (its cookie) lasts, in seconds.
    #[arg(long, env = "QUERY_API_DASHBOARD_SESSION_SECS", default_value_t = 8 * 3600,
          value_parser = clap::value_parser!(u64).range(60..=7 * 24 * 3600))]
    pub dashboard_session_secs: u64,
    /// Marks the dashboard's session cookie `Secure` (sent over HTTPS only): set it whenever
    /// the API is reached through TLS.
    #[arg(long, env = "QUERY_API_SECURE_COOKIE")]
    pub secure_cookie: bool,
}

/// Every bound the configuration sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub http: HttpBounds,
    pub pool: PoolBounds,
    /// Reads waiting for the projector at once (`FreshnessWatch::with_max_waiters`).
    pub max_waiters: usize,
    pub live: LiveConfig,
}

/// Bounds that contradict each other.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error(
        "the pool's acquire timeout ({acquire_ms} ms) must be below the read-your-writes wait \
         ({wait_ms} ms): a read that cannot get a connection must learn it before its wait ends"
    )]
    AcquireNotBelowWait { acquire_ms: u64, wait_ms: u64 },
    #[error(
        "the request timeout ({request_ms} ms) must exceed the wait, the acquire timeout and the \
         statement timeout together ({needed_ms} ms), or it cuts off waits that would answer"
    )]
    RequestTimeoutTooShort { request_ms: u64, needed_ms: u64 },
}

impl Config {
    /// The bounds this configuration sets, once they are checked against each other.
    pub fn bounds(&self) -> Result<Bounds, BoundsError> {
        if self.max_wait_ms > 0 && self.db_acquire_timeout_ms >= self.max_wait_ms {
            return Err(BoundsError::AcquireNotBelowWait {
                acquire_ms: self.db_acquire_timeout_ms,
                wait_ms: self.max_wait_ms,
            });
        }
        let needed_ms = self.max_wait_ms + self.db_acquire_timeout_ms + self.statement_timeout_ms;
        if self.request_timeout_ms <= needed_ms {
            return Err(BoundsError::RequestTimeoutTooShort {
                request_ms: self.request_timeout_ms,
                needed_ms,
            });
        }
        let http = HttpBounds {
            max_concurrent_requests: self.max_concurrent_requests as usize,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        };
        let pool = PoolBounds {
            connections: self.db_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
        };
        let live = LiveConfig {
            max_streams: self.max_streams as usize,
            keep_alive: Duration::from_secs(self.stream_keep_alive_secs),
            session_ttl: Duration::from_secs(self.dashboard_session_secs),
            secure_cookie: self.secure_cookie,
            ..LiveConfig::default()
        };
        Ok(Bounds {
            http,
            pool,
            max_waiters: self.max_waiters as usize,
            live,
        })
    }
}

/// Connects, starts listening for projector commits, and serves until shut down.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let tokens = Tokens::parse(&config.tokens).context("reading QUERY_API_TOKENS")?;
    let bounds = config.bounds().context("checking the bounds")?;
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .context("reading QUERY_API_DATABASE_URL")?;
    let pool = bounds
        .pool
        .pool_options()
        .connect_with(bounds.pool.connect_options(options))
        .await
        .context("connecting to the read database (QUERY_API_DATABASE_URL)")?;
    let freshness = FreshnessWatch::listen(&pool)
        .await
        .context("listening for projector commits")?
        .with_max_waiters(bounds.max_waiters);
    let live = Live::new(bounds.live);
    let state = AppState {
        pool,
        tokens,
        max_wait: Duration::from_millis(config.max_wait_ms),
        freshness,
        live: live.clone(),
    };
    // Live streams never end by themselves: end them at the signal, or the graceful shutdown
    // below would wait for them forever. In-flight reads finish before the process exits.
    let shutdown = platform::service::cancel_on_shutdown();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        live.close();
    });
    platform::service::serve(
        app_with_bounds(state, bounds.http),
        config.listen,
        "query API",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_parse_with_defaults_and_the_help_names_every_variable() {
        Config::command().debug_assert();
        let config = Config::try_parse_from([
            "query-api",
            "--database-url",
            "postgres://query_api@localhost/delivery_read",
            "--tokens",
            "reader-token-1",
        ])
        .expect("valid flags");
        assert_eq!(config.listen, "127.0.0.1:8081".parse().expect("address"));
        assert_eq!((config.db_connections, config.max_wait_ms), (16, 2000));
        let bounds = config.bounds().expect("the defaults agree with each other");
        assert_eq!(bounds.http, HttpBounds::default());
        assert_eq!(bounds.pool, PoolBounds::default());
        assert_eq!(bounds.max_waiters, DEFAULT_MAX_WAITERS);
        assert_eq!(bounds.live, LiveConfig::default());
        assert!(
            Config::try_parse_from(["query-api", "--tokens", "x", "--db-connections", "1"])
                .is_err()
        );
        let help = Config::command().render_long_help().to_string();
        for variable in [
            "QUERY_API_DATABASE_URL",
            "QUERY_API_LISTEN",
            "QUERY_API_TOKENS",
            "QUERY_API_DB_CONNECTIONS",
            "QUERY_API_MAX_WAIT_MS",
            "QUERY_API_MAX_WAITERS",
            "QUERY_API_DB_ACQUIRE_TIMEOUT_MS",
            "QUERY_API_STATEMENT_TIMEOUT_MS",
            "QUERY_API_REQUEST_TIMEOUT_MS",
            "QUERY_API_MAX_CONCURRENT_REQUESTS",
            "QUERY_API_MAX_STREAMS",
            "QUERY_API_STREAM_KEEP_ALIVE_SECS",
            "QUERY_API_DASHBOARD_SESSION_SECS",
            "QUERY_API_SECURE_COOKIE",
        ] {
            assert!(help.contains(variable), "{variable} missing from --help");
        }
    }

    fn with(flags: &[&str]) -> Config {
        let mut args = vec![
            "query-api",
            "--database-url",
            "postgres://x@h/d",
            "--tokens",
            "t",
        ];
        args.extend_from_slice(flags);
        Config::try_parse_from(args).expect("valid flags")
    }

    #[test]
    fn bounds_that_contradict_each_other_are_refused_at_start_up() {
        assert_eq!(
            with(&["--db-acquire-timeout-ms", "2000"]).bounds().err(),
            Some(BoundsError::AcquireNotBelowWait {
                acquire_ms: 2000,
                wait_ms: 2000
            })
        );
        // With waits turned off there is no wait to stay below.
        assert!(
            with(&["--max-wait-ms", "0", "--db-acquire-timeout-ms", "5000"])
                .bounds()
                .is_ok()
        );
        assert_eq!(
            with(&["--request-timeout-ms", "6000"]).bounds().err(),
            Some(BoundsError::RequestTimeoutTooShort {
                request_ms: 6000,
                needed_ms: 6000
            })
        );
        let bounds = with(&[
            "--max-waiters",
            "3",
            "--max-concurrent-requests",
            "7",
            "--statement-timeout-ms",
            "250",
            "--request-timeout-ms",
            "3251",
        ])
        .bounds()
        .expect("consistent bounds");
        assert_eq!(
            (bounds.max_waiters, bounds.http.max_concurrent_requests),
            (3, 7)
        );
        assert_eq!(bounds.http.request_timeout, Duration::from_millis(3251));
        assert_eq!(bounds.pool.statement_timeout, Duration::from_millis(250));
        for zero in [
            "--max-waiters",
            "--max-concurrent-requests",
            "--request-timeout-ms",
        ] {
            assert!(
                Config::try_parse_from(["query-api", "--tokens", "t", zero, "0"]).is_err(),
                "{zero} 0"
            );
        }
    }
}
