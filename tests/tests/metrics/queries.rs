//! The query API times requests by route template and counts read-your-writes reads by outcome.

use crate::serial;
use e2e::{Fate, Scrape, TestStack};
use query_api::metrics::{READ_YOUR_WRITES, READ_YOUR_WRITES_WAIT, REQUEST_DURATION};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_timed_by_route_template_and_waits_counted_by_outcome() {
    let _alone = serial().await;
    let stack = TestStack::start(1).await;
    let url = stack.query_url("/metrics");
    let before = Scrape::get(&stack.http, &url).await;
    let delivery = Uuid::from_u128(5);
    let version = stack.walk(delivery, 1, Fate::Assigned).await;

    // Waits for the projector, then answers: fresh.
    let (status, _) = stack
        .query(&format!("/deliveries/{delivery}?min_version={version}"))
        .await;
    assert_eq!(status, 200);
    // A version that will not come within 50 ms: timed out.
    let (status, _) = stack
        .query(&format!("/deliveries/{delivery}?min_version=9&wait_ms=50"))
        .await;
    assert_eq!(status, 503);
    let (status, _) = stack
        .query(&format!("/deliveries/{}", Uuid::from_u128(6)))
        .await;
    assert_eq!(status, 404);
    let (status, _) = stack
        .query(&format!("/deliveries/{delivery}/history"))
        .await;
    assert_eq!(status, 200);

    let after = Scrape::get(&stack.http, &url).await;
    let grew =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    assert_eq!(grew(READ_YOUR_WRITES, &[("outcome", "fresh")]), 1.0);
    assert_eq!(grew(READ_YOUR_WRITES, &[("outcome", "timed_out")]), 1.0);
    assert_eq!(
        grew(READ_YOUR_WRITES, &[("outcome", "too_many_waiters")]),
        0.0
    );
    let waits = format!("{READ_YOUR_WRITES_WAIT}_count");
    assert_eq!(grew(&waits, &[]), 2.0);
    // The timed-out read waited its 50 ms.
    let waited = format!("{READ_YOUR_WRITES_WAIT}_sum");
    assert!(grew(&waited, &[("outcome", "timed_out")]) >= 0.05);

    let requests = format!("{REQUEST_DURATION}_count");
    let route = |template, status| [("route", template), ("method", "GET"), ("status", status)];
    assert_eq!(grew(&requests, &route("/deliveries/{id}", "200")), 1.0);
    assert_eq!(grew(&requests, &route("/deliveries/{id}", "503")), 1.0);
    assert_eq!(grew(&requests, &route("/deliveries/{id}", "404")), 1.0);
    assert_eq!(
        grew(&requests, &route("/deliveries/{id}/history", "200")),
        1.0
    );
    // Labelled by template only: no sample names a delivery.
    for sample in after.matching(&requests, &[]) {
        let route = &sample.labels["route"];
        assert!(!route.contains(&delivery.to_string()), "{sample:?}");
        assert!(!route.contains("/metrics") && !route.contains("/health"));
    }
    stack.shutdown().await;
}
