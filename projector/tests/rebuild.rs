//! `rebuild` against a real broker and a fresh read database per test: the live projector
//! builds the read model from the topic, the test damages it, and a rebuild must bring back
//! exactly what the live projector had built, switching it in while the live projector runs.
//!
//! (Over 400 lines: every rebuild promise with one shared broker and database set-up.)

mod common;

use common::*;
use domain::{DeliveryEvent, EventEnvelope};
use e2e::{Broker, Publisher, eventually};
use projector::catalog::{self, Projection};
use projector::rebuild::{RebuildConfig, RebuildError, RebuildReport, rebuild};
use projector::{Progress, ProjectorConfig};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "delivery.events";
const LIVE_GROUP: &str = "live-projector";

/// The fate of delivery `n`: the mix every test publishes, so counts have every status.
fn lifecycle(n: u128) -> Vec<EventEnvelope> {
    let rider = format!("rider-{}", n % 3);
    let changes: Vec<DeliveryEvent> = match n % 4 {
        0 => vec![created()],
        1 => vec![created(), assigned(&rider)],
        2 => vec![
            created(),
            assigned(&rider),
            picked_up(&rider),
            completed(&rider),
        ],
        _ => vec![created(), assigned(&rider), cancelled()],
    };
    chained(id(n + 1), changes)
}

fn deliveries(range: std::ops::Range<u128>) -> Vec<EventEnvelope> {
    range.flat_map(lifecycle).collect()
}

/// The expected `status_counts` and `riders` (active, completed) for deliveries `0..n`.
fn expected_counts(n: u128) -> (Value, Value) {
    let mut statuses = serde_json::Map::new();
    for (status, fate) in [("created", 0), ("rider_assigned", 1), ("completed", 2)] {
        statuses.insert(
            status.into(),
            ((0..n).filter(|i| i % 4 == fate).count()).into(),
        );
    }
    statuses.insert(
        "cancelled".into(),
        ((0..n).filter(|i| i % 4 == 3).count()).into(),
    );
    statuses.insert("picked_up".into(), 0.into());
    let riders: Vec<Value> = (0..3)
        .map(|r| {
            let of = |fate| (0..n).filter(|i| i % 3 == r && i % 4 == fate).count();
            serde_json::json!([format!("rider-{r}"), of(1), of(2)])
        })
        .collect();
    (Value::Object(statuses), Value::Array(riders))
}

struct Setup {
    broker: Broker,
    publisher: Publisher,
    pool: PgPool,
}

impl Setup {
    async fn new(pool: PgPool) -> Setup {
        let (broker, publisher, pool) = on_broker(&pool, TOPIC, 3, 8).await;
        Setup {
            broker,
            publisher,
            pool,
        }
    }

    async fn publish(&self, events: &[EventEnvelope]) {
        self.publisher.publish(events).await;
    }

    async fn send(&self, key: &str, payload: &[u8]) {
        self.publisher.send(key, payload).await;
    }

    fn live_projector(&self) -> LiveProjector {
        let shutdown = CancellationToken::new();
        let config = ProjectorConfig {
            brokers: self.broker.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            group: LIVE_GROUP.into(),
            batch_size: 50,
            lanes: 2,
        };
        let task = tokio::spawn(projector::run(
            self.pool.clone(),
            config,
            Arc::new(Progress::default()),
            shutdown.clone(),
        ));
        LiveProjector { shutdown, task }
    }

