//! The live streams and the dashboard page, driven without a socket: every notification is
//! sent by `project` as the projector would, so each step is deterministic. The real pipeline,
//! the shutdown of a served API and the browser are in `tests/tests/e2e/live.rs`; sessions
//! and the page in `dashboard.rs`.

use crate::support::{D1, D2, D4, TOKEN, UNKNOWN, assert_documented, get_as, project, seed};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use e2e::sse::{SseEvent, SseItem, take_item};
use http_body_util::BodyExt;
use query_api::{AppState, FreshnessWatch, Live, LiveConfig, Tokens, app};
use sqlx::PgPool;
use std::time::Duration;
use tower::ServiceExt;

/// Generous: only reached when something is wrong.
const DEADLINE: Duration = Duration::from_secs(10);

/// The app with keep-alives every 100 ms (so "nothing was sent" shows as a keep-alive) and
/// at most `max_streams` streams.
pub(crate) async fn live_app(pool: PgPool, max_streams: usize) -> (Router, Live) {
    let live = Live::new(LiveConfig {
        max_streams,
        keep_alive: Duration::from_millis(100),
        stats_interval: Duration::from_millis(20),
        ..LiveConfig::default()
    });
    let app = app(AppState {
        freshness: FreshnessWatch::listen(&pool).await.expect("LISTEN"),
        pool,
        tokens: Tokens::parse(TOKEN).expect("token"),
        max_wait: Duration::from_secs(5),
        live: live.clone(),
    });
    (app, live)
}

/// An open stream's body, read message by message.
pub(crate) struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn next_item(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = take_item(&mut self.buffer) {
                return Some(item);
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("a message before the deadline")?
                .expect("the body reads");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    pub(crate) async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next_item().await.expect("the stream goes on") {
                SseItem::Event(event) => return event,
                SseItem::Comment => {}
            }
        }
    }
}

