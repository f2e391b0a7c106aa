//! The writes of checks under a probe lease, batched: checks that finish together go to
//! PostgreSQL in one statement.
//!
//! A replica checking 10,000 instances every 30 s finishes ~333 checks a second. Written one
//! by one, each is a statement, a plpgsql call and a commit of its own — more of PostgreSQL's
//! time than the rows themselves. Here each check hands its write to one task, which takes
//! whatever writes are waiting (up to [`MAX_BATCH`]) and writes them with one statement
//! (`record_checks_seen`, `migrations/0016` and `0017`), at most [`MAX_IN_FLIGHT`] statements at once.
//! A periodic check's write waits up to [`GATHER`] for others to go with it, so a batch grows
//! with the load; an instance's first check ([`Pace::Now`]) goes at once, alone, with the
//! single-check statement (`record_check_seen`), as does a batch of one.
//!
//! Every check keeps its own fences and its own answer ([`Fenced`]). The batch statement never
//! waits for a row lock: a check whose row or lease someone holds, or whose fence fails, is
//! left out of its answer and written alone with `record_check_seen`, which decides it as
//! before (waiting at most its 2 s for a held row, at most [`MAX_ALONE`] at once, holding no
//! batch slot) — a held row delays its own instance only. A batch statement that fails
//! writes each of its checks alone, so each check gets its own error or result.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::cms::{self, CheckCommit, Fenced, HealthRecord, Seen};
use crate::db::DbError;
use crate::sql;

/// The most checks one statement writes.
pub const MAX_BATCH: usize = 500;
/// The most batch statements in flight at once (a batch statement never waits for a row
/// lock, so a slot is never held by someone else's transaction).
pub const MAX_IN_FLIGHT: usize = 4;
/// The most checks written alone at once (a batch of one, a check a batch left out, the
/// checks of a batch that failed): such a write may wait up to its 2 s lock bound for a held
/// row, so it holds none of the batches' slots meanwhile.
pub const MAX_ALONE: usize = 8;
/// How long a batch waits for more writes after its first: at 10,000 instances checked every
/// 30 s, ~17 checks; at 50,000, ~83. A periodic check's write is late by at most this (its
/// schedule does not move); an instance's first check does not wait ([`Pace::Now`]).
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether a write may wait for others to go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At once and alone, with the single-check statement (an instance's first check:
    /// someone is waiting for its first health row; a storm's first checks meet the tables'
    /// statistics before autovacuum has caught up, which the single statement's by-key plan
    /// does not mind — measured, the batch statement's plan does: ~100 ms a batch in a
    /// 10,000-row burst).
    Now,
    /// Within [`GATHER`], with the writes that arrive meanwhile (a periodic check).
    Gathered,
}

/// Where a replica's checks send their writes (cheap to clone; the task ends when the last
/// clone is dropped).
#[derive(Clone)]
pub struct CheckWrites {
    queue: mpsc::UnboundedSender<Pending>,
    pool: PgPool,
    commit: CheckCommit,
}

/// One check's write, owned so it can wait in the queue.
struct Write {
    instance_id: Uuid,
    actor_id: String,
    holder: (String, i64),
    seen: Seen,
    observed: String,
    keep_status: bool,
    postgres_version: Option<String>,
    response_time_ms: Option<i32>,
    error: Option<String>,
}

struct Pending {
    write: Write,
    answer: oneshot::Sender<Result<Fenced, DbError>>,
}

impl CheckWrites {
    /// Start the writer task on the current runtime.
    pub fn start(pool: PgPool, commit: CheckCommit) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(waiting, pool.clone(), commit));
        CheckWrites {
            queue,
            pool,
            commit,
        }
    }

    /// How the writes commit (`--check-commit`).
    pub fn commit(&self) -> CheckCommit {
        self.commit
    }

    /// Write one check, fenced on actor id, holder, epoch, the holder's liveness and the
    /// state and target in `seen` (as [`cms::record_check_seen`]).
    pub async fn write(
        &self,
        rec: &HealthRecord<'_>,
        holder: (&str, i64),
        seen: &Seen,
        pace: Pace,
    ) -> Result<Fenced, DbError> {
        if pace == Pace::Now {
            return cms::record_check_seen(&self.pool, rec, holder, seen, self.commit).await;
        }
        let (answer, answered) = oneshot::channel();
        let write = Write {
            instance_id: rec.instance_id,
            actor_id: rec.actor_id.to_string(),
            holder: (holder.0.to_string(), holder.1),
            seen: seen.clone(),
            observed: rec.observed.to_string(),
            keep_status: rec.keep_status,
            postgres_version: rec.postgres_version.map(str::to_string),
            response_time_ms: rec.response_time_ms,
            error: rec.error.map(str::to_string),
        };
        if self.queue.send(Pending { write, answer }).is_ok()
            && let Ok(result) = answered.await
        {
            return result;
        }
        // The writer task is gone (the runtime is shutting down): write it here.
        cms::record_check_seen(&self.pool, rec, holder, seen, self.commit).await
    }
}

