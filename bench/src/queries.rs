//! `bench queries`: the query API's read latency under a fixed request rate (open loop: a
//! request goes out at its scheduled time whether or not earlier ones were answered, and its
//! latency counts from that time, so a stall shows in the figures instead of slowing the
//! load). A mix of `GET /deliveries/{id}` over random deliveries and listing pages from random
//! points of a status's history, over a read model of `--deliveries` rows that
//! `--seed-database-url` writes first (straight into the `deliveries` table: this measures
//! reads, not the projector).

use anyhow::Context;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Config {
    /// Base URL of the query API.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    #[arg(long, default_value = "dev-reader-token")]
    reader_token: String,
    /// Requests per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// How long to send requests.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Deliveries in the read model; ids are `seeded_id(1..=N)`.
    #[arg(long, default_value_t = 1_000_000)]
    deliveries: u64,
    /// The share of requests that are listing pages (the rest are reads by id).
    #[arg(long, default_value_t = 0.2)]
    list_share: f64,
    /// Seed the read database first (a superuser's URL), unless it already holds the rows.
    #[arg(long)]
    seed_database_url: Option<String>,
}

/// When the seeded deliveries were created: delivery n at `SEEDED_FROM` + n seconds.
const SEEDED_FROM: &str = "2026-01-01T00:00:00Z";
const STATUSES: [&str; 5] = [
    "created",
    "rider_assigned",
    "picked_up",
    "completed",
    "cancelled",
];

/// The id of seeded delivery `n`: the same formula as the seeding SQL.
fn seeded_id(n: u64) -> Uuid {
    Uuid::from_u128((0xb000_0000_u128 << 96) | u128::from(n))
}

/// A small, fast, seeded generator (splitmix64): the bench needs spread, not cryptography.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 1..=n
    fn up_to(&mut self, n: u64) -> u64 {
        self.next() % n.max(1) + 1
    }

    fn chance(&mut self, share: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= share
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ById,
    List,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ById => "GET /deliveries/{id}",
            Kind::List => "GET /deliveries (a page of 50)",
        }
    }
}

#[derive(Default)]
struct Figures {
    latency: BTreeMap<Kind, Histogram<u64>>,
    /// Answers other than 200, and requests that got no answer, by reason.
    failures: BTreeMap<String, u64>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(url) = &config.seed_database_url {
        seed(url, config.deliveries).await?;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(10))
        .build()?;
    let figures = Arc::new(Mutex::new(Figures::default()));
    let total = u64::from(config.rate) * config.seconds;
    let every = Duration::from_secs(1) / config.rate.max(1);
    let mut random = Random(0x5eed);
    let mut requests = JoinSet::new();
    let started = tokio::time::Instant::now();
    for i in 0..total {
        let due = started + every * u32::try_from(i).context("too many requests")?;
        tokio::time::sleep_until(due).await;
        let (kind, url) = if random.chance(config.list_share) {
            let status = STATUSES[(random.next() % 5) as usize];
            let after = chrono::DateTime::parse_from_rfc3339(SEEDED_FROM)?
                + chrono::Duration::seconds(random.up_to(config.deliveries) as i64);
            let after = after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            (
                Kind::List,
                format!(
                    "{}/deliveries?status={status}&created_after={after}&limit=50",
                    config.query_url
                ),
            )
        } else {
            let id = seeded_id(random.up_to(config.deliveries));
            (Kind::ById, format!("{}/deliveries/{id}", config.query_url))
        };
        let request = client.get(url).bearer_auth(&config.reader_token);
        let figures = figures.clone();
        let due = due.into_std();
        requests.spawn(async move {
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // The whole body: a read is done when its answer arrived.
                    response
                        .bytes()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
                Err(error) if error.is_timeout() => Err("timed out".to_owned()),
                Err(error) if error.is_connect() => Err("connection failed".to_owned()),
                Err(_) => Err("request failed".to_owned()),
            };
            let took = due.elapsed();
            let mut figures = figures.lock().expect("figures");
            match outcome {
                Ok(()) => {
                    let histogram = figures
                        .latency
                        .entry(kind)
                        .or_insert_with(latency_histogram);
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(micros.max(1));
                }
                Err(reason) => *figures.failures.entry(reason).or_default() += 1,
            }
        });
        // Reap finished requests as we go, so the set holds only those in flight.
        while requests.try_join_next().is_some() {}
    }
    let sent_in = started.elapsed();
    while requests.join_next().await.is_some() {}
    let figures = figures.lock().expect("figures");
    report(&config, total, sent_in, &figures);
    Ok(())
}

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits. Bounded on purpose:
/// `saturating_record` clamps to the histogram's range, and an auto-resizing one starts at
/// 2,048 µs, so every answer slower than 2 ms would count as 2 ms.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn report(config: &Config, total: u64, sent_in: Duration, figures: &Figures) {
    let mut all = latency_histogram();
    for histogram in figures.latency.values() {
        all.add(histogram).expect("same bounds");
    }
    let failed: u64 = figures.failures.values().sum();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "queries over {} deliveries: rate={} requests/s for {} s (sent={total} in {:.1} s, \
         failed={failed})",
        config.deliveries,
        config.rate,
        config.seconds,
        sent_in.as_secs_f64(),
    );
    for (kind, histogram) in &figures.latency {
        println!(
            "  {}: n={} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms",
            kind.label(),
            histogram.len(),
            ms(histogram, 0.5),
            ms(histogram, 0.99),
            ms(histogram, 0.999),
            histogram.max() as f64 / 1000.0,
        );
    }
    if !all.is_empty() {
        println!(
            "  all reads: n={} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms",
            all.len(),
            ms(&all, 0.5),
            ms(&all, 0.99),
            ms(&all, 0.999),
            all.max() as f64 / 1000.0,
        );
    }
    for (reason, count) in &figures.failures {
        println!("  failed: {count} x {reason}");
    }
}

