//! The start-up every binary repeats: tracing, the shutdown signal, and serving a router until
//! that signal; `metrics`: the Prometheus recorder, `GET /metrics`, and the small listener of
//! the processes whose work is not HTTP.

pub mod metrics;

use anyhow::Context;
use axum::Router;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// One `KEY=VALUE` client property as a command line gives it (`--consumer-setting`,
/// `--producer-setting`): the key trimmed, the value kept whole (it may contain `=`).
pub fn key_value(setting: &str) -> Result<(String, String), String> {
    match setting.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {setting:?}")),
    }
}

/// How a binary logs: which events (`RUST_LOG`, with a default) and where to.
pub struct Tracing {
    filter: EnvFilter,
    to_stderr: bool,
}

impl Tracing {
    /// `RUST_LOG`'s directives, or `default` when it is unset or does not parse.
    pub fn from_env_or(default: &str) -> Self {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
        Self {
            filter,
            to_stderr: false,
        }
    }

    /// Those of `RUST_LOG`'s directives that parse; errors only when there are none.
    pub fn from_env_lossy() -> Self {
        Self {
            filter: EnvFilter::from_default_env(),
            to_stderr: false,
        }
    }

    /// Logs to stderr, for a command whose stdout is its report.
    pub fn to_stderr(self) -> Self {
        Self {
            to_stderr: true,
            ..self
        }
    }

    /// Installs the process's subscriber (once, at start-up).
    pub fn init(self) {
        let logs = tracing_subscriber::fmt().with_env_filter(self.filter);
        if self.to_stderr {
            logs.with_writer(std::io::stderr).init();
        } else {
            logs.init();
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM. What the caller does then (finish requests in flight, commit
/// the batch being written) is its own decision.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a handler there is no Ctrl-C to wait for: SIGTERM still ends the wait.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
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

/// A token cancelled on Ctrl-C or SIGTERM, for loops that race their reads against it.
pub fn cancel_on_shutdown() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    shutdown
}

/// Binds `address` and serves `router` until Ctrl-C or SIGTERM; then requests in flight
/// finish before it returns. `name` says what listens, in the log.
pub async fn serve(router: Router, address: SocketAddr, name: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "{name} listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_key_equals_value() {
        assert_eq!(
            key_value("sasl.password=a=b"),
            Ok(("sasl.password".to_owned(), "a=b".to_owned()))
        );
        assert_eq!(
            key_value(" linger.ms =5"),
            Ok(("linger.ms".to_owned(), "5".to_owned()))
        );
        assert!(key_value("no-value").is_err());
        assert!(key_value("=value").is_err());
    }
}
