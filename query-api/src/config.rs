//! The binary's configuration and start-up: flags with environment fallbacks, then serve until
//! Ctrl-C or SIGTERM.

use crate::auth::Tokens;
use crate::http::{AppState, app};
use crate::projection::ProjectionWatch;
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
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
}

/// Connects, starts listening for projector commits, and serves until shut down.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let tokens = Tokens::parse(&config.tokens).context("reading QUERY_API_TOKENS")?;
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .context("reading QUERY_API_DATABASE_URL")?;
    // Belt and braces: the role can only read, and every transaction says so too.
    let options = options.options([("default_transaction_read_only", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(config.db_connections)
        .connect_with(options)
        .await
        .context("connecting to the read database (QUERY_API_DATABASE_URL)")?;
    let projection = ProjectionWatch::listen(&pool)
        .await
        .context("listening for projector commits")?;
    let state = AppState {
        pool,
        tokens,
        max_wait: Duration::from_millis(config.max_wait_ms),
        projection,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, "query API listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")
}

/// Resolves on Ctrl-C or SIGTERM, so in-flight reads finish before the process exits.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
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
        ] {
            assert!(help.contains(variable), "{variable} missing from --help");
        }
    }
}
