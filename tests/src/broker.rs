//! A Kafka-protocol broker for tests: nisshi on a free port with in-memory storage, killed
//! when dropped. Our code only speaks the Kafka protocol; nisshi is the broker these machines
//! can run.

use domain::EventEnvelope;
use rdkafka::ClientConfig;
use rdkafka::message::ToBytes;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use tokio::process::{Child, Command as Process};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A running broker; `address` is its bootstrap server.
pub struct Broker {
    pub address: String,
    process: Child,
}

impl Broker {
    /// A broker with the event topic ([`crate::TOPIC`]).
    pub async fn start(partitions: u32) -> Broker {
        Broker::start_with(crate::TOPIC, partitions).await
    }

    /// Starts a broker with `topic` created with `partitions` partitions.
    pub async fn start_with(topic: &str, partitions: u32) -> Broker {
        Broker::start_on(topic, partitions, &format!("127.0.0.1:{}", free_port())).await
    }

    /// Like `start_with`, listening on `address`: a broker restarted where clients expect it.
    pub async fn start_on(topic: &str, partitions: u32, address: &str) -> Broker {
        let binary = std::env::var("NISSHI_BIN").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            format!("{home}/.cache/delivery-platform/nisshi/bin/nisshi")
        });
        let address = address.to_owned();
        let url = format!("tcp://{address}");
        let process = Process::new(&binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args([
                "--storage-engine",
                "memory://nisshi/",
                "--cluster-id",
                "test",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} (scripts/test.sh installs it): {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let created = Process::new(&binary)
            .args(["topic", "create", topic, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &url])
            .output()
            .await
            .expect("the topic command runs");
        assert!(created.status.success(), "{created:?}");
        Broker { address, process }
    }

    /// A producer to this broker that waits for every replica to take a message.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("acks", "all")
            .create()
            .expect("a producer")
    }

    /// A publisher to `topic` on this broker.
    pub fn publisher(&self, topic: &str) -> Publisher {
        Publisher {
            producer: self.producer(),
            topic: topic.to_owned(),
        }
    }

    /// Kills the broker (SIGKILL, as in a crash) and waits until its port is closed.
    pub async fn kill(mut self) {
        let _ = self.process.kill().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&self.address).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the killed broker still listens"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A producer to one topic, publishing the way the relay does.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    /// Sends one message and waits until the broker has it; returns its partition.
    pub async fn send<K: ToBytes + ?Sized>(&self, key: &K, payload: &[u8]) -> i32 {
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("published")
            .partition
    }

    /// Publishes `events` as the relay does: each envelope as JSON, keyed by its delivery id.
    pub async fn publish(&self, events: &[EventEnvelope]) {
        for event in events {
            self.send(&event.delivery_id.to_string(), &event.to_json())
                .await;
        }
    }

    /// Publishes one envelope as the relay does; returns the partition its key chose.
    pub async fn publish_one(&self, event: &EventEnvelope) -> i32 {
        self.send(&event.delivery_id.to_string(), &event.to_json())
            .await
    }
}