    fn config(&self, projections: &[&'static dyn Projection]) -> RebuildConfig {
        RebuildConfig {
            brokers: self.broker.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            live_group: LIVE_GROUP.into(),
            projections: projections.to_vec(),
            keep_old: false,
            from_scratch: false,
            batch_size: 40,
            lanes: 2,
            progress_bar: false,
            switch_timeout: Duration::from_secs(10),
            allow_truncated_history: false,
        }
    }

    async fn rebuild(&self, config: &RebuildConfig) -> RebuildReport {
        let report = rebuild(&self.pool, config, &CancellationToken::new())
            .await
            .expect("the rebuild runs");
        assert!(report.switched, "{report}");
        report
    }

    /// Runs a rebuild and interrupts it once `ready` completes, before it could switch.
    async fn rebuild_interrupted(
        &self,
        config: &RebuildConfig,
        ready: impl std::future::Future<Output = ()>,
    ) -> RebuildReport {
        let shutdown = CancellationToken::new();
        let interrupt = async {
            ready.await;
            shutdown.cancel();
        };
        let report = tokio::join!(rebuild(&self.pool, config, &shutdown), interrupt)
            .0
            .expect("the rebuild runs");
        assert!(!report.switched, "{report}");
        report
    }

    /// Waits until the live projector has stored offsets covering `messages` messages.
    async fn live_applied(&self, messages: i64) {
        self.offsets_reach("public", LIVE_GROUP, messages).await;
    }

    async fn offsets_reach(&self, schema: &str, group: &str, messages: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stored: Option<i64> = sqlx::query_scalar(&format!(
                "select sum(next_offset)::bigint from {schema}.consumer_offsets \
                 where consumer_group = $1"
            ))
            .bind(group)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None);
            if stored.unwrap_or(0) >= messages {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{schema} stored {stored:?} of {messages} messages"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn execute(&self, statement: &str) {
        sqlx::raw_sql(statement)
            .execute(&self.pool)
            .await
            .expect(statement);
    }

    async fn exists(&self, relation: &str) -> bool {
        sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(relation)
            .fetch_one(&self.pool)
            .await
            .expect("to_regclass")
    }

    async fn schemas(&self, prefix: &str) -> Vec<String> {
        sqlx::query_scalar(
            "select nspname::text from pg_namespace where starts_with(nspname, $1) order by 1",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await
        .expect("schemas")
    }

    /// Every row of every projection, minus the columns that record when a row was written.
    async fn read_model(&self) -> Value {
        sqlx::query_scalar(
            "select jsonb_build_object(
                'deliveries', (select jsonb_agg(to_jsonb(d) order by delivery_id) from deliveries d),
                'history', (select jsonb_agg(to_jsonb(h) order by delivery_id, version)
                            from delivery_history h),
                'riders', (select jsonb_agg(to_jsonb(r) order by rider_id) from riders r),
                'counts', (select jsonb_object_agg(status, deliveries) from status_counts),
                'parked', (select jsonb_agg(to_jsonb(p) - 'parked_at' order by delivery_id, version)
                           from parked_events p),
                'poison', (select jsonb_agg(to_jsonb(p) - 'received_at' order by kafka_offset)
                           from poison_messages p),
                'offsets', (select jsonb_object_agg(kafka_partition, next_offset)
                            from consumer_offsets))",
        )
        .fetch_one(&self.pool)
        .await
        .expect("read model query")
    }

    /// The columns, indexes and constraints of every projection's tables in `public`.
    async fn table_shapes(&self) -> Value {
        let tables: Vec<&str> = catalog::ALL
            .iter()
            .flat_map(|p| p.tables().iter().copied())
            .collect();
        sqlx::query_scalar(
            "select jsonb_build_object(
                'columns', (select jsonb_agg(table_name || '.' || column_name || ' ' || data_type
                                || ' ' || is_nullable order by table_name, ordinal_position)
                            from information_schema.columns
                            where table_schema = 'public' and table_name = any($1)),
                'indexes', (select jsonb_agg(indexdef order by indexname) from pg_indexes
                            where schemaname = 'public' and tablename = any($1)),
                'constraints', (select jsonb_agg(conrelid::regclass || ' ' || conname || ': '
                                    || pg_get_constraintdef(oid) order by conrelid::regclass::text, conname)
                                from pg_constraint where conrelid in (
                                    select ('public.' || t)::regclass from unnest($1::text[]) t)))",
        )
        .bind(&tables)
        .fetch_one(&self.pool)
        .await
        .expect("table shapes query")
    }

    async fn counts(&self) -> (Value, Value) {
        sqlx::query_as(
            "select (select jsonb_object_agg(status, deliveries) from status_counts),
                    (select jsonb_agg(jsonb_build_array(rider_id, active_deliveries,
                        completed_deliveries) order by rider_id) from riders)",
        )
        .fetch_one(&self.pool)
        .await
        .expect("counts query")
    }
}

struct LiveProjector {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), projector::ProjectorError>>,
}

impl LiveProjector {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("joined").expect("projector ran");
    }
}

/// The delivery a damage statement singles out.
const TAMPERED: &str = "00000000-0000-0000-0000-000000000002";

