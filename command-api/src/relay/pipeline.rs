//! The relay's pipeline: outbox rows are queued to the producer while earlier ones still await
//! the broker's acknowledgement, and marked published in outbox order as acknowledgements come.
//!
//! A relay that waited for a whole round's acknowledgements before reading again kept the rows
//! committed meanwhile waiting a full broker round trip more, and fell behind a broker that
//! acknowledges slowly (the durable one). Here reading and acknowledging overlap, up to
//! `RelayConfig::max_in_flight` messages. Order holds: rows are queued in position order, and
//! the idempotent producer keeps each partition's order through its retries.
//!
//! A row is *in flight* from its queuing until its outcome is settled. Each read skips the rows
//! in flight rather than reading only past the last one queued: a command whose transaction
//! committed late has a position below rows already queued, and must still be read.

use super::{RelayConfig, RelayError, monitor};
use futures::FutureExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// Messages queued to the producer whose outcome is not settled yet, oldest first.
pub struct Pipeline {
    in_flight: VecDeque<InFlight>,
    positions: HashSet<i64>,
    max_in_flight: usize,
}

struct InFlight {
    position: i64,
    queued_at: Instant,
    outcome: Outcome,
}

enum Outcome {
    Pending(DeliveryFuture),
    Settled(Result<(), KafkaError>),
}

/// How far `Pipeline::settle` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The messages at the front already acknowledged or failed; waits for none.
    Ready,
    /// Every message in flight, waiting for each: nothing is left queued behind the caller.
    All,
}

impl Pipeline {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: VecDeque::new(),
            positions: HashSet::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Queues the oldest unpublished rows not in flight, as many as there is room for (at most
    /// a batch); returns how many. A full local queue only ends the fill early, unless nothing
    /// is in flight to make room. On any other refusal the caller settles `All` before deciding
    /// what next.
    pub async fn fill(
        &mut self,
        pool: &PgPool,
        producer: &FutureProducer,
        config: &RelayConfig,
    ) -> Result<usize, RelayError> {
        let room = self
            .max_in_flight
            .saturating_sub(self.in_flight.len())
            .min(config.batch_size.max(1) as usize);
        if room == 0 {
            return Ok(0);
        }
        let skipped: Vec<i64> = self.positions.iter().copied().collect();
        let rows = sqlx::query!(
            "select position, aggregateid, payload, headers from outbox \
             where published_at is null and position <> all($1) \
             order by position limit $2",
            &skipped,
            room as i64,
        )
        .fetch_all(pool)
        .await?;
        let mut queued = 0;
        for row in rows {
            let payload = row.payload.to_string();
            let mut headers = OwnedHeaders::new();
            if let Some(fields) = row.headers.as_object() {
                for (name, value) in fields {
                    headers = headers.insert(Header {
                        key: name,
                        value: value.as_str(),
                    });
                }
            }
            let record = FutureRecord::to(&config.topic)
                .key(&row.aggregateid)
                .payload(&payload)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => {
                    self.positions.insert(row.position);
                    self.in_flight.push_back(InFlight {
                        position: row.position,
                        queued_at: Instant::now(),
                        outcome: Outcome::Pending(delivery),
                    });
                    queued += 1;
                }
                Err((error, _)) => {
                    let queue_full =
                        error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
                    if queue_full && !self.in_flight.is_empty() {
                        break;
                    }
                    return Err(RelayError::Kafka(error));
                }
            }
        }
        Ok(queued)
    }

    /// Waits until the oldest message in flight is acknowledged or failed (at once if none is
    /// in flight). Cancel-safe: an outcome it received is kept for `settle`.
    pub async fn oldest_settled(&mut self) {
        let Some(oldest) = self.in_flight.front_mut() else {
            return;
        };
        if let Outcome::Pending(delivery) = &mut oldest.outcome {
            let outcome = delivery_outcome(delivery.await);
            oldest.outcome = Outcome::Settled(outcome);
        }
    }

    /// Takes the settled messages at the front out of flight and marks the acknowledged ones
    /// published, in one statement; returns how many it marked. After a failure, it awaits
    /// every message still in flight and marks none of them (they are published again, in
    /// order, from the first unpublished row), then returns the failure.
    pub async fn settle(&mut self, pool: &PgPool, how: Settle) -> Result<usize, RelayError> {
        let mut acknowledged = Vec::new();
        let mut oldest_queued_at = None;
        let mut failure = None;
        while let Some(front) = self.in_flight.front_mut() {
            let wait = how == Settle::All || failure.is_some();
            let outcome = match &mut front.outcome {
                Outcome::Settled(outcome) => outcome.clone(),
                Outcome::Pending(delivery) if wait => delivery_outcome(delivery.await),
                Outcome::Pending(delivery) => match delivery.now_or_never() {
                    Some(outcome) => delivery_outcome(outcome),
                    None => break,
                },
            };
            let settled = self.in_flight.pop_front().expect("the front exists");
            self.positions.remove(&settled.position);
            match outcome {
                Ok(()) if failure.is_none() => {
                    acknowledged.push(settled.position);
                    oldest_queued_at.get_or_insert(settled.queued_at);
                }
                Ok(()) => {}
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(queued_at) = oldest_queued_at {
            mark_published(pool, &acknowledged).await?;
            monitor::published(acknowledged.len(), queued_at.elapsed());
        }
        match failure {
            Some(error) => Err(RelayError::Kafka(error)),
            None => Ok(acknowledged.len()),
        }
    }
}

fn delivery_outcome(
    delivery: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), KafkaError> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}

/// A mark lost in a database crash only means the row is published again (a duplicate, which
/// consumers skip by version), so the relay need not wait for the WAL flush.
async fn mark_published(pool: &PgPool, positions: &[i64]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("set local synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "update outbox set published_at = now() where position = any($1)",
        positions,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
