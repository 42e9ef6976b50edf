//! The dashboard's sessions and its page, driven without a socket.

use crate::live::{BEARER, live_app, open};
use crate::support::{TOKEN, assert_documented, seed};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use sqlx::PgPool;
use tower::ServiceExt;

/// Sends `method path` with `headers`; the status, the headers and the body, once the spec is
/// found to document the answer.
async fn send(
    app: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, header::HeaderMap, String) {
    let mut request = Request::builder().method(method.clone()).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("router answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    assert_documented(&method, path, parts.status, &json);
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[sqlx::test(migrator = "migrations::READ")]
async fn streams_need_a_token_or_a_dashboard_session_which_admits_nothing_else(pool: PgPool) {
    seed(&pool).await;
    let (app, _) = live_app(pool, 8).await;
    for path in ["/stats/stream", "/events/stream", "/dashboard/session"] {
        let (status, _) = open(&app, path, &[]).await.err().expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _, _) = send(&app, Method::POST, "/dashboard/session", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a session needs a token");
    let wrong = [("authorization", "Bearer not-a-reader-token")];
    let (status, _, _) = send(&app, Method::POST, "/dashboard/session", &wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, headers, _) = send(
        &app,
        Method::POST,
        "/dashboard/session",
        &[("authorization", BEARER)],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let set_cookie = headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(TOKEN), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = [("cookie", cookie.as_str())];

    let (status, _, _) = send(&app, Method::GET, "/dashboard/session", &with_cookie).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut stats = open(&app, "/stats/stream", &with_cookie)
        .await
        .expect("the cookie opens a stream");
    assert_eq!(stats.next_event().await.event.as_deref(), Some("stats"));
    // The cookie is for the live views only.
    let (status, _, _) = send(&app, Method::GET, "/stats", &with_cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, headers, _) = send(&app, Method::DELETE, "/dashboard/session", &with_cookie).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    let (status, _) = open(&app, "/stats/stream", &with_cookie)
        .await
        .err()
        .expect("an ended session admits nothing");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_dashboard_page_is_served_whole_with_a_strict_policy(pool: PgPool) {
    let (app, _) = live_app(pool, 8).await;
    let (status, headers, _) = send(&app, Method::GET, "/", &[]).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers[header::LOCATION], "/dashboard");

    let (status, headers, page) = send(&app, Method::GET, "/dashboard", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let policy = headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii");
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    assert!(page.contains("src=\"/dashboard/app.js\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let (status, headers, body) = send(&app, Method::GET, path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
}