/// The writer task: gather a batch, write it, and again.
async fn run(mut waiting: mpsc::UnboundedReceiver<Pending>, pool: PgPool, commit: CheckCommit) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let alone = Arc::new(Semaphore::new(MAX_ALONE));
    // Writes held back from a batch that already had their instance (or another holder).
    let mut held: VecDeque<Pending> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.pop_front() {
            Some(p) => p,
            None => match waiting.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let batch = gather(first, &mut held, &mut waiting).await;
        let (pool, alone) = (pool.clone(), alone.clone());
        // The slot is given back once the batch statement is done (or when this task ends,
        // however it ends), before any check is written alone.
        tokio::spawn(async move { write_batch(&pool, commit, batch, slot, &alone).await });
    }
}

/// `first` and the writes that arrive behind it within [`GATHER`], up to [`MAX_BATCH`]: one
/// write per instance and one holder per batch (the rest wait for the next).
async fn gather(
    first: Pending,
    held: &mut VecDeque<Pending>,
    waiting: &mut mpsc::UnboundedReceiver<Pending>,
) -> Vec<Pending> {
    let holder = first.write.holder.clone();
    let until = tokio::time::Instant::now() + GATHER;
    let mut ids = HashSet::from([first.write.instance_id]);
    let mut batch = vec![first];
    let mut again = VecDeque::new();
    while batch.len() < MAX_BATCH {
        let next = match held.pop_front() {
            Some(p) => p,
            None => match waiting.try_recv() {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout_at(until, waiting.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => break,
                },
            },
        };
        if next.write.holder == holder && ids.insert(next.write.instance_id) {
            batch.push(next);
        } else {
            again.push_back(next);
        }
    }
    again.append(held);
    *held = again;
    batch
}

/// Write a batch: one statement for all (holding `slot`), then each check it left out alone.
async fn write_batch(
    pool: &PgPool,
    commit: CheckCommit,
    batch: Vec<Pending>,
    slot: OwnedSemaphorePermit,
    alone: &Semaphore,
) {
    if batch.len() == 1 {
        drop(slot);
        return write_alone(pool, commit, batch, alone).await;
    }
    let decided = decide_together(pool, commit, &batch).await;
    drop(slot);
    match decided {
        Ok(mut decided) => {
            let mut left_out = Vec::new();
            for p in batch {
                match decided.remove(&p.write.instance_id) {
                    Some(fenced) => {
                        let _ = p.answer.send(Ok(fenced));
                    }
                    None => left_out.push(p),
                }
            }
            write_alone(pool, commit, left_out, alone).await;
        }
        Err(e) => {
            tracing::debug!(checks = batch.len(), error = %e,
                "a batch of check writes failed: writing each alone");
            write_alone(pool, commit, batch, alone).await;
        }
    }
}

/// Each write with its own `record_check_seen`, at most [`MAX_ALONE`] at once.
async fn write_alone(pool: &PgPool, commit: CheckCommit, writes: Vec<Pending>, alone: &Semaphore) {
    futures::future::join_all(writes.into_iter().map(|p| async move {
        let Ok(_slot) = alone.acquire().await else {
            return;
        };
        let w = &p.write;
        let rec = HealthRecord {
            instance_id: w.instance_id,
            actor_id: &w.actor_id,
            observed: &w.observed,
            keep_status: w.keep_status,
            postgres_version: w.postgres_version.as_deref(),
            response_time_ms: w.response_time_ms,
            error: w.error.as_deref(),
        };
        let holder = (w.holder.0.as_str(), w.holder.1);
        let result = cms::record_check_seen(pool, &rec, holder, &w.seen, commit).await;
        let _ = p.answer.send(result);
    }))
    .await;
}

/// The batch statement: the answer of every check it decided, by instance.
async fn decide_together(
    pool: &PgPool,
    commit: CheckCommit,
    batch: &[Pending],
) -> Result<std::collections::HashMap<Uuid, Fenced>, DbError> {
    let (name, epoch) = batch[0].write.holder.clone();
    let writes = || batch.iter().map(|p| &p.write);
    type Row = (
        Uuid,
        Option<bool>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(sql::RECORD_CHECKS_SEEN)
        .bind(name)
        .bind(epoch)
        .bind(writes().map(|w| w.instance_id).collect::<Vec<_>>())
        .bind(writes().map(|w| w.actor_id.clone()).collect::<Vec<_>>())
        .bind(writes().map(|w| w.seen.state.clone()).collect::<Vec<_>>())
        .bind(writes().map(|w| w.seen.target.clone()).collect::<Vec<_>>())
        .bind(writes().map(|w| w.observed.clone()).collect::<Vec<_>>())
        .bind(writes().map(|w| w.keep_status).collect::<Vec<_>>())
        .bind(
            writes()
                .map(|w| w.postgres_version.clone())
                .collect::<Vec<_>>(),
        )
        .bind(writes().map(|w| w.response_time_ms).collect::<Vec<_>>())
        .bind(writes().map(|w| w.error.clone()).collect::<Vec<_>>())
        .bind(commit == CheckCommit::Async)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, written, previous, state, target, _async)| {
            match cms::fenced_from(written, previous, state, target) {
                // Not decided here after all: written alone.
                Fenced::Refused => None,
                fenced => Some((id, fenced)),
            }
        })
        .collect())
}
