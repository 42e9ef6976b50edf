//! Helpers for the tests of bounds and outages: the app built as the binary builds it, and a
//! TCP proxy that plays a database restart.

use crate::support::{Reply, TOKEN};
use axum::Router;
use axum::http::StatusCode;
use e2e::{eventually, free_port};
use query_api::{AppState, FreshnessWatch, HttpBounds, PoolBounds, Tokens, app_with_bounds};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// The bounds of an app built like the binary builds it.
pub struct Bounded {
    pub pool: PoolBounds,
    pub http: HttpBounds,
    pub max_waiters: usize,
    pub max_wait: Duration,
}

impl Default for Bounded {
    /// Small enough for a shared test database, loose enough never to fire by accident.
    fn default() -> Self {
        Self {
            pool: PoolBounds {
                connections: 4,
                acquire_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(60),
            },
            http: HttpBounds {
                max_concurrent_requests: 256,
                request_timeout: Duration::from_secs(120),
            },
            max_waiters: 64,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// The app as the binary builds it (its own pool with `bounded.pool`, the watch and the router
/// bounded), on the database `options` point at; and its watch, to observe.
pub async fn bounded_app(options: PgConnectOptions, bounded: Bounded) -> (Router, FreshnessWatch) {
    let pool = bounded
        .pool
        .pool_options()
        .connect_with(bounded.pool.connect_options(options))
        .await
        .expect("the app's pool connects");
    let freshness = FreshnessWatch::listen(&pool)
        .await
        .expect("LISTEN on the test database")
        .with_max_waiters(bounded.max_waiters);
    let state = AppState {
        pool,
        tokens: Tokens::parse(TOKEN).expect("test token is valid"),
        max_wait: bounded.max_wait,
        freshness: freshness.clone(),
        live: Default::default(),
    };
    (app_with_bounds(state, bounded.http), freshness)
}

/// Checks a 503 problem: its code, and a `Retry-After` for clients to honour.
pub fn assert_unavailable(reply: &Reply, code: &str, context: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{context}: {}",
        reply.text
    );
    assert_eq!(reply.problem_code(), code, "{context}");
    assert_eq!(reply.header("retry-after"), Some("1"), "{context}");
}

/// A TCP proxy in front of the test database that can be taken down and brought back: what
/// clients see of a Postgres restart (every connection cut, connections refused for a while,
/// then accepted again), without touching the Postgres that other tests share.
pub struct Proxy {
    address: SocketAddr,
    upstream: SocketAddr,
    /// The accept loop and every relayed connection, so `down` can cut them all.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    /// A proxy to the database `pool` connects to, up.
    pub async fn start(pool: &PgPool) -> Self {
        let options = pool.connect_options();
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .expect("the test database's address resolves")
            .next()
            .expect("an address");
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = Self {
            address,
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.up().await;
        proxy
    }

    /// `options` pointed at the proxy instead of the database.
    pub fn options(&self, pool: &PgPool) -> PgConnectOptions {
        (*pool.connect_options())
            .clone()
            .host(&self.address.ip().to_string())
            .port(self.address.port())
    }

    /// Cuts every connection and closes the port: connecting is refused until `up`.
    pub fn down(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }

    /// Listens on the same port again.
    pub async fn up(&self) {
        let listener = eventually(
            Duration::from_secs(10),
            "the proxy port to bind",
            || async {
                let socket = TcpSocket::new_v4().ok()?;
                socket.set_reuseaddr(true).ok()?;
                socket.bind(self.address).ok()?;
                socket.listen(64).ok()
            },
        )
        .await;
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(relay.abort_handle());
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(accept.abort_handle());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
