//! `query-api`: serves the read model over HTTP. See `query_api::Config` (or `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::Tracing::from_env_or("info,tower_http=info").init();
    // First: metrics recorded before the recorder exists are lost.
    platform::service::metrics::install();
    query_api::serve(query_api::Config::parse()).await
}