const DAMAGE: &str = "
    delete from deliveries where delivery_id in (select delivery_id from deliveries limit 5);
    delete from delivery_history where version = 2;
    update status_counts set deliveries = deliveries + 7 where status = 'created';
    delete from riders where rider_id = 'rider-1';
    delete from poison_messages;";

#[sqlx::test(migrator = "migrations::READ")]
async fn a_damaged_read_model_is_rebuilt_to_exactly_what_the_live_projector_built(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..40)).await;
    setup.send("not-a-delivery", b"not json").await;
    // 10 created, 10 assigned, 10 completed (4 events), 10 cancelled (3), and the poison.
    setup.live_applied(10 + 20 + 40 + 30 + 1).await;
    let built = setup.read_model().await;
    assert_eq!(built["poison"].as_array().map(Vec::len), Some(1));
    let migrated = setup.table_shapes().await;

    setup.execute(DAMAGE).await;
    assert_ne!(setup.read_model().await, built);
    let report = setup.rebuild(&setup.config(&catalog::ALL)).await;

    assert_eq!(setup.read_model().await, built, "{report}");
    // The indexes a rebuild builds once at the end are all there, as the migrations made them.
    assert_eq!(setup.table_shapes().await, migrated);
    assert_eq!(report.applied, 101);
    assert_eq!(report.resumed_at, 0);
    assert!(setup.schemas("rebuild_").await.is_empty());
    assert!(setup.schemas("retired_").await.is_empty());
    let rebuilt: Vec<String> = sqlx::query_scalar(
        "select name from projections where rebuilt_at is not null order by name",
    )
    .fetch_all(&setup.pool)
    .await
    .expect("catalog");
    assert_eq!(rebuilt, ["counts", "deliveries", "history"]);

    // The live projector goes on writing the switched-in tables, from where it was.
    setup.publish(&deliveries(40..44)).await;
    setup.live_applied(101 + 10).await;
    assert_eq!(setup.counts().await, expected_counts(44));
    live.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rebuild_keeps_up_with_a_live_projector_under_load(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..100)).await;
    setup.live_applied(25 * 10).await;
    setup.execute(DAMAGE).await;
    // Events keep coming while the rebuild replays: it must switch at the live position,
    // neither missing the newest nor applying them twice.
    let publishing = async {
        for n in (100..200).step_by(10) {
            setup.publish(&deliveries(n..n + 10)).await;
        }
    };
    let config = setup.config(&catalog::ALL);
    let (report, ()) = tokio::join!(setup.rebuild(&config), publishing);
    setup.live_applied(200 / 4 * 10).await;
    assert_eq!(setup.counts().await, expected_counts(200), "{report}");
    let history: i64 = sqlx::query_scalar("select count(*) from delivery_history")
        .fetch_one(&setup.pool)
        .await
        .expect("history count");
    assert_eq!(history, 200 / 4 * 10);
    live.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rebuild_stops_at_the_position_of_a_lagging_live_projector(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..40)).await;
    setup.live_applied(10 * 10).await;
    live.stop().await;
    // The topic runs ahead of the live projector.
    setup.publish(&deliveries(40..80)).await;

    // Counts switched in past the live position would count those events again when the live
    // projector applies them (its `deliveries` rows are behind): they must stop exactly there.
    setup.rebuild(&setup.config(&[catalog::COUNTS])).await;
    assert_eq!(setup.counts().await, expected_counts(40));

    let live = setup.live_projector();
    setup.live_applied(20 * 10).await;
    assert_eq!(setup.counts().await, expected_counts(80));
    live.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn rebuilding_the_counts_replaces_only_the_counts(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..20)).await;
    setup.live_applied(5 * 10).await;
    setup
        .execute(&format!(
            "update deliveries set order_ref = 'tampered' where delivery_id = '{TAMPERED}';
             update status_counts set deliveries = 0;
             update riders set active_deliveries = 40;"
        ))
        .await;

    let mut config = setup.config(&[catalog::COUNTS]);
    config.keep_old = true;
    let report = setup.rebuild(&config).await;

    assert_eq!(setup.counts().await, expected_counts(20), "{report}");
    let order_ref: String =
        sqlx::query_scalar("select order_ref from deliveries where delivery_id = $1::uuid")
            .bind(TAMPERED)
            .fetch_one(&setup.pool)
            .await
            .expect("the tampered row");
    assert_eq!(
        order_ref, "tampered",
        "deliveries was not part of the rebuild"
    );
    // The replaced tables are kept, damage and all.
    let kept = report.kept_in.clone().expect("kept");
    assert_eq!(setup.schemas("retired_").await, std::slice::from_ref(&kept));
    let kept_created: i64 = sqlx::query_scalar(&format!(
        "select deliveries from {kept}.status_counts where status = 'created'"
    ))
    .fetch_one(&setup.pool)
    .await
    .expect("kept counts");
    assert_eq!(kept_created, 0);
    live.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_projection_the_read_model_never_had_is_built_from_the_first_event(pool: PgPool) {
    let setup = Setup::new(pool).await;
    // A read database from before the counts projection existed.
    setup
        .execute(
            "drop table status_counts; drop table riders; \
             delete from projections where name = 'counts';",
        )
        .await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..20)).await;
    setup.live_applied(5 * 10).await;
    assert!(!setup.exists("public.status_counts").await);

    setup.rebuild(&setup.config(&[catalog::COUNTS])).await;
    assert_eq!(setup.counts().await, expected_counts(20));

    // From the switch on, the live projector keeps the new projection current.
    setup.publish(&deliveries(20..28)).await;
    setup.live_applied(7 * 10).await;
    assert_eq!(setup.counts().await, expected_counts(28));
    live.stop().await;
}

