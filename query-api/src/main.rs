//! `query-api`: serves the read model over HTTP. See `query_api::Config` (or `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    query_api::serve(query_api::Config::parse()).await
}
