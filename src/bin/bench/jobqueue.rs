//! The job-queue baseline: graphile-worker (Node.js, from npm), a mature LISTEN/NOTIFY job
//! queue on PostgreSQL, doing our job shape on the same server in the same sitting
//! (`jobqueue/worker.js` says what its task does).
//!
//! [`JobQueue::start`] installs the pinned packages once per lock file (`npm ci` into a
//! directory under the system's temp dir), adds the trigger that gives every row inserted
//! `running` a job, and starts the worker; [`JobQueue::stop`] stops it and drops the trigger,
//! so the service never runs beside it. Needs `node` and `npm` (Debian: nodejs, npm).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::PgPool;

use crate::harness::{CpuWindow, Env, delete_all, healthy_count, insert_many, pct, secs};

const PACKAGE: &str = include_str!("jobqueue/package.json");
const LOCK: &str = include_str!("jobqueue/package-lock.json");
const WORKER: &str = include_str!("jobqueue/worker.js");
const PROBE_SQL: &str = include_str!("../../../sql/probe.sql");

/// graphile-worker's version, as pinned in `jobqueue/package.json` (for the tables).
pub const NAME: &str = "graphile-worker 0.17.3";

/// Jobs the worker runs at once unless told otherwise: the probes the service runs at once
/// with a new connection per probe ([`crate::harness::NEW_CONNECTION_PER_PROBE`]).
pub const CONCURRENCY: usize = 64;

/// Whether a scenario runs the job-queue baseline beside the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobQueueBaseline {
    Run,
    /// Not run (its rows read "–"): `bench smoke`, or `--job-queue-concurrency 0`.
    Skip,
}

/// The trigger that queues a job per row inserted `running` (the target in the payload, as
/// a job queue's producer would put it), and the function it calls.
const ENQUEUE: &str = "
CREATE OR REPLACE FUNCTION public.bench_jobqueue_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM graphile_worker.add_job('probe',
        json_build_object('id', NEW.id, 'target',
                          COALESCE(NEW.dns_connection_string, NEW.ip_connection_string)),
        max_attempts := 1);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_jobqueue_enqueue ON toygres_cms.instances;
CREATE TRIGGER bench_jobqueue_enqueue AFTER INSERT ON toygres_cms.instances
    FOR EACH ROW WHEN (NEW.state = 'running') EXECUTE FUNCTION public.bench_jobqueue_enqueue();
";

const DEQUEUE: &str = "
DROP TRIGGER IF EXISTS bench_jobqueue_enqueue ON toygres_cms.instances;
DROP FUNCTION IF EXISTS public.bench_jobqueue_enqueue();
";

/// A running graphile-worker on the bench's database.
pub struct JobQueue {
    child: Child,
    log: PathBuf,
}

/// The installed packages and the worker script (installed if missing).
fn install() -> Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (PACKAGE, LOCK).hash(&mut h);
    let dir = std::env::temp_dir().join(format!("toygres-actors-bench-jobqueue-{:x}", h.finish()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("worker.js"), WORKER)?;
    std::fs::write(dir.join("probe.sql"), PROBE_SQL)?;
    if !dir
        .join("node_modules/graphile-worker/package.json")
        .is_file()
    {
        std::fs::write(dir.join("package.json"), PACKAGE)?;
        std::fs::write(dir.join("package-lock.json"), LOCK)?;
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .context("run npm (Debian: apt-get install nodejs npm)")?;
        if !out.status.success() {
            bail!(
                "npm ci for the job-queue baseline failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(dir)
}

impl JobQueue {
    /// Starts graphile-worker with `concurrency` jobs at once on `url` (the bench's
    /// database, where it keeps its own schema) and the trigger that feeds it; returns once
    /// its workers listen.
    pub async fn start(pool: &PgPool, url: &str, concurrency: usize) -> Result<JobQueue> {
        let dir = tokio::task::spawn_blocking(install).await??;
        let log = dir.join(format!("worker-{}.log", std::process::id()));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("node")
            .arg(dir.join("worker.js"))
            .current_dir(&dir)
            .env("BENCH_JOBQUEUE_URL", url)
            .env("BENCH_JOBQUEUE_CONCURRENCY", concurrency.to_string())
            .env("BENCH_PROBE_SQL", dir.join("probe.sql"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start node (Debian: apt-get install nodejs)")?;
        let mut q = JobQueue { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&q.log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "ready")
        {
            if let Some(status) = q.child.try_wait()? {
                bail!("graphile-worker exited ({status}): {}", q.log_text());
            }
            if Instant::now() > deadline {
                bail!("graphile-worker not ready within 60 s: {}", q.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its schema exists now (the worker migrated it): feed it.
        sqlx::raw_sql(ENQUEUE).execute(pool).await?;
        Ok(q)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Drops the trigger and stops the worker; an error it logged is the run's error.
    pub async fn stop(mut self, pool: &PgPool) -> Result<()> {
        sqlx::raw_sql(DEQUEUE).execute(pool).await?;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = self.log_text();
        if text.lines().any(|l| l.starts_with("error")) {
            bail!("graphile-worker logged errors: {text}");
        }
        Ok(())
    }
}

impl Drop for JobQueue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A burst for the job queue: `n` rows inserted `running` in one transaction, probing the
/// bench's PostgreSQL, with `concurrency` jobs at once → all healthy, in seconds after the
/// commit (polled every 250 ms, as the service's burst is; `None` if not within `patience`);
/// then deleted. `None` also when the job queue cannot run here (the reason on stderr).
pub async fn burst(
    env: &Env,
    n: usize,
    concurrency: usize,
    patience: Duration,
) -> Result<Option<f64>> {
    let q = match JobQueue::start(&env.pool, &env.url, concurrency).await {
        Ok(q) => q,
        Err(e) => {
            eprintln!("no job-queue baseline: {e:#}");
            return Ok(None);
        }
    };
    let w = CpuWindow::start(env, Some(q.pid()));
    let began = Instant::now();
    insert_many(&env.pool, "queued", n, "running", Some(&env.target())).await?;
    let committed = Instant::now();
    let mut healthy_s = None;
    while healthy_s.is_none() && committed.elapsed() < patience {
        if healthy_count(&env.pool).await? as usize >= n {
            healthy_s = Some(committed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = w.finish(env);
    println!(
        "job-queue baseline: commit → all {n} healthy {}; CPU meanwhile (graphile-worker + PostgreSQL) {} of one core (the insert took {:.2} s)",
        secs(healthy_s, 2),
        pct(cpu.total(), 0),
        (committed - began).as_secs_f64()
    );
    q.stop(&env.pool).await?;
    delete_all(&env.pool).await?;
    Ok(healthy_s)
}