#[sqlx::test(migrator = "migrations::READ")]
async fn an_interrupted_rebuild_resumes_where_it_stopped(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..100)).await;
    setup.live_applied(25 * 10).await;
    live.stop().await;
    let built = setup.read_model().await;
    setup.execute(DAMAGE).await;
    let damaged = setup.read_model().await;

    let mut config = setup.config(&catalog::ALL);
    config.batch_size = 2;
    let twenty_applied = setup.offsets_reach(
        "rebuild_counts_deliveries_history",
        "rebuild/rebuild_counts_deliveries_history",
        20,
    );
    let interrupted = setup.rebuild_interrupted(&config, twenty_applied).await;
    assert_eq!(setup.read_model().await, damaged, "nothing switched");
    assert_eq!(
        setup.schemas("rebuild_").await,
        ["rebuild_counts_deliveries_history"]
    );

    config.batch_size = 40;
    let resumed = setup.rebuild(&config).await;
    assert_eq!(resumed.resumed_at, interrupted.applied, "{resumed}");
    assert_eq!(resumed.resumed_at + resumed.applied, 25 * 10);
    assert_eq!(setup.read_model().await, built);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rebuild_interrupted_after_building_its_indexes_resumes_without_building_them_again(
    pool: PgPool,
) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..20)).await;
    setup.live_applied(5 * 10).await;
    live.stop().await;
    let built = setup.read_model().await;
    let migrated = setup.table_shapes().await;
    setup.execute(DAMAGE).await;

    // Holding the live projector's partition locks keeps the switch from happening, so the
    // rebuild catches up, builds its indexes, and then waits to switch.
    let mut holder = setup.pool.begin().await.expect("tx");
    let live_offsets = projector::Subscription {
        group: LIVE_GROUP.into(),
        topic: TOPIC.into(),
    };
    projector::batch::lock_partitions(&mut holder, &live_offsets, &[0, 1, 2])
        .await
        .expect("live partitions locked");
    let config = setup.config(&catalog::ALL);
    let indexes_built = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let indexed: Option<i32> = sqlx::query_scalar(
                "select cardinality(indexed) from rebuild_counts_deliveries_history.rebuild_info",
            )
            .fetch_one(&setup.pool)
            .await
            .unwrap_or(None);
            if indexed == Some(3) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no indexes built");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    setup.rebuild_interrupted(&config, indexes_built).await;
    holder.rollback().await.expect("locks released");

    let resumed = setup.rebuild(&config).await;
    assert_eq!(resumed.resumed_at, 5 * 10, "{resumed}");
    assert_eq!(setup.read_model().await, built);
    assert_eq!(setup.table_shapes().await, migrated);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_second_rebuild_of_the_same_projection_is_refused(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..100)).await;
    setup.live_applied(25 * 10).await;
    live.stop().await;

    let mut config = setup.config(&catalog::ALL);
    config.batch_size = 1;
    let shutdown = CancellationToken::new();
    let first = rebuild(&setup.pool, &config, &shutdown);
    let second = async {
        setup
            .offsets_reach(
                "rebuild_counts_deliveries_history",
                "rebuild/rebuild_counts_deliveries_history",
                1,
            )
            .await;
        let refused = rebuild(
            &setup.pool,
            &setup.config(&[catalog::COUNTS]),
            &CancellationToken::new(),
        )
        .await;
        shutdown.cancel();
        refused
    };
    let (first, refused) = tokio::join!(first, second);
    assert!(
        matches!(refused, Err(RebuildError::AlreadyRunning("counts"))),
        "{refused:?}"
    );
    assert!(!first.expect("the first rebuild runs").switched);
    // Once the first has stopped, the same projection can be rebuilt.
    setup.rebuild(&setup.config(&[catalog::COUNTS])).await;
    assert_eq!(setup.counts().await, expected_counts(100));
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .expect("admin client")
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_rebuild_of_a_topic_that_lost_its_first_events_is_refused_unless_allowed(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..20)).await;
    setup.live_applied(5 * 10).await;
    live.stop().await;
    // Retention deleted the first two events of partition 1.
    let mut first = TopicPartitionList::new();
    first
        .add_partition_offset(TOPIC, 1, Offset::Offset(2))
        .expect("offset");
    let deleted = admin(&setup.broker)
        .delete_records(&first, &AdminOptions::new())
        .await
        .expect("records deleted");
    assert!(
        deleted.elements().iter().all(|e| e.error().is_ok()),
        "{deleted:?}"
    );
    let before = setup.read_model().await;

    let refused = rebuild(
        &setup.pool,
        &setup.config(&catalog::ALL),
        &CancellationToken::new(),
    )
    .await;
    let Err(error @ RebuildError::TruncatedHistory { .. }) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    let message = error.to_string();
    assert!(
        message.contains("partition 1 starts at offset 2")
            && message.contains("--allow-truncated-history"),
        "{message}"
    );
    assert_eq!(setup.read_model().await, before, "nothing was switched");

    let mut config = setup.config(&catalog::ALL);
    config.allow_truncated_history = true;
    let report = setup.rebuild(&config).await;
    assert_eq!(report.applied, 5 * 10 - 2);
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_partition_count_changed_during_a_rebuild_stops_it_before_the_switch(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let live = setup.live_projector();
    setup.publish(&deliveries(0..20)).await;
    setup.live_applied(5 * 10).await;
    live.stop().await;
    setup.execute(DAMAGE).await;
    let damaged = setup.read_model().await;

    // The live projector's partition locks, held, keep the switch from happening until the
    // partition count has changed.
    let mut holder = setup.pool.begin().await.expect("tx");
    let live_offsets = projector::Subscription {
        group: LIVE_GROUP.into(),
        topic: TOPIC.into(),
    };
    projector::batch::lock_partitions(&mut holder, &live_offsets, &[0, 1, 2])
        .await
        .expect("live partitions locked");
    let config = setup.config(&catalog::ALL);
    let add_partition = async {
        eventually(
            Duration::from_secs(60),
            "the replay to catch up",
            || async {
                let indexed: Option<i32> = sqlx::query_scalar(
                "select cardinality(indexed) from rebuild_counts_deliveries_history.rebuild_info",
            )
            .fetch_one(&setup.pool)
            .await
            .unwrap_or(None);
                (indexed == Some(3)).then_some(())
            },
        )
        .await;
        // The test broker does not support CreatePartitions: the topic is recreated with one
        // more partition instead, which changes the count the same way.
        let admin = admin(&setup.broker);
        let options = AdminOptions::new();
        let deleted = admin
            .delete_topics(&[TOPIC], &options)
            .await
            .expect("deleted");
        assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
        let topic = NewTopic::new(TOPIC, 4, TopicReplication::Fixed(1));
        let created = admin
            .create_topics(&[topic], &options)
            .await
            .expect("created");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        holder.rollback().await.expect("locks released");
    };
    let never = CancellationToken::new();
    // A stuck rebuild (it once hung dropping its consumer after the topic was recreated) must
    // fail this test, not stall the whole run.
    let (outcome, ()) = tokio::time::timeout(Duration::from_secs(180), async {
        tokio::join!(rebuild(&setup.pool, &config, &never), add_partition)
    })
    .await
    .expect("the rebuild and the partition change end");
    assert!(
        matches!(
            outcome,
            Err(RebuildError::PartitionsChanged {
                before: 3,
                now: 4,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(setup.read_model().await, damaged, "nothing was switched");
}
