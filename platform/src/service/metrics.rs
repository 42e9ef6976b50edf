//! Prometheus metrics, set up once for every binary: the process's recorder, `GET /metrics`,
//! and the small HTTP listener of the processes whose work is not HTTP (the relay, the
//! projector, a rebuild), which serves `/metrics` and `/health`.
//!
//! The `metrics` facade has exactly one recorder per process. [`install`] sets it up the first
//! time anything asks for it and hands back the same handle every time after, so a test
//! process that runs many servers never installs twice: they all share one registry (which is
//! why tests compare values before and after, instead of reading absolute ones). Metrics
//! recorded before the first `install` are lost, so binaries call it first thing.

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Buckets of every histogram whose name ends in `_seconds`: 1 ms to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of every histogram whose name ends in `_messages` (batch sizes).
pub const MESSAGES_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];
/// Histogram samples are folded into their buckets at every scrape, and this often besides,
/// so that a process nobody scrapes does not keep every sample.
const UPKEEP: Duration = Duration::from_secs(5);
/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder: installed as the `metrics` facade's global recorder on
/// the first call, the same handle on every later one. Never panics: if some other recorder
/// was installed first, it says so in the log and `/metrics` stays empty.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed; /metrics stays empty");
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "no metrics upkeep thread; histograms fold at scrapes only");
            }
            handle
        })
        .clone()
}

/// Histograms as cumulative buckets (not client-side quantiles), so that Prometheus can sum
/// them across instances and compute any quantile.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), MESSAGES_BUCKETS)
        })
        .expect("the bucket lists are constant and not empty")
}

/// Every metric of the process, in the Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// The `GET /metrics` handler.
pub async fn scrape() -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response()
}

/// `GET /metrics` and `GET /health` ("ok" while the process runs), for a process whose work is
/// not HTTP.
pub fn operations_router() -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(|| async { "ok" }))
}

/// Binds `address` (port 0 picks a free one) and serves [`operations_router`] on it until
/// `shutdown`, in a task of its own. Returns the bound address; fails if it cannot bind, so a
/// taken port stops the process at start-up instead of leaving it unobservable. `name` says
/// whose listener it is, in the log.
pub async fn serve_operations(
    address: SocketAddr,
    name: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    install();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {name} HTTP listener to {address}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "{name} serves /metrics and /health");
    tokio::spawn(async move {
        let served = axum::serve(listener, operations_router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the operations listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_gives_the_same_registry_and_never_panics() {
        let first = install();
        metrics::counter!("platform_test_installs_total").increment(2);
        let second = install();
        metrics::counter!("platform_test_installs_total").increment(1);
        assert!(first.render().contains("platform_test_installs_total 3"));
        // The same registry: the second handle sees what was counted before it existed. (Not
        // an equality of two renders: other tests of this binary record in parallel.)
        assert!(second.render().contains("platform_test_installs_total 3"));
    }

    #[test]
    fn latency_histograms_have_buckets_in_seconds() {
        install();
        metrics::histogram!("platform_test_wait_seconds").record(0.003);
        let text = render();
        assert!(
            text.contains("platform_test_wait_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("platform_test_wait_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("platform_test_wait_seconds_count 1"));
    }
}
