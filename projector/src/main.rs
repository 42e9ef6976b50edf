//! `projector run`: builds the query tables from the event topic until stopped.
//! `projector rebuild`: builds projections anew from the first event and switches them live.
//! `projector audit verify`: checks the event store, the topic and the read model agree.
//! `projector dlq list | retry | skip`: shows stuck events and gets them moving again.

use clap::Parser;
use projector::cli::{self, Cli};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // Logs go to stderr: stdout is the command's report.
    platform::service::Tracing::from_env_or("info")
        .to_stderr()
        .init();
    // First: metrics recorded before the recorder exists are lost.
    platform::service::metrics::install();
    cli::run(Cli::parse()).await
}
