//! A projection that is not built in: one implementation of `Projection` and its SQL, defined
//! here, in a catalog of the caller's. The rebuild builds it from the topic and switches it
//! live; from then on the live projector writes it too.

mod common;

use common::*;
use domain::{Address, Created, CustomerId, DeliveryEvent, EventEnvelope, OrderRef};
use e2e::{Broker, Publisher, eventually};
use projector::catalog::{self, Catalog};
use projector::projection::{PlannedBatch, Projection, async_trait};
use projector::rebuild::{RebuildConfig, rebuild_with};
use projector::{Destination, Progress, ProjectorConfig, Subscription, apply_batch_to};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "delivery.events";
const LIVE_GROUP: &str = "live-projector";

/// Completed deliveries per customer.
struct CustomerCompletions;

#[async_trait]
impl Projection for CustomerCompletions {
    fn name(&self) -> &'static str {
        "customer_completions"
    }

    fn about(&self) -> &'static str {
        "completed deliveries per customer"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["customer_completions"]
    }

    fn ddl(&self) -> &'static str {
        "create table customer_completions (
             customer_id text primary key,
             completed bigint not null check (completed >= 0)
         )"
    }

    fn indexes(&self) -> &'static str {
        "create index customer_completions_most on customer_completions (completed desc)"
    }

    /// Each completion the batch applied, counted for its delivery's customer (every applied
    /// event's delivery is among the plan's changed rows).
    async fn write(
        &self,
        conn: &mut PgConnection,
        batch: &PlannedBatch<'_>,
    ) -> Result<(), sqlx::Error> {
        let customers: HashMap<Uuid, &str> = (batch.plan.deliveries.iter())
            .map(|row| {
                (
                    row.state.delivery_id.as_uuid(),
                    row.state.customer_id.as_str(),
                )
            })
            .collect();
        let mut completed: BTreeMap<&str, i64> = BTreeMap::new();
        for event in &batch.plan.history {
            if event.event_type == DeliveryEvent::COMPLETED
                && let Some(customer) = customers.get(&event.delivery_id)
            {
                *completed.entry(customer).or_default() += 1;
            }
        }
        if completed.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into customer_completions (customer_id, completed)
             select * from unnest($1::text[], $2::bigint[])
             on conflict (customer_id) do update
                 set completed = customer_completions.completed + excluded.completed",
        )
        .bind(completed.keys().copied().collect::<Vec<_>>())
        .bind(completed.values().copied().collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}

static WITH_COMPLETIONS: Catalog = Catalog::new(&[
    catalog::DELIVERIES,
    catalog::HISTORY,
    catalog::COUNTS,
    &CustomerCompletions,
]);

/// Delivery `n` of customer `n % 3`: completed when `n` is even, only created otherwise.
fn lifecycle(n: u128) -> Vec<EventEnvelope> {
    let address = Address::new("Main St 1", 52.5, 13.4).expect("valid address");
    let created = DeliveryEvent::Created(Created {
        order_ref: OrderRef::parse(format!("order-{n}")).expect("valid"),
        customer_id: CustomerId::parse(format!("customer-{}", n % 3)).expect("valid"),
        pickup: address.clone(),
        dropoff: address,
    });
    let changes = if n.is_multiple_of(2) {
        vec![
            created,
            assigned("rider-1"),
            picked_up("rider-1"),
            completed("rider-1"),
        ]
    } else {
        vec![created]
    };
    chained(id(n + 1), changes)
}

/// Messages published for deliveries `0..n`.
fn messages(n: u128) -> i64 {
    (0..n).map(|i| lifecycle(i).len() as i64).sum()
}

struct Setup {
    broker: Broker,
    publisher: Publisher,
    pool: PgPool,
}

impl Setup {
    async fn new(pool: PgPool) -> Setup {
        let (broker, publisher, pool) = on_broker(&pool, TOPIC, 2, 8).await;
        Setup {
            broker,
            publisher,
            pool,
        }
    }

    async fn publish(&self, deliveries: std::ops::Range<u128>) {
        let events: Vec<EventEnvelope> = deliveries.flat_map(lifecycle).collect();
        self.publisher.publish(&events).await;
    }

