//! What the projector does when a batch does not commit. Two kinds of failure, told apart by
//! what Postgres says:
//!
//! - *transient* (the database is down, restarting, out of connections, a deadlock): nothing
//!   was committed, so the offsets were not either. Back off (capped), let the pool reconnect,
//!   and apply the same batch again, for as long as it takes. The process never exits for it.
//! - *caused by the batch* (a value Postgres refuses: a NUL in a text, a time out of range, a
//!   broken constraint): retrying the same batch fails the same way, and would stop every
//!   partition in it. The batch is split in two and each half applied in turn, halving again
//!   until the one failing message is alone. That message is recorded as poison (a record that
//!   cannot fail, see `poison`) with its offset; the rest commit as usual. The failing
//!   delivery's later events then wait in `parked_events` behind the version that never
//!   applied, while every other delivery flows on.
//!
//! An error that looks transient while the database answers a plain `select 1` is counted: a
//! batch that fails that way [`SUSPECT_LIMIT`] times is split too, in case it is the cause.

use crate::batch::{self, Applied, Destination, Subscription};
use crate::plan::{Decoded, Incoming, PoisonMessage, key_delivery};
use crate::poison::{self, Record};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Failures of one batch, with the database healthy, before it is split anyway.
pub const SUSPECT_LIMIT: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Whether retrying the same writes can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database or the connection to it: retry the same batch.
    Transient,
    /// The data: the same batch fails again.
    Data,
}

/// Classifies by SQLSTATE class: connection exceptions (08), transaction rollbacks such as
/// deadlocks (40), insufficient resources (53), lock and object state (55), operator
/// intervention such as a shutdown or a terminated backend (57), system and internal errors
/// (58, XX) are transient; every other database error (22 data exception, 23 constraint, 54
/// limits, ...) is the data's. Errors before Postgres answered (IO, TLS, the pool) are
/// transient; encoding and decoding errors are the data's.
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref()),
        sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => Failure::Data,
        _ => Failure::Transient,
    }
}

/// [`classify`] for an error Postgres answered with.
pub fn classify_sqlstate(code: Option<&str>) -> Failure {
    if is_environment_sqlstate(code) {
        return Failure::Transient;
    }
    match code.and_then(|c| c.get(..2)) {
        Some("08" | "40" | "53" | "55" | "57" | "58" | "XX") => Failure::Transient,
        _ => Failure::Data,
    }
}

/// Whether Postgres says the database is not as the projector expects: a missing table or
/// schema (42, 3D, 3F), a permission or role (42501, 28, 0L, 0P), a read-only or aborted
/// transaction state (25), a feature not there (0A). Every batch then fails alike, so this is
/// retried with backoff and never taken for the data's fault: splitting would record every
/// message as poison and hide a broken deployment behind a full dead-letter queue.
fn is_environment_sqlstate(code: Option<&str>) -> bool {
    matches!(
        code.and_then(|c| c.get(..2)),
        Some("42" | "3D" | "3F" | "28" | "0L" | "0P" | "25" | "0A")
    )
}

fn is_environment(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => is_environment_sqlstate(db.code().as_deref()),
        _ => false,
    }
}

/// Applies `messages` until all of them are committed, as projected rows or as poison. `None`
/// when shut down first: what was not committed is read again from the stored offsets.
pub async fn apply_with_retry(
    pool: &PgPool,
    destination: &Destination,
    subscription: &Subscription,
    messages: &[Incoming],
    shutdown: &CancellationToken,
) -> Option<Applied> {
    let mut total = Applied::default();
    // Parts still to apply, the next one last. Halves are applied first half first: a
    // partition's offsets only move forward, so a later part committed before an earlier
    // one would hide the earlier one's messages as already consumed.
    let mut parts: Vec<&[Incoming]> = vec![messages];
    while let Some(part) = parts.pop() {
        match settle(pool, destination, subscription, part, shutdown).await? {
            Ok(applied) => add(&mut total, applied),
            Err(error) => match part {
                [message] => {
                    let applied = record_until_done(
                        pool,
                        destination,
                        subscription,
                        message,
                        &error,
                        shutdown,
                    )
                    .await?;
                    add(&mut total, applied);
                }
                _ => {
                    let (first, second) = part.split_at(part.len() / 2);
                    tracing::warn!(
                        messages = part.len(),
                        %error,
                        "a batch keeps failing: applying it in halves to find the message"
                    );
                    parts.push(second);
                    parts.push(first);
                }
            },
        }
    }
    Some(total)
}

fn add(total: &mut Applied, applied: Applied) {
    total.already_consumed += applied.already_consumed;
    total.applied += applied.applied;
    total.duplicates += applied.duplicates;
    total.parked += applied.parked;
    total.poison += applied.poison;
}

