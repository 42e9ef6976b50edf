//! The live streams and the dashboard over the whole pipeline: commands through the command
//! API, the relay, the broker and the projector, then server-sent events out of the query API,
//! read by reqwest and by a real headless chromium.

use e2e::sse::{SseItem, SseStream};
use e2e::{Browser, Fate, READER, TestStack, eventually};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// Generous: only reached when something is wrong.
const DEADLINE: Duration = Duration::from_secs(30);

async fn open(stack: &TestStack, path: &str, last_event_id: Option<&str>) -> SseStream {
    let mut request = stack.http.get(stack.query_url(path)).bearer_auth(READER);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    match SseStream::open(request).await {
        Ok(stream) => stream,
        Err(refused) => panic!("{path}: {}", refused.status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stream_follows_the_pipeline_in_version_order_and_resumes() {
    let stack = TestStack::start(3).await;
    let id = Uuid::from_u128(0x5001);
    stack.walk(id, 1, Fate::Created).await;
    let (status, _) = stack
        .query(&format!("/deliveries/{id}?min_version=1"))
        .await;
    assert_eq!(status, 200);
    let mut stream = open(&stack, &format!("/deliveries/{id}/stream"), None).await;

    let client = stack.clone_client();
    let rider = e2e::rider_token(1);
    let steps = [
        (
            "assign",
            e2e::DISPATCHER.to_owned(),
            Some(json!({"rider_id": "rider-1"})),
        ),
        ("pickup", rider.clone(), None),
        ("complete", rider, None),
    ];
    for (step, token, body) in steps {
        let (status, reply) = client
            .command(&format!("/deliveries/{id}/{step}"), &token, body)
            .await;
        assert_eq!(status, 200, "{step}: {reply}");
    }

    // Every state arrives in version order, each with its version as the id; versions the
    // projector applied in one batch arrive as one state.
    let mut seen = Vec::new();
    while seen.last() != Some(&4) {
        let event = stream
            .next_event(DEADLINE)
            .await
            .expect("the stream goes on");
        let version: i64 = event
            .id
            .as_deref()
            .expect("an id")
            .parse()
            .expect("a version");
        let state = event.json();
        assert_eq!(state["version"], version);
        let expected =
            ["created", "rider_assigned", "picked_up", "completed"][version as usize - 1];
        assert_eq!(state["status"], expected, "version {version}");
        seen.push(version);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {seen:?}"
    );

    // A client that had version 2 gets the current state at once, and only that.
    let mut resumed = open(&stack, &format!("/deliveries/{id}/stream"), Some("2")).await;
    let current = resumed
        .next_event(DEADLINE)
        .await
        .expect("the current state");
    assert_eq!(current.id.as_deref(), Some("4"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_streams_are_refused_and_stopping_ends_the_open_ones() {
    let mut stack = TestStack::start(1).await;
    stack.stop_query_api().await;
    let bounded = query_api::LiveConfig {
        max_streams: 3,
        ..query_api::LiveConfig::default()
    };
    stack.start_query_api_with(bounded).await;
    let id = Uuid::from_u128(0x5101);
    stack.walk(id, 1, Fate::Created).await;
    stack.wait_for_projection(DEADLINE).await;
    let mut streams = vec![
        open(&stack, "/stats/stream", None).await,
        open(&stack, "/events/stream", None).await,
        open(&stack, &format!("/deliveries/{id}/stream"), None).await,
    ];
    assert_eq!(stack.query_live().open_streams(), 3);

    // One more is refused at once, as a problem a client knows to retry.
    let request = stack
        .http
        .get(stack.query_url("/stats/stream"))
        .bearer_auth(READER);
    let Err(refused) = SseStream::open(request).await else {
        panic!("a fourth stream past a bound of three");
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: serde_json::Value = refused.json().await.expect("a problem");
    assert_eq!(problem["code"], "too-many-streams");

    // A graceful shutdown waits for open responses: it ends only because the streams do.
    tokio::time::timeout(DEADLINE, stack.stop_query_api())
        .await
        .expect("the query API stops with streams open");
    for stream in &mut streams {
        loop {
            match stream.next_item(DEADLINE).await {
                None => break,
                Some(SseItem::Event(_) | SseItem::Comment) => {}
            }
        }
    }
    stack.shutdown().await;
}

/// What the dashboard should show once `fates` have been walked.
fn expected_counts(fates: &[(Fate, u32)]) -> (Vec<(&'static str, usize)>, usize, usize) {
    let status = |fate: Fate| match fate {
        Fate::Created => "created",
        Fate::Assigned => "rider_assigned",
        Fate::PickedUp => "picked_up",
        Fate::Completed => "completed",
        Fate::CancelledAfterAssignment => "cancelled",
    };
    let events = |fate: Fate| match fate {
        Fate::Created => 1,
        Fate::Assigned => 2,
        Fate::PickedUp | Fate::CancelledAfterAssignment => 3,
        Fate::Completed => 4,
    };
    let counts = [
        "created",
        "rider_assigned",
        "picked_up",
        "completed",
        "cancelled",
    ]
    .into_iter()
    .map(|name| {
        let count = fates
            .iter()
            .filter(|(fate, _)| status(*fate) == name)
            .count();
        (name, count)
    })
    .collect();
    let active: BTreeSet<u32> = fates
        .iter()
        .filter(|(fate, _)| matches!(fate, Fate::Assigned | Fate::PickedUp))
        .map(|(_, rider)| *rider)
        .collect();
    let total = fates.iter().map(|(fate, _)| events(*fate)).sum();
    (counts, active.len(), total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_changes_live_as_commands_are_sent() {
    let stack = TestStack::start(3).await;
    let browser = Browser::start().await;
    browser.goto(&stack.query_url("/dashboard")).await;
    eventually(DEADLINE, "the sign-in form", || async {
        let shown = browser
            .run("return !document.getElementById('sign-in').hidden")
            .await;
        shown.as_bool().filter(|shown| *shown)
    })
    .await;
    browser.type_into("#token", READER).await;
    browser.click("#sign-in button[type=submit]").await;
    eventually(DEADLINE, "the counts before any command", || async {
        (browser.text("#count-created").await.as_deref() == Some("0")).then_some(())
    })
    .await;
    // A reload would lose this.
    browser
        .run("window.stillTheSamePage = 'yes'; return true")
        .await;
    let cookie = browser.run("return document.cookie").await;
    assert_eq!(
        cookie, "",
        "the session cookie is HttpOnly: scripts cannot read it"
    );

    let fates: Vec<(Fate, u32)> = (0..12)
        .map(|n| (Fate::ALL[n % Fate::ALL.len()], 1 + (n as u32 % 9)))
        .collect();
    for (n, (fate, rider)) in fates.iter().enumerate() {
        stack
            .walk(Uuid::from_u128(0x5200 + n as u128), *rider, *fate)
            .await;
    }
    let (counts, active_riders, events) = expected_counts(&fates);
    for (status, count) in counts {
        let css = format!("#count-{status}");
        eventually(DEADLINE, &format!("{status} to show {count}"), || async {
            (browser.text(&css).await == Some(count.to_string())).then_some(())
        })
        .await;
    }
    assert_eq!(
        browser.text("#active-riders").await,
        Some(active_riders.to_string())
    );
    eventually(DEADLINE, "every event in the feed", || async {
        let shown = browser
            .run("return document.querySelectorAll('#feed li').length")
            .await;
        (shown.as_u64() == Some(events as u64)).then_some(())
    })
    .await;
    let newest = browser
        .run("return document.querySelector('#feed li').dataset.type")
        .await;
    assert!(
        newest.as_str().is_some_and(|t| t.starts_with("delivery.")),
        "{newest}"
    );
    assert_eq!(
        browser.run("return window.stillTheSamePage").await,
        "yes",
        "the page changed without a reload"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    // DASHBOARD_SCREENSHOT=$PWD/docs/dashboard.png keeps it (see docs/api.md).
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
    }
    browser.quit().await;
    stack.shutdown().await;
}