/// Writes `deliveries` rows into the read model's `deliveries` table (and analyzes it),
/// unless it already holds that many seeded rows. Statuses cycle; each delivery has a rider
/// once assigned, timestamps one second apart, so listing pages start anywhere.
async fn seed(url: &str, deliveries: u64) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .context("connecting to the read database to seed it")?;
    let count = i64::try_from(deliveries)?;
    let present = sqlx::query_scalar!(
        r#"select count(*) as "count!" from deliveries
           where delivery_id >= $1 and delivery_id <= $2"#,
        seeded_id(1),
        seeded_id(deliveries),
    )
    .fetch_one(&pool)
    .await?;
    if present >= count {
        println!("seed: the read model already holds {present} seeded deliveries");
        return Ok(());
    }
    let started = Instant::now();
    let from = chrono::DateTime::parse_from_rfc3339(SEEDED_FROM)?.to_utc();
    sqlx::query!(
        "insert into deliveries (delivery_id, status, order_ref, customer_id, pickup, dropoff,
             rider_id, cancel_reason, created_at, assigned_at, picked_up_at, completed_at,
             cancelled_at, version, updated_at)
         select ('b0000000' || lpad(to_hex(n), 24, '0'))::uuid,
                (array['created', 'rider_assigned', 'picked_up', 'completed', 'cancelled'])[n % 5 + 1],
                'order-' || n, 'customer-' || (n % 10000),
                jsonb_build_object('line', n || ' Pickup Street', 'lat', 51.5, 'lon', -0.12),
                jsonb_build_object('line', n || ' Dropoff Road', 'lat', 51.52, 'lon', -0.1),
                case when n % 5 in (1, 2, 3) then 'rider-' || (n % 2000) end,
                case when n % 5 = 4 then 'customer changed their mind' end,
                created,
                case when n % 5 in (1, 2, 3) then created + interval '1 minute' end,
                case when n % 5 in (2, 3) then created + interval '5 minutes' end,
                case when n % 5 = 3 then created + interval '30 minutes' end,
                case when n % 5 = 4 then created + interval '2 minutes' end,
                case n % 5 when 0 then 1 when 4 then 2 else n % 5 + 1 end,
                created + interval '30 minutes'
         from generate_series(1, $1::bigint) as n,
              lateral (select $2::timestamptz + n * interval '1 second' as created) as at
         on conflict (delivery_id) do nothing",
        count,
        from,
    )
    .execute(&pool)
    .await
    .context("seeding the read model")?;
    // The state of a read model that has been live a while: vacuumed and analyzed, as
    // autovacuum leaves it, and its new pages flushed. Without it the first reads of the fresh
    // rows write their hint bits and meet the load's checkpoint, and that is what the run
    // would measure.
    sqlx::query!("vacuum (analyze) deliveries")
        .execute(&pool)
        .await?;
    sqlx::query!("checkpoint").execute(&pool).await?;
    println!(
        "seed: wrote {deliveries} deliveries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_beyond_two_milliseconds_are_recorded_as_they_are() {
        let mut histogram = latency_histogram();
        for micros in [500, 1_500, 50_000, 9_000_000] {
            histogram.saturating_record(micros);
        }
        let near = |value: u64, expected: u64| value.abs_diff(expected) * 100 <= expected;
        assert!(near(histogram.max(), 9_000_000), "{}", histogram.max());
        assert!(near(histogram.value_at_quantile(0.75), 50_000));
    }

    #[test]
    fn seeded_ids_match_the_seeding_sql_formula() {
        // ('b0000000' || lpad(to_hex(n), 24, '0'))::uuid for n = 255
        assert_eq!(
            seeded_id(255).to_string(),
            "b0000000-0000-0000-0000-0000000000ff"
        );
    }

    #[test]
    fn the_random_mix_spreads_over_the_whole_range() {
        let mut random = Random(1);
        let draws: Vec<u64> = (0..10_000).map(|_| random.up_to(10)).collect();
        assert!(draws.iter().all(|d| (1..=10).contains(d)));
        assert!((1..=10).all(|v| draws.contains(&v)));
        let lists = (0..10_000).filter(|_| random.chance(0.2)).count();
        assert!((1_500..2_500).contains(&lists), "{lists}");
    }
}
