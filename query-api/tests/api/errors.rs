//! Every refusal is a problem+json with the right code; health needs no token.

use crate::snapshot;
use crate::support::{D1, OTHER_TOKEN, UNKNOWN, Wire, get, get_as, seed, send, test_app};
use axum::http::{Method, StatusCode};
use sqlx::PgPool;

#[sqlx::test(migrator = "migrations::READ")]
async fn health_needs_no_token_and_every_read_needs_a_known_one(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;

    let health = get_as(&app, "/health", None).await;
    assert_eq!(
        (health.status, health.text.as_str()),
        (StatusCode::OK, "ok")
    );

    let paths = [
        "/deliveries".to_owned(),
        format!("/deliveries/{D1}"),
        format!("/deliveries/{D1}/history"),
        "/riders/rider-1/deliveries".to_owned(),
        "/stats".to_owned(),
    ];
    let refused = [
        None,
        Some("Bearer not-a-token"),
        Some("Bearer "),
        Some("Basic cmVhZGVyLXRva2VuLTE="),
        Some("reader-token-1"),
    ];
    for path in &paths {
        for authorization in refused {
            let reply = get_as(&app, path, authorization).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path} {authorization:?}"
            );
            assert_eq!(reply.problem_code(), "unauthorized");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
        // Any configured token reads everything.
        let reply = get_as(&app, path, Some(&format!("Bearer {OTHER_TOKEN}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }
    // Even a bad query is refused for the missing token first.
    let reply = get_as(&app, "/deliveries?limit=0", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[derive(serde::Serialize)]
struct Case<'a> {
    case: &'a str,
    problem: Wire,
}

#[sqlx::test(migrator = "migrations::READ")]
async fn bad_requests_get_a_problem_with_a_stable_code(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;
    let one = format!("/deliveries/{D1}");

    let (bad, missing, unavailable) = (
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::SERVICE_UNAVAILABLE,
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("no token", "/stats".into(), StatusCode::UNAUTHORIZED, "unauthorized"),
        ("unknown delivery", format!("/deliveries/{UNKNOWN}"), missing, "delivery-not-found"),
        ("malformed delivery id", "/deliveries/not-a-uuid".into(), missing, "delivery-not-found"),
        ("delivery id not UTF-8", "/deliveries/%FF%FE".into(), missing, "delivery-not-found"),
        ("unknown delivery history", format!("/deliveries/{UNKNOWN}/history"), missing, "delivery-not-found"),
        ("malformed history id", "/deliveries/42/history".into(), missing, "delivery-not-found"),
        ("unknown rider", "/riders/rider-42/deliveries".into(), missing, "rider-not-found"),
        ("malformed rider id", "/riders/no%20spaces/deliveries".into(), missing, "rider-not-found"),
        ("rider id not UTF-8", "/riders/%FF/deliveries".into(), missing, "rider-not-found"),
        ("as_of before creation", format!("{one}?as_of=2026-03-01T00:00:00Z"), missing, "delivery-not-found"),
        ("unknown status", "/deliveries?status=lost".into(), bad, "invalid-query"),
        ("empty status", "/deliveries?status=".into(), bad, "invalid-query"),
        ("bad created_after", "/deliveries?created_after=yesterday".into(), bad, "invalid-query"),
        ("created_after without zone", "/deliveries?created_after=2026-03-02T09:00:00".into(), bad, "invalid-query"),
        ("limit zero", "/deliveries?limit=0".into(), bad, "invalid-query"),
        ("limit too large", "/deliveries?limit=501".into(), bad, "invalid-query"),
        ("limit not a number", "/deliveries?limit=ten".into(), bad, "invalid-query"),
        ("bad cursor", "/deliveries?cursor=bm90LWEtY3Vyc29y".into(), bad, "invalid-query"),
        ("bad rider filter", "/deliveries?rider_id=no%20spaces".into(), bad, "invalid-query"),
        ("unknown parameter", "/deliveries?stauts=created".into(), bad, "invalid-query"),
        ("bad as_of", format!("{one}?as_of=last-tuesday"), bad, "invalid-query"),
        ("as_of with a bare '+'", format!("{one}?as_of=2026-03-02T10:10:00+01:00"), bad, "invalid-query"),
        ("as_of with min_version", format!("{one}?as_of=2026-03-02T09:10:00Z&min_version=2"), bad, "invalid-query"),
        ("min_version zero", format!("{one}?min_version=0"), bad, "invalid-query"),
        ("min_version not a number", format!("{one}?min_version=latest"), bad, "invalid-query"),
        ("negative wait_ms", format!("{one}?min_version=1&wait_ms=-5"), bad, "invalid-query"),
        ("history min_version not a number", format!("{one}/history?min_version=x"), bad, "invalid-query"),
        ("not yet projected", format!("{one}?min_version=5&wait_ms=0"), unavailable, "not-yet-projected"),
    ];
    let mut problems = Vec::new();
    for (case, path, status, code) in cases {
        let reply = if case == "no token" {
            get_as(&app, &path, None).await
        } else {
            get(&app, &path).await
        };
        assert_eq!(reply.status, status, "{case}: {}", reply.text);
        assert_eq!(reply.problem_code(), code, "{case}");
        problems.push(Case {
            case,
            problem: reply.wire(),
        });
    }
    snapshot("bad_requests", &problems);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn unknown_routes_and_methods_get_a_problem_too(pool: PgPool) {
    let app = test_app(pool).await;
    // Unknown paths are not found with or without a token: nothing there to protect.
    for (path, authorization) in [
        ("/nowhere", None),
        ("/nowhere", Some(format!("Bearer {OTHER_TOKEN}"))),
        ("/deliveries/x/y/z", None),
        // `/` is the dashboard's (it redirects); its neighbours are not.
        ("/dashboard/missing.js", None),
    ] {
        let reply = get_as(&app, path, authorization.as_deref()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.problem_code(), "route-not-found", "{path}");
    }
    for (method, path) in [
        (Method::POST, "/stats".to_owned()),
        (Method::DELETE, format!("/deliveries/{D1}")),
        (Method::PUT, "/deliveries".to_owned()),
        (Method::POST, "/health".to_owned()),
    ] {
        let reply = send(&app, method.clone(), &path).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            reply.problem_code(),
            "method-not-allowed",
            "{method} {path}"
        );
        let allow = reply.header("allow").unwrap_or_default();
        assert!(allow.contains("GET"), "{method} {path}: Allow: {allow}");
    }
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_cursor_at_a_time_postgres_cannot_store_is_a_400_not_a_500(pool: PgPool) {
    seed(&pool).await;
    let app = test_app(pool).await;
    // 8 bytes of Unix microseconds, big-endian, then the delivery id.
    let cursor = |micros: i64| format!("{:016x}{:032x}", micros.cast_unsigned(), 1u128);
    // 4713 BC, the earliest time Postgres stores: a cursor there is before everything.
    let earliest: i64 = -210_866_803_200_000_000;
    let page = get(&app, &format!("/deliveries?cursor={}", cursor(earliest))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(page.ids("/items").len(), 7);
    for micros in [earliest - 1, -(1 << 62), i64::MIN, i64::MAX] {
        let reply = get(&app, &format!("/deliveries?cursor={}", cursor(micros))).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{micros}: {}",
            reply.text
        );
        assert_eq!(reply.problem_code(), "invalid-query", "{micros}");
    }
}
