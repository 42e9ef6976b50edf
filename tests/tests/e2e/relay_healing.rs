//! The relay heals on its own, against real Postgres (a fresh write database per test) and a
//! real Kafka-protocol broker: a Postgres restart (every backend of the test's database
//! terminated, which is what clients see of one), a killed leader lock connection (a standby
//! takes over), and a broker killed and started again. No test restarts a relay.

use crate::relay::{consumer, record_lifecycles, record_lifecycles_of, relay_config};
use chrono::Utc;
use command_api::relay::{self, ProducerSettings, RelayError};
use command_api::store::{self, Causation, Head};
use domain::fixtures::lifecycle;
use domain::{Delivery, DeliveryId, EventEnvelope};
use e2e::{Broker, TOPIC, eventually};
use rdkafka::message::Message;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A relay running in the background, as `command-api relay` runs it.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RelayError>>,
}

fn start_relay(pool: PgPool, broker: &str) -> Running {
    // RUST_LOG=command_api=info shows the relay stepping down, standing by and leading.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay::run(
        pool,
        ProducerSettings::new(broker),
        relay_config(),
        shutdown.clone(),
    ));
    Running { shutdown, task }
}

impl Running {
    fn assert_alive(&self) {
        assert!(!self.task.is_finished(), "the relay exited");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("joins")
            .expect("returns only on shutdown, cleanly");
    }
}

/// Terminates every other backend of the test's database: Postgres restarting, as its clients
/// see it (the shared server itself must keep running for everyone else's tests).
async fn restart_postgres(pool: &PgPool) -> i64 {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect");
    sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate")
}

/// (outbox rows, rows published), or `None` while the database is not answering.
async fn outbox(pool: &PgPool) -> Option<(i64, i64)> {
    sqlx::query_as("select count(*), count(published_at) from outbox")
        .fetch_one(pool)
        .await
        .ok()
}

async fn everything_published(pool: &PgPool, rows: i64) {
    eventually(
        Duration::from_secs(90),
        "every outbox row published",
        || async {
            outbox(pool)
                .await
                .filter(|(total, published)| *total == rows && published == total)
        },
    )
    .await;
}

/// Reads the topic until each of `ids` arrived up to version `last`. At-least-once: a copy
/// may repeat, but no delivery's version ever arrives before the one it follows.
async fn assert_published_in_order(broker: &Broker, ids: &[DeliveryId], last: i64) {
    let consumer = consumer(broker);
    let mut seen: HashMap<String, i64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let missing = |seen: &HashMap<String, i64>| {
        ids.iter()
            .filter(|id| seen.get(&id.to_string()).copied().unwrap_or(0) < last)
            .count()
    };
    while missing(&seen) > 0 {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{} deliveries never arrived whole", missing(&seen)))
            .expect("message");
        let key = String::from_utf8(message.key().expect("keyed").to_vec()).expect("utf8");
        let envelope =
            EventEnvelope::from_json(message.payload().expect("payload")).expect("envelope");
        let newest = seen.entry(key.clone()).or_insert(0);
        assert!(
            envelope.version <= *newest + 1,
            "{key}: version {} arrived after version {newest}: one went missing",
            envelope.version
        );
        *newest = (*newest).max(envelope.version);
    }
}

/// Tries to store the `step`th event of `id`'s lifecycle; true once it is stored (now or by
/// an earlier attempt whose answer was lost with the connection).
async fn try_step(pool: &PgPool, id: DeliveryId, step: i64) -> bool {
    let Ok(mut tx) = pool.begin().await else {
        return false;
    };
    let Ok(history) = store::load(&mut tx, id).await else {
        return false;
    };
    let facts: Vec<_> = history
        .iter()
        .map(|envelope| envelope.decode().expect("decodes"))
        .collect();
    let delivery = Delivery::replay(&facts).expect("a valid history");
    if delivery.version > step {
        return true;
    }
    let step = usize::try_from(step).expect("a step of the lifecycle");
    let (command, actor) = lifecycle(id)[step].clone();
    let events = delivery
        .decide(command, &actor, Utc::now())
        .expect("allowed");
    let causation = Causation {
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
    };
    store::append_after(&mut tx, &Head::of(&history), &events, causation)
        .await
        .is_ok()
        && tx.commit().await.is_ok()
}

