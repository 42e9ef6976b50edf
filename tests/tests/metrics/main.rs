//! Metrics scraped from every part during end-to-end runs (the local Postgres, a real broker on
//! a free port, every part in-process) and parsed: the numbers move as the work did. And the
//! dashboard and alert rules in `deploy/` use only metrics that a real scrape has.
//!
//! Every part of every stack in this process records into the process's one recorder, so the
//! tests here run one at a time ([`serial`]) and compare values before and after their work.

mod commands;
mod deploy_files;
mod pipeline;
mod queries;

use e2e::Scrape;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

/// Held for a whole test: no other test of this binary moves the numbers meanwhile.
pub(crate) async fn serial() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}

/// A deadline for states that need the pipeline to move (publish, consume, watch).
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Scrapes `url` until `check` finds what it waits for; returns that scrape.
pub(crate) async fn scrape_until(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    e2e::eventually(PATIENCE, what, || async {
        let scrape = Scrape::get(http, url).await;
        check(&scrape).then_some(scrape)
    })
    .await
}