    async fn live_applied(&self, messages: i64) {
        eventually(Duration::from_secs(60), "the live projector", || async {
            let stored: Option<i64> = sqlx::query_scalar(
                "select sum(next_offset)::bigint from consumer_offsets where consumer_group = $1",
            )
            .bind(LIVE_GROUP)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None);
            (stored.unwrap_or(0) >= messages).then_some(())
        })
        .await;
    }

    async fn completions(&self) -> Vec<(String, i64)> {
        sqlx::query_as("select customer_id, completed from customer_completions order by 1")
            .fetch_all(&self.pool)
            .await
            .expect("customer_completions")
    }
}

/// What `customer_completions` holds after deliveries `0..n`.
fn expected(n: u128) -> Vec<(String, i64)> {
    (0..3)
        .map(|c| {
            let completed = (0..n).filter(|i| i % 3 == c && i.is_multiple_of(2)).count() as i64;
            (format!("customer-{c}"), completed)
        })
        .filter(|(_, completed)| *completed > 0)
        .collect()
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_projection_defined_outside_the_crate_is_rebuilt_and_then_kept_live(pool: PgPool) {
    let setup = Setup::new(pool).await;
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(projector::run_with(
        WITH_COMPLETIONS,
        setup.pool.clone(),
        ProjectorConfig {
            brokers: setup.broker.address.clone(),
            consumer_settings: Default::default(),
            topic: TOPIC.into(),
            group: LIVE_GROUP.into(),
            batch_size: 50,
            lanes: 2,
        },
        Arc::new(Progress::default()),
        shutdown.clone(),
    ));
    setup.publish(0..30).await;
    setup.live_applied(messages(30)).await;

    let config = RebuildConfig {
        brokers: setup.broker.address.clone(),
        consumer_settings: Default::default(),
        topic: TOPIC.into(),
        live_group: LIVE_GROUP.into(),
        projections: vec![&CustomerCompletions],
        keep_old: false,
        from_scratch: false,
        batch_size: 20,
        lanes: 2,
        progress_bar: false,
        switch_timeout: Duration::from_secs(10),
        allow_truncated_history: false,
    };
    let report = rebuild_with(WITH_COMPLETIONS, &setup.pool, &config, &shutdown)
        .await
        .expect("the rebuild runs");
    assert!(report.switched, "{report}");
    assert_eq!(report.projections, ["customer_completions"]);
    assert_eq!(setup.completions().await, expected(30));
    let listed: Vec<String> = sqlx::query_scalar("select name from projections order by name")
        .fetch_all(&setup.pool)
        .await
        .expect("projections");
    assert_eq!(
        listed,
        ["counts", "customer_completions", "deliveries", "history"]
    );

    // Listed now, so the live projector writes it from its next batch on.
    setup.publish(30..40).await;
    setup.live_applied(messages(40)).await;
    assert_eq!(setup.completions().await, expected(40));

    shutdown.cancel();
    live.await.expect("joined").expect("the projector ran");
}

#[sqlx::test(migrator = "migrations::READ")]
async fn a_live_batch_writes_a_listed_projection_of_the_callers_catalog(pool: PgPool) {
    let live = Destination::Live(WITH_COMPLETIONS);
    let subscription = Subscription {
        group: LIVE_GROUP.into(),
        topic: TOPIC.into(),
    };
    let batch = |deliveries: std::ops::Range<u128>, first: i64| -> Vec<_> {
        (deliveries.flat_map(lifecycle).zip(first..))
            .map(|(event, offset)| message(offset, &event))
            .collect()
    };
    // Not listed in `projections` yet (no rebuild built it): not written, though its table is
    // there.
    sqlx::raw_sql(CustomerCompletions.ddl())
        .execute(&pool)
        .await
        .expect("ddl");
    apply_batch_to(&pool, &live, &subscription, &batch(0..3, 0))
        .await
        .expect("applied");
    let completions = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, i64)>(
            "select customer_id, completed from customer_completions order by 1",
        )
        .fetch_all(&pool)
        .await
        .expect("customer_completions")
    };
    assert_eq!(completions(pool.clone()).await, []);

    sqlx::query("insert into projections (name) values ('customer_completions')")
        .execute(&pool)
        .await
        .expect("listed");
    apply_batch_to(&pool, &live, &subscription, &batch(3..9, 100))
        .await
        .expect("applied");
    // Deliveries 4, 6 and 8 completed: customers 1, 0 and 2.
    assert_eq!(
        completions(pool.clone()).await,
        [
            ("customer-0".to_owned(), 1),
            ("customer-1".to_owned(), 1),
            ("customer-2".to_owned(), 1)
        ]
    );
}