/// A client that records whole lifecycles until `stop`, retrying each command through database
/// restarts. Returns the deliveries it recorded.
async fn write_until(pool: PgPool, stop: CancellationToken) -> Vec<DeliveryId> {
    let mut ids = Vec::new();
    while !stop.is_cancelled() {
        let id = DeliveryId::from_uuid(Uuid::now_v7());
        for step in 0..4 {
            while !try_step(&pool, id, step).await {
                // Pacing for the retry, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A steady stream rather than a burst: the restarts land in the middle of it.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids.push(id);
    }
    ids
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_relay_survives_postgres_restarts_under_load_and_loses_nothing(pool: PgPool) {
    let broker = Broker::start(3).await;
    let relay = start_relay(pool.clone(), &broker.address);
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_until(pool.clone(), stop.clone()));

    let mut published_before = 0;
    for restart in 1..=3 {
        // The relay leads again and publishes between restarts.
        published_before = eventually(
            Duration::from_secs(60),
            &format!("publishing before restart {restart}"),
            || async {
                outbox(&pool)
                    .await
                    .map(|(_, published)| published)
                    .filter(|published| *published >= published_before + 20)
            },
        )
        .await;
        assert!(restart_postgres(&pool).await > 0, "nothing was connected");
        relay.assert_alive();
    }
    stop.cancel();
    let ids = writer.await.expect("the writer recorded every step");
    let rows = 4 * i64::try_from(ids.len()).expect("a small count");
    everything_published(&pool, rows).await;
    relay.assert_alive();
    assert_published_in_order(&broker, &ids, 4).await;
    relay.stop().await;
}

/// A pool whose connections name themselves, so a test can tell the relays apart.
async fn named_pool(pool: &PgPool, name: &str) -> PgPool {
    let options = (*pool.connect_options()).clone().application_name(name);
    PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .expect("connect")
}

/// The application name and backend of the connection holding the relay's leader lock.
async fn leader(pool: &PgPool) -> Option<(String, i32)> {
    sqlx::query_as(
        "select a.application_name, a.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid \
         where l.locktype = 'advisory' and l.granted \
           and l.database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn a_standby_takes_over_when_the_leaders_lock_connection_is_killed(pool: PgPool) {
    let broker = Broker::start(2).await;
    let first = start_relay(named_pool(&pool, "relay-first").await, &broker.address);
    let (name, pid) = eventually(Duration::from_secs(30), "a leader", || leader(&pool)).await;
    assert_eq!(name, "relay-first");
    let second = start_relay(named_pool(&pool, "relay-second").await, &broker.address);
    let mut ids = record_lifecycles(&pool, 3).await;
    everything_published(&pool, 12).await;

    // The leader's lock connection dies: the lock goes with it, and the leader must stop.
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .expect("terminate");
    eventually(Duration::from_secs(30), "the standby leading", || async {
        leader(&pool)
            .await
            .filter(|(name, _)| name == "relay-second")
    })
    .await;
    ids.extend(record_lifecycles_of(&pool, 4..=6).await);
    everything_published(&pool, 24).await;
    first.assert_alive();
    second.assert_alive();
    assert_published_in_order(&broker, &ids, 4).await;
    // The old leader is a standby now, ready to take over in turn.
    second.stop().await;
    let (name, _) = eventually(Duration::from_secs(30), "the old leader back", || async {
        leader(&pool)
            .await
            .filter(|(name, _)| name == "relay-first")
    })
    .await;
    assert_eq!(name, "relay-first");
    first.stop().await;
}

#[sqlx::test(migrator = "migrations::WRITE")]
async fn the_relay_keeps_publishing_across_a_broker_restart(pool: PgPool) {
    let broker = Broker::start(2).await;
    let address = broker.address.clone();
    let relay = start_relay(pool.clone(), &address);
    record_lifecycles(&pool, 2).await;
    everything_published(&pool, 8).await;

    broker.kill().await;
    let after = record_lifecycles_of(&pool, 3..=5).await;
    // In memory, the new broker starts empty: it holds what comes after the restart.
    let broker = Broker::start_on(TOPIC, 2, &address).await;
    everything_published(&pool, 20).await;
    relay.assert_alive();
    assert_published_in_order(&broker, &after, 4).await;
    relay.stop().await;
}