/// Applies one batch, retrying transient failures. `Some(Err)` is a failure the batch itself
/// seems to cause; `None`: shut down.
async fn settle(
    pool: &PgPool,
    destination: &Destination,
    subscription: &Subscription,
    messages: &[Incoming],
    shutdown: &CancellationToken,
) -> Option<Result<Applied, String>> {
    let mut backoff = FIRST_BACKOFF;
    let mut suspect = 0;
    loop {
        let error = match batch::apply_batch_to(pool, destination, subscription, messages).await {
            Ok(applied) => return Some(Ok(applied)),
            Err(error) => error,
        };
        if classify(&error) == Failure::Data {
            return Some(Err(error.to_string()));
        }
        if !is_environment(&error) && answers(pool).await {
            suspect += 1;
            if suspect >= SUSPECT_LIMIT {
                return Some(Err(error.to_string()));
            }
        }
        tracing::warn!(%error, retry_in = ?backoff, "applying a batch failed; offsets not committed");
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether the database answers at all right now.
async fn answers(pool: &PgPool) -> bool {
    let ping = sqlx::query!("select 1 as one").fetch_one(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ping).await,
        Ok(Ok(_))
    )
}

/// Records `message` as poison until that commits (only a transient failure can stop it).
async fn record_until_done(
    pool: &PgPool,
    destination: &Destination,
    subscription: &Subscription,
    message: &Incoming,
    error: &str,
    shutdown: &CancellationToken,
) -> Option<Applied> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match record_failed(pool, destination, subscription, message, error).await {
            Ok(applied) => return Some(applied),
            Err(failure) => {
                tracing::warn!(error = %failure, retry_in = ?backoff, "recording poison failed");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The poison record of a message the read database refused, committed with its offset.
pub fn refused(message: &Incoming, error: &str) -> PoisonMessage {
    let decoded = Decoded::new(message);
    PoisonMessage {
        kafka_partition: message.partition,
        kafka_offset: message.offset,
        message_key: message.key.clone(),
        payload: message.payload.clone(),
        error: format!("the read database refused it: {error}"),
        delivery_id: (decoded.delivery_id().map(|id| id.as_uuid()))
            .or_else(|| key_delivery(message.key.as_deref())),
        version: decoded.version(),
    }
}

/// Records one message the read database refuses as poison, and moves its partition's offset
/// past it, in one transaction. The record is made storable first; if Postgres still refuses
/// it, a bare record (numbers and ASCII only) takes its place.
pub async fn record_failed(
    pool: &PgPool,
    destination: &Destination,
    subscription: &Subscription,
    message: &Incoming,
    error: &str,
) -> Result<Applied, sqlx::Error> {
    let poison = refused(message, error);
    tracing::warn!(
        partition = message.partition, offset = message.offset, error = %poison.error,
        "the read database refuses this message: recorded as poison"
    );
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "select set_config('search_path', $1, true)",
        destination.search_path(),
    )
    .fetch_one(&mut *tx)
    .await?;
    batch::lock_partitions(&mut tx, subscription, &[message.partition]).await?;
    let stored = batch::stored_offsets(&mut tx, subscription, &[message.partition]).await?;
    if stored
        .get(&message.partition)
        .is_some_and(|next| message.offset < *next)
    {
        tx.rollback().await?;
        return Ok(Applied {
            already_consumed: 1,
            ..Applied::default()
        });
    }
    let record = Record::of(&poison);
    sqlx::query!("savepoint poison").execute(&mut *tx).await?;
    if let Err(refused) =
        poison::insert(&mut tx, &subscription.topic, std::slice::from_ref(&record)).await
    {
        if classify(&refused) == Failure::Transient {
            return Err(refused);
        }
        sqlx::query!("rollback to savepoint poison")
            .execute(&mut *tx)
            .await?;
        let bare = record.bare(&refused.to_string());
        poison::insert(&mut tx, &subscription.topic, &[bare]).await?;
    }
    let next = BTreeMap::from([(message.partition, message.offset + 1)]);
    batch::store_offsets(&mut tx, subscription, &next).await?;
    tx.commit().await?;
    Ok(Applied {
        poison: 1,
        ..Applied::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_errors_are_transient_and_encoding_errors_are_the_data() {
        let io = sqlx::Error::Io(std::io::Error::other("connection reset"));
        assert_eq!(classify(&io), Failure::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Transient);
        let encode = sqlx::Error::Encode("bad".into());
        assert_eq!(classify(&encode), Failure::Data);
    }

    #[test]
    fn a_restart_is_transient_and_a_refused_value_is_the_data() {
        // A terminated backend, a server starting up, a deadlock, too many connections.
        for code in ["57P01", "57P03", "40P01", "53300", "08006"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Transient, "{code}");
        }
        // A missing table or schema, a permission: the deployment, not the data.
        for code in ["42P01", "3F000", "42501", "28000", "25006"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Transient, "{code}");
            assert!(is_environment_sqlstate(Some(code)), "{code}");
        }
        assert!(!is_environment_sqlstate(Some("XX000")));
        // A NUL in a text, \u0000 in jsonb, a time out of range, a broken check.
        for code in ["22021", "22P05", "22008", "23514"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Data, "{code}");
        }
    }
}
