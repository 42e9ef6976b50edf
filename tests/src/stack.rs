//! The running stack: a broker, fresh write and read databases, and the command API, relay,
//! projectors and query API in-process, each of which a test can start, stop and kill.

use crate::client::{CommandClient, Fate};
use crate::db::{FreshDatabase, admin_options, setup_lock};
use crate::{ADMIN, Broker, DISPATCHER, READER, TOPIC, eventually, rider_token};
use command_api::relay::{self, RelayConfig};
use projector::{Progress, ProjectorConfig};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A background part of the stack: cancelled to stop cleanly, aborted to simulate a crash.
struct Part {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Part {
    fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Part
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Part { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// An HTTP service on a free port.
struct Served {
    address: String,
    part: Part,
}

async fn serve(router: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let part = Part::spawn(|shutdown| async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Served { address, part }
}

pub struct TestStack {
    pub broker: Broker,
    pub write: PgPool,
    pub read: PgPool,
    write_database: FreshDatabase,
    read_database: FreshDatabase,
    pub http: reqwest::Client,
    command_api: Option<Served>,
    query_api: Option<Served>,
    /// The query API's live streams, closed before it stops (as the binary does on a signal).
    query_live: Option<query_api::Live>,
    relay: Option<Part>,
    projectors: Vec<Part>,
    /// The relay's and the projector's metrics watchers and HTTP listeners, when started.
    monitors: Vec<Part>,
    pub progress: Arc<Progress>,
}

/// Where the relay's and the projector's `/metrics` are served (see `start_monitors`).
pub struct Monitors {
    pub relay_url: String,
    pub projector_url: String,
}

impl TestStack {
    /// Starts everything: broker, databases, command API, relay, one projector, query API.
    pub async fn start(partitions: u32) -> TestStack {
        // RUST_LOG=projector=debug,command_api=debug shows what the parts do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let broker = Broker::start(partitions).await;
        let write_database = FreshDatabase::create("e2e_write", &migrations::WRITE).await;
        let read_database = FreshDatabase::create("e2e_read", &migrations::READ).await;
        {
            let _setup = setup_lock().await;
            migrations::ensure_reader_login(&read_database.pool, "query_api")
                .await
                .expect("reader login");
        }
        let mut stack = TestStack {
            broker,
            write: write_database.pool.clone(),
            read: read_database.pool.clone(),
            write_database,
            read_database,
            http: reqwest::Client::new(),
            command_api: None,
            query_api: None,
            query_live: None,
            relay: None,
            projectors: Vec::new(),
            monitors: Vec::new(),
            progress: Arc::new(Progress::default()),
        };
        stack.start_command_api().await;
        stack.start_relay();
        stack.start_projector();
        stack.start_query_api().await;
        stack
    }

    pub async fn start_command_api(&mut self) {
        let tokens = format!(
            "{DISPATCHER}=dispatcher:desk-1,{ADMIN}=admin:root,{}",
            (1..=9)
                .map(|n| format!("{}=rider:rider-{n}", rider_token(n)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let state = command_api::AppState {
            pool: self.write.clone(),
            tokens: command_api::Tokens::parse(&tokens).expect("tokens"),
            max_body_bytes: 16 * 1024,
        };
        self.command_api = Some(serve(command_api::app(state)).await);
    }

    pub fn start_relay(&mut self) {
        let pool = self.write.clone();
        let producers = relay::ProducerSettings::new(&self.broker.address);
        let config = RelayConfig {
            topic: TOPIC.into(),
            batch_size: 500,
            max_in_flight: 2000,
            poll_interval: Duration::from_millis(100),
        };
        self.relay = Some(Part::spawn(|shutdown| async move {
            let _ = relay::run(pool, producers, config, shutdown).await;
        }));
    }

    /// Starts one more projector instance in the group (several share the partitions).
    pub fn start_projector(&mut self) {
        let pool = self.read.clone();
        let config = ProjectorConfig {
            brokers: self.broker.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            group: crate::PROJECTOR_GROUP.into(),
            batch_size: 50,
            lanes: 2,
        };
        let progress = self.progress.clone();
        self.projectors.push(Part::spawn(|shutdown| async move {
            let _ = projector::run(pool, config, progress, shutdown).await;
        }));
    }

    pub async fn start_query_api(&mut self) {
        self.start_query_api_with(query_api::LiveConfig::default())
            .await;
    }

    /// Starts the query API with the given live-stream bounds.
    pub async fn start_query_api_with(&mut self, live: query_api::LiveConfig) {
        let options = self.read_database.options().username("query_api");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("query API connects as the reader");
        let state = query_api::AppState {
            freshness: query_api::FreshnessWatch::listen(&pool)
                .await
                .expect("listen"),
            pool,
            tokens: query_api::Tokens::parse(READER).expect("tokens"),
            max_wait: Duration::from_secs(5),
            live: query_api::Live::new(live),
        };
        self.query_live = Some(state.live.clone());
        self.query_api = Some(serve(query_api::app(state)).await);
    }

    /// Starts what the relay and projector binaries run beside their work: the outbox backlog
    /// and projector lag watchers (reading every 100 ms) and their HTTP listeners (`/metrics`,
    /// `/health`) on free ports. Apart from the relay and the projectors, as in the binaries'
    /// own tasks, so they keep reporting while those are stopped.
    pub async fn start_monitors(&mut self) -> Monitors {
        let every = Duration::from_millis(100);
        let write = self.write.clone();
        self.monitors.push(Part::spawn(|shutdown| {
            relay::monitor::watch_backlog(write, every, shutdown)
        }));
        let subscription = projector::Subscription {
            group: crate::PROJECTOR_GROUP.into(),
            topic: TOPIC.into(),
        };
        let watcher = projector::monitor::Watcher::new(
            self.read.clone(),
            &self.broker.address,
            &Default::default(),
            subscription,
            every,
        )
        .expect("the watcher's Kafka client");
        self.monitors
            .push(Part::spawn(|shutdown| watcher.run(shutdown)));
        let mut urls = Vec::new();
        for name in ["relay", "projector"] {
            let shutdown = CancellationToken::new();
            let address = platform::service::metrics::serve_operations(
                "127.0.0.1:0".parse().expect("an address"),
                name,
                shutdown.clone(),
            )
            .await
            .expect("an operations listener");
            urls.push(format!("http://{address}"));
            // The listener stops with its token: this part only passes the stop on.
            self.monitors.push(Part::spawn(|stop| async move {
                stop.cancelled().await;
                shutdown.cancel();
            }));
        }
        Monitors {
            projector_url: urls.pop().expect("two listeners"),
            relay_url: urls.pop().expect("two listeners"),
        }
    }

    /// Stops every projector instance cleanly (the batch in hand still commits).
    pub async fn stop_projectors(&mut self) {
        for part in self.projectors.drain(..) {
            part.stop().await;
        }
    }

    /// Stops the oldest projector instance cleanly: it leaves the group.
    pub async fn stop_first_projector(&mut self) {
        if !self.projectors.is_empty() {
            self.projectors.remove(0).stop().await;
        }
    }

    /// Kills every projector instance wherever it is, mid-batch included: like a crash, its
    /// open transaction is rolled back and nothing after its last commit is kept.
    pub async fn kill_projectors(&mut self) {
        for part in self.projectors.drain(..) {
            part.kill().await;
        }
    }

    /// Stops the query API as its binary does on a signal: live streams end, then requests in
    /// flight finish.
    pub async fn stop_query_api(&mut self) {
        if let Some(live) = self.query_live.take() {
            live.close();
        }
        if let Some(served) = self.query_api.take() {
            served.part.stop().await;
        }
    }

    pub async fn stop_relay(&mut self) {
        if let Some(part) = self.relay.take() {
            part.stop().await;
        }
    }

    pub fn command_url(&self, path: &str) -> String {
        let served = self.command_api.as_ref().expect("the command API runs");
        format!("{}{path}", served.address)
    }

    /// The query API's live streams (how many are open, for tests).
    pub fn query_live(&self) -> &query_api::Live {
        self.query_live.as_ref().expect("the query API runs")
    }

    pub fn query_url(&self, path: &str) -> String {
        let served = self.query_api.as_ref().expect("the query API runs");
        format!("{}{path}", served.address)
    }

    /// A client for the command API that can be moved into spawned tasks.
    pub fn clone_client(&self) -> CommandClient {
        CommandClient::new(self.http.clone(), self.command_url(""))
    }

    /// POSTs a command; returns the status and the JSON body.
    pub async fn command(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        self.clone_client().command(path, token, body).await
    }

    /// Walks delivery `id` to `fate` (see [`CommandClient::walk`]).
    pub async fn walk(&self, id: Uuid, rider: u32, fate: Fate) -> i64 {
        self.clone_client().walk(id, rider, fate).await
    }

    /// GETs from the query API with the reader token; returns the status and the JSON body.
    pub async fn query(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.query_url(path))
            .bearer_auth(READER)
            .send()
            .await
            .expect("query API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the read model has applied every event in the event store.
    pub async fn wait_for_projection(&self, timeout: Duration) {
        let stored: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(&self.write)
            .await
            .expect("count events");
        eventually(timeout, "the projection to catch up", || async {
            let projected: i64 = sqlx::query_scalar("select count(*) from delivery_history")
                .fetch_one(&self.read)
                .await
                .ok()?;
            (projected >= stored).then_some(())
        })
        .await;
    }

    /// Makes the write database refuse connections and drops the open ones.
    pub async fn block_write_database(&self, blocked: bool) {
        let mut admin = admin_options().connect().await.expect("admin connection");
        let name = &self.write_database.name;
        admin
            .execute(format!("alter database {name} with allow_connections {}", !blocked).as_str())
            .await
            .expect("alter database");
        if blocked {
            sqlx::query(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where datname = $1 and pid <> pg_backend_pid()",
            )
            .bind(name)
            .execute(&mut admin)
            .await
            .expect("terminate");
        }
        let _ = admin.close().await;
    }

    /// Stops everything and drops the test's databases.
    pub async fn shutdown(mut self) {
        self.stop_query_api().await;
        self.stop_projectors().await;
        self.stop_relay().await;
        if let Some(served) = self.command_api.take() {
            served.part.stop().await;
        }
        for part in self.monitors.drain(..) {
            part.stop().await;
        }
        self.write_database.remove().await;
        self.read_database.remove().await;
    }
}
