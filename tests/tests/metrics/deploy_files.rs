//! The Grafana dashboard and the Prometheus alert rules in `deploy/` name only metrics, and
//! label values, that a real scrape of the running parts has: a renamed metric breaks this
//! test, not a dashboard nobody looks at until the night it is needed.

use crate::{scrape_until, serial};
use e2e::{Fate, Scrape, TOPIC, TestStack};
use projector::catalog;
use projector::monitor::{LAG, REBUILD_PROGRESS};
use projector::rebuild::{RebuildConfig, rebuild};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The prefixes of the platform's own metrics, as the expressions name them.
const OURS: [&str; 4] = ["command_api_", "query_api_", "relay_", "projector_"];

fn deploy_file(name: &str) -> String {
    let path = format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `expr` of the dashboard, wherever its panel sits (rows nest panels).
fn dashboard_expressions(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => dashboard_expressions(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_expressions(i, found)),
        _ => {}
    }
}

/// A metric an expression selects, with the `label="value"` matchers of its selector.
#[derive(Debug)]
struct Selector {
    metric: String,
    equal: Vec<(String, String)>,
}

/// The platform's metrics an expression selects. A small PromQL reader: identifiers outside
/// strings, and the equality matchers in the braces after one.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip_string(&chars, i);
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if OURS.iter().any(|prefix| word.starts_with(prefix)) {
                let mut equal = Vec::new();
                if chars.get(i) == Some(&'{') {
                    let end = (i..chars.len()).find(|&j| chars[j] == '}').expect("closed");
                    let inside: String = chars[i + 1..end].iter().collect();
                    for matcher in inside.split(',').filter(|m| !m.trim().is_empty()) {
                        let (label, value) = matcher.split_once('=').expect("a matcher");
                        if !label.ends_with('!') && !value.starts_with('~') {
                            equal
                                .push((label.trim().into(), value.trim().trim_matches('"').into()));
                        }
                    }
                    i = end + 1;
                }
                found.push(Selector {
                    metric: word,
                    equal,
                });
            }
        } else {
            i += 1;
        }
    }
    found
}

fn skip_string(chars: &[char], open: usize) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != '"' {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

#[test]
fn the_promql_reader_finds_metrics_and_their_matchers() {
    let found = selectors(
        "sum by (le) (rate(relay_x_bucket{a=\"b\", c!=\"d\"}[5m])) / projector_y and \"relay_z\"",
    );
    let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["relay_x_bucket", "projector_y"]);
    assert_eq!(found[0].equal, [("a".to_owned(), "b".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_use_only_metrics_a_real_scrape_has() {
    let dashboard: Value =
        serde_json::from_str(&deploy_file("grafana/delivery-platform.json")).expect("JSON");
    let mut expressions = Vec::new();
    dashboard_expressions(&dashboard["panels"], &mut expressions);
    let rules: Value =
        serde_norway::from_str(&deploy_file("prometheus/alerts.yaml")).expect("YAML");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alerts.insert(rule["alert"].as_str().expect("an alert name").to_owned());
            expressions.push(rule["expr"].as_str().expect("an expr").to_owned());
        }
    }
    for wanted in [
        "ProjectorLagGrowing",
        "OutboxRowUnpublishedFor30s",
        "ParkedEventsOlderThan5m",
        "NoRelayLeader",
    ] {
        assert!(alerts.contains(wanted), "alert {wanted} missing");
    }

    // Every part at work: commands, a read-your-writes read, publishing, projecting, a rebuild.
    let _alone = serial().await;
    let mut stack = TestStack::start(2).await;
    let monitors = stack.start_monitors().await;
    let mut version = 0;
    for n in 1..=2 {
        version = stack.walk(Uuid::from_u128(n), 1, Fate::Completed).await;
    }
    let read = format!("/deliveries/{}?min_version={version}", Uuid::from_u128(2));
    assert_eq!(stack.query(&read).await.0, 200);
    stack.wait_for_projection(crate::PATIENCE).await;
    let config = RebuildConfig {
        brokers: stack.broker.address.clone(),
        consumer_settings: Default::default(),
        topic: TOPIC.into(),
        live_group: e2e::PROJECTOR_GROUP.into(),
        projections: catalog::ALL.to_vec(),
        keep_old: false,
        from_scratch: false,
        batch_size: 20,
        lanes: 2,
        progress_bar: false,
        switch_timeout: Duration::from_secs(10),
        allow_truncated_history: false,
    };
    let report = rebuild(&stack.read, &config, &CancellationToken::new())
        .await
        .expect("rebuilt");
    assert!(report.switched);

    let projector_url = format!("{}/metrics", monitors.projector_url);
    let projector = scrape_until(
        &stack.http,
        &projector_url,
        "the lag of both partitions",
        |s| s.value(LAG, &[("partition", "1")]).is_some(),
    )
    .await;
    assert_eq!(projector.value(REBUILD_PROGRESS, &[]), Some(1.0));
    let mut samples = projector.samples;
    let mut names = BTreeSet::new();
    for url in [
        format!("{}/metrics", monitors.relay_url),
        stack.command_url("/metrics"),
        stack.query_url("/metrics"),
    ] {
        let scrape = Scrape::get(&stack.http, &url).await;
        names.extend(scrape.names());
        samples.extend(scrape.samples);
    }
    names.extend(samples.iter().map(|s| s.name.clone()));

    let mut checked = 0;
    for expr in &expressions {
        let found = selectors(expr);
        assert!(
            !found.is_empty(),
            "names none of the platform's metrics: {expr}"
        );
        for selector in found {
            assert!(
                names.contains(&selector.metric),
                "{} (in {expr}) is in no scrape",
                selector.metric
            );
            for (label, value) in &selector.equal {
                assert!(
                    samples.iter().any(|s| s.name.starts_with(&selector.metric)
                        && s.labels.get(label) == Some(value)),
                    "no {}{{{label}=\"{value}\"}} in a scrape (in {expr})",
                    selector.metric
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} selectors checked");
    stack.shutdown().await;
}
