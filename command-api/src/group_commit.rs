//! Group commit: concurrent commands share one statement, so one transaction and one WAL
//! flush, and each still gets its own optimistic-concurrency outcome.
//!
//! A command decides on a connection of its own, then hands its sealed event to a queue. A
//! few writers each take whatever has queued (up to `MAX_GROUP`) and write it with one
//! `store::write`: events whose version was free are stored with their outbox records, and
//! an event whose version another writer took is answered `None`, a conflict for that command
//! alone. While one group commits, the next one gathers, so the groups grow with the load and
//! a lone command waits for no one.

use crate::store::{self, Prepared};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Most events written by one statement: a bound on its size and on a group's latency.
const MAX_GROUP: usize = 256;

/// Commands waiting for a writer. Past it, `append` waits for room (the in-flight bound on
/// commands sheds load long before this fills).
const QUEUE: usize = 4096;

/// The group's result for one event: its global position, or `None` when its version was
/// taken. A failed statement fails every event of its group alike, so they share the error.
pub type Written = Result<Option<i64>, Arc<sqlx::Error>>;

struct Pending {
    event: Prepared,
    reply: oneshot::Sender<Written>,
}

/// A handle on this process's writers. Cloning shares them; they end when the last clone is
/// dropped.
#[derive(Clone)]
pub struct GroupCommit {
    pool: PgPool,
    writers: usize,
    /// Started on the first command, so that building an app needs no runtime.
    queue: Arc<OnceLock<mpsc::Sender<Pending>>>,
}

impl GroupCommit {
    /// `writers` statements in progress at once, each on a pooled connection.
    pub fn new(pool: PgPool, writers: usize) -> Self {
        Self {
            pool,
            writers: writers.max(1),
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Writes `event` with whatever else is queued. Dropping the future before a writer took
    /// the event withdraws it: a command whose request timed out is not written later.
    pub async fn append(&self, event: Prepared) -> Written {
        let (reply, written) = oneshot::channel();
        let queue = self.queue.get_or_init(|| self.start());
        if queue.send(Pending { event, reply }).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        written
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::WorkerCrashed)))
    }

    /// Commands queued for a writer now (monitoring, tests).
    pub fn queued(&self) -> usize {
        self.queue.get().map_or(0, queued)
    }

    fn start(&self) -> mpsc::Sender<Pending> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..self.writers {
            tokio::spawn(write_groups(
                self.pool.clone(),
                receiver.clone(),
                // Weak, so that the writers end when the last handle is dropped.
                sender.downgrade(),
            ));
        }
        sender
    }
}

fn queued(sender: &mpsc::Sender<Pending>) -> usize {
    sender.max_capacity() - sender.capacity()
}

fn waiting(sender: &mpsc::WeakSender<Pending>) -> usize {
    sender.upgrade().as_ref().map_or(0, queued)
}

/// One writer: takes the next group off the queue, writes it, answers each command. The
/// queue's lock is held only while gathering, so the other writers gather while this one
/// writes. Under load the writer keeps its connection from one group to the next (a pooled
/// acquire checks the connection with a round trip of its own); it gives the connection
/// back as soon as the queue is empty, so that an idle writer never starves the commands'
/// own loads of the pool (nor keeps the pool from closing), and after a failure, so that
/// the next group gets a checked one: after a database restart, a new one.
async fn write_groups(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    sender: mpsc::WeakSender<Pending>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut held: Option<PoolConnection<Postgres>> = None;
    loop {
        {
            // Another writer may be waiting on the queue: give the connection back before
            // waiting behind it, unless there is work it will hand on at once.
            if waiting(&sender) == 0 {
                held = None;
            }
            let mut queue = queue.lock().await;
            if queue.is_empty() {
                held = None;
            }
            if queue.recv_many(&mut group, MAX_GROUP).await == 0 {
                return;
            }
        }
        // A command that gave up (its request timed out) is not written behind its back.
        group.retain(|pending| !pending.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let (events, replies): (Vec<Prepared>, Vec<_>) =
            group.drain(..).map(|p| (p.event, p.reply)).unzip();
        crate::metrics::group_written(events.len());
        let written = match held.take() {
            Some(conn) => Ok(conn),
            None => pool.acquire().await,
        };
        let written = match written {
            Ok(mut conn) => {
                let written = store::write(&mut conn, &events).await;
                if written.is_ok() {
                    held = Some(conn);
                }
                written
            }
            Err(error) => Err(error),
        };
        match written {
            Ok(positions) => {
                for (reply, position) in replies.into_iter().zip(positions) {
                    let _ = reply.send(Ok(position));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