/// Opens `path` with `headers`; a stream, or the refusal as status and body. Either must be an
/// answer the spec documents.
pub(crate) async fn open(
    app: &Router,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Stream, (StatusCode, String)> {
    let mut request = Request::builder().method(Method::GET).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("router answers");
    if response.status() != StatusCode::OK {
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        assert_documented(&Method::GET, path, status, &body);
        return Err((status, String::from_utf8_lossy(&bytes).into_owned()));
    }
    assert_documented(
        &Method::GET,
        path,
        response.status(),
        &serde_json::Value::Null,
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream",
        "a stream is an event stream"
    );
    Ok(Stream {
        body: response.into_body(),
        buffer: String::new(),
    })
}

pub(crate) const BEARER: &str = "Bearer reader-token-1";

async fn stream(app: &Router, path: &str) -> Stream {
    open(app, path, &[("authorization", BEARER)])
        .await
        .unwrap_or_else(|(status, body)| panic!("{path}: {status} {body}"))
}

fn move_d4(version: i64, status: &str) -> String {
    format!(
        "update deliveries set status = '{status}', rider_id = 'rider-3', version = {version}, \
         updated_at = '2026-03-02T10:0{version}:00Z' where delivery_id = '{D4}'"
    )
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_delivery_stream_sends_each_new_state_with_its_version_as_the_id(pool: PgPool) {
    seed(&pool).await;
    let (app, _) = live_app(pool.clone(), 8).await;
    let mut d4 = stream(&app, &format!("/deliveries/{D4}/stream")).await;
    let first = d4.next_event().await;
    assert_eq!(
        (first.event.as_deref(), first.id.as_deref()),
        (Some("delivery"), Some("1"))
    );
    assert_eq!(first.json()["status"], "created");

    // Another delivery moving sends nothing here.
    project(&pool, "select 1", &format!("{D2}:3")).await;
    project(&pool, &move_d4(2, "rider_assigned"), &format!("{D4}:2")).await;
    let assigned = d4.next_event().await;
    assert_eq!(assigned.id.as_deref(), Some("2"));
    assert_eq!(assigned.json()["status"], "rider_assigned");
    assert_eq!(assigned.json()["rider_id"], "rider-3");

    // Two events in one batch: the table only ever held version 4, and that is what comes.
    project(&pool, &move_d4(4, "completed"), &format!("{D4}:4")).await;
    let completed = d4.next_event().await;
    assert_eq!(completed.id.as_deref(), Some("4"));
    assert_eq!(completed.json()["version"], 4);
    assert_eq!(completed.json()["status"], "completed");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn last_event_id_resumes_after_the_version_the_client_has(pool: PgPool) {
    seed(&pool).await;
    let (app, _) = live_app(pool.clone(), 8).await;
    let path = format!("/deliveries/{D4}/stream");
    let with_last = |id: &'static str| [("authorization", BEARER), ("last-event-id", id)];

    // It has version 1 already: nothing is repeated, the stream only keeps alive ...
    let mut resumed = open(&app, &path, &with_last("1")).await.expect("a stream");
    assert_eq!(resumed.next_item().await, Some(SseItem::Comment));
    assert_eq!(resumed.next_item().await, Some(SseItem::Comment));
    // ... until there is something newer.
    project(&pool, &move_d4(2, "rider_assigned"), &format!("{D4}:2")).await;
    assert_eq!(resumed.next_event().await.id.as_deref(), Some("2"));

    // A client that missed versions while away gets the current state at once.
    let mut behind = open(&app, &format!("/deliveries/{D1}/stream"), &with_last("2"))
        .await
        .expect("a stream");
    let current = behind.next_event().await;
    assert_eq!(current.id.as_deref(), Some("4"));
    assert_eq!(current.json()["status"], "completed");

    for bad in ["x", "-1", "1.5"] {
        let (status, body) = open(&app, &path, &with_last(bad))
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body.contains("\"code\":\"invalid-header\""), "{body}");
    }
    let (status, body) = open(
        &app,
        &format!("/deliveries/{UNKNOWN}/stream"),
        &[("authorization", BEARER)],
    )
    .await
    .err()
    .expect("unknown");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("delivery-not-found"), "{body}");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_stats_stream_sends_the_numbers_then_each_change_and_never_the_same_twice(
    pool: PgPool,
) {
    seed(&pool).await;
    let (app, _) = live_app(pool.clone(), 8).await;
    let mut stats = stream(&app, "/stats/stream").await;
    let first = stats.next_event().await;
    assert_eq!(first.event.as_deref(), Some("stats"));
    assert_eq!(
        first.json(),
        serde_json::json!({
            "deliveries_by_status": {"created": 1, "rider_assigned": 1, "picked_up": 2,
                                     "completed": 2, "cancelled": 1},
            "active_riders": 2,
        })
    );

    // A commit that changes no number sends nothing (keep-alives only) ...
    project(&pool, "select 1", "").await;
    assert_eq!(stats.next_item().await, Some(SseItem::Comment));
    assert_eq!(stats.next_item().await, Some(SseItem::Comment));
    // ... one that does, sends the new numbers.
    project(
        &pool,
        "with created as (update status_counts set deliveries = deliveries + 1 \
                           where status = 'created' returning 1) \
         insert into riders values ('rider-4', 1, 0, now())",
        "",
    )
    .await;
    let changed = stats.next_event().await.json();
    assert_eq!(changed["deliveries_by_status"]["created"], 2);
    assert_eq!(changed["active_riders"], 3);
}

fn picked_up_d2_history(version: i64, event_type: &str, event: u8) -> String {
    format!(
        "insert into delivery_history (delivery_id, version, event_id, event_type, \
         schema_version, actor_role, actor_id, occurred_at, recorded_at, correlation_id, \
         causation_id, data, kafka_partition, kafka_offset) values ('{D2}', {version}, \
         '0190f4c2-0000-7000-9000-0000000000{event}', '{event_type}', 1, 'rider', 'rider-1', \
         now(), now(), gen_random_uuid(), gen_random_uuid(), '{{\"rider_id\": \"rider-1\"}}', \
         1, {version}0)"
    )
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_feed_sends_its_backlog_then_each_event_as_it_is_applied(pool: PgPool) {
    seed(&pool).await;
    let (app, _) = live_app(pool.clone(), 8).await;
    let mut feed = stream(&app, "/events/stream").await;
    // The seeded history was recorded long ago: a feed that starts does not replay it.
    assert_eq!(feed.next_item().await, Some(SseItem::Comment));

    project(
        &pool,
        &picked_up_d2_history(3, "delivery.picked_up", 23),
        &format!("{D2}:3"),
    )
    .await;
    let picked_up = feed.next_event().await;
    assert_eq!(picked_up.event.as_deref(), Some("event"));
    assert_eq!(
        picked_up.id.as_deref(),
        Some("0190f4c2-0000-7000-9000-000000000023")
    );
    let data = picked_up.json();
    assert_eq!(
        (&data["delivery_id"], &data["version"], &data["type"]),
        (
            &serde_json::json!(D2),
            &serde_json::json!(3),
            &serde_json::json!("delivery.picked_up")
        )
    );
    assert_eq!(
        (&data["actor_role"], &data["actor_id"]),
        (&"rider".into(), &"rider-1".into())
    );

    project(
        &pool,
        &picked_up_d2_history(4, "delivery.completed", 24),
        &format!("{D2}:4"),
    )
    .await;
    assert_eq!(feed.next_event().await.json()["version"], 4);

    // A client that comes later gets the backlog, oldest first, then what follows.
    let mut late = stream(&app, "/events/stream").await;
    assert_eq!(late.next_event().await.json()["version"], 3);
    assert_eq!(late.next_event().await.json()["version"], 4);
    assert_eq!(
        late.next_item().await,
        Some(SseItem::Comment),
        "and nothing twice"
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn past_the_stream_bound_a_new_stream_gets_503_and_a_closed_one_frees_its_slot(pool: PgPool) {
    seed(&pool).await;
    let (app, live) = live_app(pool, 2).await;
    let first = stream(&app, "/stats/stream").await;
    let _second = stream(&app, &format!("/deliveries/{D1}/stream")).await;
    assert_eq!(live.open_streams(), 2);

    let (status, body) = open(&app, "/events/stream", &[("authorization", BEARER)])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"code\":\"too-many-streams\""), "{body}");
    // Plain reads are not streams: they still answer.
    let reply = get_as(&app, "/stats", Some(BEARER)).await;
    assert_eq!(reply.status, StatusCode::OK);

    drop(first);
    assert_eq!(live.open_streams(), 1, "a client that goes frees its slot");
    stream(&app, "/events/stream").await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn closing_ends_every_open_stream(pool: PgPool) {
    seed(&pool).await;
    let (app, live) = live_app(pool, 8).await;
    let mut streams = vec![
        stream(&app, "/stats/stream").await,
        stream(&app, "/events/stream").await,
        stream(&app, &format!("/deliveries/{D1}/stream")).await,
    ];
    live.close();
    for stream in &mut streams {
        while let Some(item) = stream.next_item().await {
            // What was already on its way may still arrive; then the body ends.
            let _ = item;
        }
    }
    drop(streams);
    assert_eq!(live.open_streams(), 0);
}
