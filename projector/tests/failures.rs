//! The live projector against a real broker and a fresh read database per test, when things
//! go wrong: messages nothing can store, a read database that refuses a write or restarts,
//! stored offsets past the end of a recreated topic. Nothing stops the read side but the last.
//!
//! (Just over 400 lines: each failure shares the broker and database set-up at the top.)

mod common;

use common::*;
use domain::EventEnvelope;
use e2e::{Broker, Publisher, eventually};
use projector::offsets::Ahead;
use projector::{Progress, ProjectorConfig, ProjectorError};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::{ConnectOptions, PgPool};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "delivery.events";
const GROUP: &str = "failing-projector";
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    broker: Broker,
    publisher: Publisher,
    pool: PgPool,
}

impl Setup {
    async fn new(pool: PgPool, partitions: u32) -> Setup {
        let (broker, publisher, pool) = on_broker(&pool, TOPIC, partitions, 6).await;
        Setup {
            broker,
            publisher,
            pool,
        }
    }

    async fn send(&self, key: &[u8], payload: &[u8]) {
        self.publisher.send(key, payload).await;
    }

    async fn publish(&self, events: &[EventEnvelope]) {
        self.publisher.publish(events).await;
    }

    fn projector(&self) -> Running {
        let shutdown = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let config = ProjectorConfig {
            brokers: self.broker.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            group: GROUP.into(),
            batch_size: 50,
            lanes: 2,
        };
        let task = tokio::spawn(projector::run(
            self.pool.clone(),
            config,
            progress.clone(),
            shutdown.clone(),
        ));
        Running {
            shutdown,
            task,
            progress,
        }
    }

    /// Waits until the stored offsets cover `messages` messages.
    async fn consumed(&self, messages: i64) {
        eventually(WAIT, &format!("{messages} messages consumed"), || async {
            let stored: Option<i64> = sqlx::query_scalar(
                "select sum(next_offset)::bigint from consumer_offsets where consumer_group = $1",
            )
            .bind(GROUP)
            .fetch_one(&self.pool)
            .await
            .ok()?;
            (stored? >= messages).then_some(())
        })
        .await;
    }

