//! The health writer: the fenced write of every check made under a probe lease goes through
//! a few writer tasks per replica. A writer takes the result waiting first and every other one
//! that finished meanwhile (up to [`MAX_BATCH`]): one alone is written on its own
//! (`record_check`, as before), several in one call and one transaction (`record_checks`,
//! `migrations/0008`: each element fenced exactly like `record_check`). An idle service
//! therefore writes each check at once, and a storm of first checks is written hundreds at a
//! time with one commit each instead of one commit per check. A batch that fails (a deadlock
//! with another writer's transaction, say) is written again one result at a time, so that
//! one bad element cannot cost the others their write.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::cms::{self, HealthRecord, Recorded};
use crate::db::DbError;

/// At most this many results in one transaction.
pub const MAX_BATCH: usize = 500;
/// Writer tasks: one writes while the next collects.
const WRITERS: usize = 2;
/// Results waiting for a writer, at most (a check waits for room beyond it).
const QUEUE: usize = 4 * MAX_BATCH;

/// A check result that owns its fields (it crosses to a writer task).
struct Owned {
    instance_id: Uuid,
    actor_id: String,
    holder: Option<(String, i64)>,
    observed: String,
    keep_status: bool,
    postgres_version: Option<String>,
    response_time_ms: Option<i32>,
    error: Option<String>,
}

impl Owned {
    fn of(r: &HealthRecord<'_>) -> Self {
        Owned {
            instance_id: r.instance_id,
            actor_id: r.actor_id.to_string(),
            holder: r.holder.map(|(n, e)| (n.to_string(), e)),
            observed: r.observed.to_string(),
            keep_status: r.keep_status,
            postgres_version: r.postgres_version.map(str::to_string),
            response_time_ms: r.response_time_ms,
            error: r.error.map(str::to_string),
        }
    }

    fn record(&self) -> HealthRecord<'_> {
        HealthRecord {
            instance_id: self.instance_id,
            actor_id: &self.actor_id,
            holder: self.holder.as_ref().map(|(n, e)| (n.as_str(), *e)),
            observed: &self.observed,
            keep_status: self.keep_status,
            postgres_version: self.postgres_version.as_deref(),
            response_time_ms: self.response_time_ms,
            error: self.error.as_deref(),
        }
    }
}

struct Job {
    rec: Owned,
    done: oneshot::Sender<Result<Recorded, DbError>>,
}

/// Hands check results to the writer tasks (cheap to clone).
#[derive(Clone)]
pub struct HealthWriter {
    pool: PgPool,
    tx: mpsc::Sender<Job>,
}

impl HealthWriter {
    /// Start the writer tasks on `pool` (they end when every handle is dropped).
    pub fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(write_loop(pool.clone(), rx.clone()));
        }
        HealthWriter { pool, tx }
    }

    /// Write one check's result (fenced; see [`cms::record_health`]). A record without a
    /// holder (a version-1 actor's activity) is written directly.
    pub async fn write(&self, rec: &HealthRecord<'_>) -> Result<Recorded, DbError> {
        if rec.holder.is_none() {
            return cms::record_health(&self.pool, rec).await;
        }
        let (done, result) = oneshot::channel();
        let job = Job {
            rec: Owned::of(rec),
            done,
        };
        if self.tx.send(job).await.is_err() {
            return cms::record_health(&self.pool, rec).await;
        }
        match result.await {
            Ok(r) => r,
            // The writer went away with our job (runtime shutting down): write it here.
            Err(_) => cms::record_health(&self.pool, rec).await,
        }
    }
}

async fn write_loop(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        write_batch(&pool, jobs).await;
    }
}

async fn write_batch(pool: &PgPool, jobs: Vec<Job>) {
    if jobs.len() > 1 {
        let recs: Vec<HealthRecord<'_>> = jobs.iter().map(|j| j.rec.record()).collect();
        match cms::record_checks(pool, &recs).await {
            Ok(results) if results.len() == jobs.len() => {
                crate::metrics::health_writes("batch", jobs.len());
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.done.send(Ok(r));
                }
                return;
            }
            Ok(_) => tracing::warn!(
                checks = recs.len(),
                "batched health write returned a wrong count; writing one by one"
            ),
            Err(e) => tracing::warn!(
                checks = recs.len(),
                error = %e,
                "batched health write failed; writing one by one"
            ),
        }
    }
    for job in jobs {
        let r = cms::record_health(pool, &job.rec.record()).await;
        crate::metrics::health_writes("single", 1);
        let _ = job.done.send(r);
    }
}
