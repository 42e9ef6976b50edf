//! `bench broker`: the broker's own latency, with nothing of ours in the path. One message at a
//! time (acks=all, idempotent, like the relay) to a topic a plain consumer already reads:
//! produce -> acknowledged, and produce -> consumed.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Config {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// A topic with no other traffic.
    #[arg(long, default_value = "bench.probe")]
    topic: String,
    #[arg(long, default_value_t = 500)]
    messages: u32,
    /// The consumer's fetch.wait.max.ms (the live projector uses 50).
    #[arg(long, default_value_t = 10)]
    fetch_wait_ms: u32,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("bench-probe-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        .create()?;
    consumer.subscribe(&[&config.topic])?;
    // Wait for the assignment: the first message is only read once the consumer is placed.
    let warm_up = Instant::now() + Duration::from_secs(30);
    while consumer.assignment()?.count() == 0 {
        if Instant::now() > warm_up {
            bail!("no partition assigned");
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut acked = Histogram::<u64>::new(3)?;
    let mut consumed = Histogram::<u64>::new(3)?;
    for n in 0..config.messages {
        let payload = n.to_string();
        let sent = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&config.topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        acked.record(sent.elapsed().as_micros() as u64)?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .context("the message never arrived")??;
            if message.payload() == Some(payload.as_bytes()) {
                break;
            }
        }
        consumed.record(sent.elapsed().as_micros() as u64)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "broker alone, {} messages one at a time: produce -> acked p50={:.2}ms p99={:.2}ms; \
         produce -> consumed p50={:.2}ms p99={:.2}ms (fetch.wait.max.ms={})",
        config.messages,
        ms(&acked, 0.5),
        ms(&acked, 0.99),
        ms(&consumed, 0.5),
        ms(&consumed, 0.99),
        config.fetch_wait_ms
    );
    Ok(())
}