    async fn version_of(&self, n: u128) -> Option<i64> {
        sqlx::query_scalar("select version from deliveries where delivery_id = $1")
            .bind(id(n).as_uuid())
            .fetch_optional(&self.pool)
            .await
            .expect("deliveries")
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ProjectorError>>,
    progress: Arc<Progress>,
}

impl Running {
    async fn stop(self) {
        assert!(!self.task.is_finished(), "the projector stopped by itself");
        self.shutdown.cancel();
        self.task.await.expect("joined").expect("projector ran");
    }
}

#[sqlx::test(migrator = "migrations::READ")]
async fn messages_nothing_can_store_stop_only_their_own_delivery(pool: PgPool) {
    let setup = Setup::new(pool, 1).await;
    let (a, x, b) = (1, 2, 3);
    let mut refused = envelope(id(x), 2, assigned("rider-1"));
    // Valid JSON (`\u0000`) that decodes, but Postgres text cannot hold a NUL.
    refused.actor.id = "desk\0one".into();
    setup.publish(&[envelope(id(a), 1, created())]).await;
    // A NUL in the key, and an error message that quotes a NUL: today its poison record
    // itself cannot be written.
    setup.send(b"bad\0key", b"{\"type\": \"\0\"").await;
    setup
        .publish(&[
            envelope(id(x), 1, created()),
            refused,
            envelope(id(x), 3, picked_up("rider-1")),
            envelope(id(a), 2, assigned("rider-1")),
            envelope(id(b), 1, created()),
            envelope(id(b), 2, assigned("rider-2")),
            envelope(id(a), 3, picked_up("rider-1")),
        ])
        .await;
    let running = setup.projector();
    setup.consumed(9).await;

    assert_eq!(setup.version_of(a).await, Some(3));
    assert_eq!(setup.version_of(b).await, Some(2));
    // X stays at version 1; version 3 waits behind the refused version 2.
    assert_eq!(setup.version_of(x).await, Some(1));
    let parked: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("select delivery_id, version from parked_events")
            .fetch_all(&setup.pool)
            .await
            .expect("parked");
    assert_eq!(parked, [(id(x).as_uuid(), 3)]);
    type Poison = (
        i64,
        Option<String>,
        Option<Vec<u8>>,
        Option<uuid::Uuid>,
        Option<i64>,
        String,
    );
    let poison: Vec<Poison> = sqlx::query_as(
        "select kafka_offset, message_key, message_key_bytes, delivery_id, version, error
         from poison_messages order by kafka_offset",
    )
    .fetch_all(&setup.pool)
    .await
    .expect("poison");
    assert_eq!(poison.len(), 2, "{poison:?}");
    assert_eq!(poison[0].0, 1);
    assert_eq!(poison[0].1.as_deref(), Some("bad\\u0000key"));
    assert_eq!(poison[0].2.as_deref(), Some(&b"bad\0key"[..]));
    assert_eq!(poison[1].0, 3);
    assert_eq!((poison[1].3, poison[1].4), (Some(id(x).as_uuid()), Some(2)));
    assert!(poison[1].5.contains("refused"), "{}", poison[1].5);

    // Nothing stopped: the partition flows on.
    setup
        .publish(&[envelope(id(b), 3, picked_up("rider-2"))])
        .await;
    setup.consumed(10).await;
    assert_eq!(setup.version_of(b).await, Some(3));
    assert_eq!(running.progress.poison.load(Ordering::Relaxed), 2);
    running.stop().await;
}

async fn terminate(admin: &mut sqlx::PgConnection, database: &str) {
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(admin)
    .await
    .expect("terminated");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn the_projector_rides_out_a_restarting_database(pool: PgPool) {
    let setup = Setup::new(pool, 2).await;
    let database = setup
        .pool
        .connect_options()
        .get_database()
        .expect("a database")
        .to_owned();
    let running = setup.projector();
    let deliveries = 60u128;
    let publisher = &setup;
    let publish = move |from: u128, to: u128| {
        let events: Vec<EventEnvelope> = (from..=to)
            .flat_map(|d| {
                chained(
                    id(d),
                    vec![created(), assigned("rider-1"), picked_up("rider-1")],
                )
            })
            .collect();
        async move { publisher.publish(&events).await }
    };
    let mut admin = (*setup.pool.connect_options())
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("admin connection");
    // What a Postgres restart looks like to its clients: every connection dropped at once.
    // Four times, each once the projector has applied more since the last.
    let restarting = async {
        for round in 1..=4u64 {
            eventually(WAIT, "the projector to apply more", || async {
                (running.progress.applied.load(Ordering::Relaxed) >= round * 20).then_some(())
            })
            .await;
            terminate(&mut admin, &database).await;
        }
    };
    tokio::join!(publish(1, 50), restarting);
    // Then an outage: no connection accepted for two seconds (its length, not a wait for
    // anything) while more events arrive.
    let allow =
        |allowed: bool| format!("alter database \"{database}\" with allow_connections {allowed}");
    sqlx::raw_sql(&allow(false))
        .execute(&mut admin)
        .await
        .expect("blocked");
    terminate(&mut admin, &database).await;
    publish(51, deliveries).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::raw_sql(&allow(true))
        .execute(&mut admin)
        .await
        .expect("unblocked");
    let events = deliveries as i64 * 3;
    setup.consumed(events).await;

    let (history, distinct, at_three): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from delivery_history),
                (select count(distinct (delivery_id, version)) from delivery_history),
                (select count(*) from deliveries where version = 3 and status = 'picked_up')",
    )
    .fetch_one(&setup.pool)
    .await
    .expect("read model");
    assert_eq!((history, distinct, at_three), (events, events, 60));
    let (parked, poison, active): (i64, i64, i32) = sqlx::query_as(
        "select (select count(*) from parked_events), (select count(*) from poison_messages),
                (select active_deliveries from riders where rider_id = 'rider-1')",
    )
    .fetch_one(&setup.pool)
    .await
    .expect("stuck");
    assert_eq!((parked, poison, active), (0, 0, 60));
    running.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn stored_offsets_past_the_end_of_a_recreated_topic_stop_the_projector(pool: PgPool) {
    let setup = Setup::new(pool, 1).await;
    // The read model was built from an older topic of the same name, 100 messages long.
    sqlx::query(
        "insert into consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
         values ($1, $2, 0, 100)",
    )
    .bind(GROUP)
    .bind(TOPIC)
    .execute(&setup.pool)
    .await
    .expect("stored offsets");
    setup
        .publish(&[envelope(id(1), 1, created()), envelope(id(2), 1, created())])
        .await;

    let running = setup.projector();
    let ended = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("the projector refuses to run")
        .expect("joined");
    let Err(ProjectorError::OffsetsAhead(refusal)) = ended else {
        panic!("expected a refusal, got {ended:?}");
    };
    assert_eq!(
        refusal.partitions,
        [Ahead {
            partition: 0,
            stored: 100,
            high_watermark: 2
        }]
    );
    assert!(refusal.to_string().contains("recreated"), "{refusal}");
    let projected: i64 = sqlx::query_scalar("select count(*) from deliveries")
        .fetch_one(&setup.pool)
        .await
        .expect("count");
    assert_eq!(projected, 0);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn stored_offsets_found_past_the_end_at_a_rebalance_stop_the_projector(pool: PgPool) {
    let setup = Setup::new(pool, 2).await;
    setup
        .publish(&[envelope(id(1), 1, created()), envelope(id(2), 1, created())])
        .await;
    let running = setup.projector();
    setup.consumed(2).await;
    // The topic "was recreated" under the running projector: its stored offsets are now far
    // beyond the partitions' ends. The next assignment, whichever partition it gives this
    // projector, must notice.
    sqlx::query(
        "insert into consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
         values ($1, $2, 0, 100), ($1, $2, 1, 100)
         on conflict (consumer_group, topic, kafka_partition) do update set next_offset = 100",
    )
    .bind(GROUP)
    .bind(TOPIC)
    .execute(&setup.pool)
    .await
    .expect("offsets moved");
    // Another member joining the group makes it rebalance.
    let joiner: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.broker.address)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    joiner.subscribe(&[TOPIC]).expect("subscribed");
    let polling = async {
        loop {
            let _ = joiner.recv().await;
        }
    };
    let ended = tokio::select! {
        ended = tokio::time::timeout(WAIT, running.task) => ended,
        () = polling => unreachable!("polls for ever"),
    };
    let ended = ended
        .expect("the projector refuses to go on")
        .expect("joined");
    assert!(
        matches!(ended, Err(ProjectorError::OffsetsAhead(ref refusal)) if refusal.partitions[0].stored == 100),
        "{ended:?}"
    );
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_missing_table_poisons_nothing_and_its_batches_apply_once_it_is_back(pool: PgPool) {
    let setup = Setup::new(pool, 1).await;
    let database = setup
        .pool
        .connect_options()
        .get_database()
        .expect("a database")
        .to_owned();
    let running = setup.projector();
    // A broken deployment, not bad data: every batch fails alike while the table is away.
    sqlx::raw_sql("alter table delivery_history rename to delivery_history_away")
        .execute(&setup.pool)
        .await
        .expect("renamed");
    let rollbacks = || async {
        sqlx::query_scalar::<_, i64>(
            "select xact_rollback from pg_stat_database where datname = $1",
        )
        .bind(&database)
        .fetch_one(&setup.pool)
        .await
        .expect("stats")
    };
    let before = rollbacks().await;
    let events: Vec<EventEnvelope> = (1..=10u128)
        .flat_map(|d| chained(id(d), vec![created(), assigned("rider-1")]))
        .collect();
    setup.publish(&events).await;
    // Enough failed attempts that a batch taken for the data's fault would have been split.
    eventually(WAIT, "several failed attempts", || async {
        (rollbacks().await >= before + 6).then_some(())
    })
    .await;
    let stuck: (i64, i64) = sqlx::query_as(
        "select (select count(*) from poison_messages), (select count(*) from parked_events)",
    )
    .fetch_one(&setup.pool)
    .await
    .expect("stuck");
    assert_eq!(stuck, (0, 0), "a missing table must not poison messages");

    sqlx::raw_sql("alter table delivery_history_away rename to delivery_history")
        .execute(&setup.pool)
        .await
        .expect("renamed back");
    setup.consumed(20).await;
    let (history, poison): (i64, i64) = sqlx::query_as(
        "select (select count(*) from delivery_history), (select count(*) from poison_messages)",
    )
    .fetch_one(&setup.pool)
    .await
    .expect("read model");
    assert_eq!((history, poison), (20, 0));
    running.stop().await;
}
