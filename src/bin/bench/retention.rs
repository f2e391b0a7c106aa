//! `bench retention`: can the pruner keep `instance_health_checks` bounded? 10,000 instances
//! at 30 s write ~333 rows a second (28.8 M a day); the target is twice that. A backlog of
//! old rows is seeded, then pruned exactly as the service does it
//! ([`toygres_actors::cms::prune_health_history`]: batches of [`config::PRUNE_BATCH`] in a
//! loop, deleting at most [`config::PRUNE_DUTY`] of the time, within [`config::PRUNE_BUDGET`]
//! of every [`config::PRUNE_INTERVAL`]). Baseline: one batch of 10,000 per pruning period
//! (the pruner of the first releases). Beside the pruning, a check's fenced write
//! (`record_check_seen`, as the service makes it under a probe lease) is timed in a loop, and the
//! same loop before the pruning is the baseline: pruning must not hurt the checks.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use toygres_actors::cms::{self, Fenced, HealthRecord};
use toygres_actors::config;

use crate::harness::{
    Baseline, DASH, Env, header, insert_instance, ms, num, percentile, row, sorted,
};

/// Retention of the scenario (the service's default, 7 days).
const RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Fresh rows that must survive the pruning.
const FRESH: i64 = 10_000;
/// The actor and the replica (name, epoch) of the timed check writes.
const ACTOR: &str = "actor-w";
const HOLDER: (&str, i64) = ("bench", 1);
/// Sustained rate the pruner must reach: 2× what 10,000 instances at 30 s write.
const TARGET_PER_S: f64 = 700.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub backlog: usize,
    pub deleted: u64,
    pub seconds: f64,
    /// Rows deleted per second while a pass runs.
    pub rows_per_s: f64,
    /// What that sustains: a pass may run PRUNE_BUDGET of every PRUNE_INTERVAL.
    pub sustained_per_s: f64,
    /// One batch of 10,000 per PRUNE_INTERVAL (the release before).
    pub baseline_per_s: f64,
    /// Rows older than the retention left after the passes (must be 0).
    pub old_left: i64,
    /// Fresh rows left (must be all of them).
    pub fresh_left: i64,
    /// A check's fenced write, p50 / p99 (seconds), before the pruning (the baseline)…
    pub write_before: (Option<f64>, Option<f64>),
    /// …and while it runs.
    pub write_during: (Option<f64>, Option<f64>),
}

/// A check's fenced write, as the service makes it, timed back to back until `stop`
/// (or `n` writes); seconds, sorted.
async fn time_writes(
    pool: &sqlx::PgPool,
    instance: uuid::Uuid,
    n: usize,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Vec<f64>> {
    let rec = HealthRecord {
        instance_id: instance,
        actor_id: ACTOR,
        observed: "healthy",
        keep_status: false,
        postgres_version: Some("16.4"),
        response_time_ms: Some(1),
        error: None,
    };
    let seen: cms::Seen = cms::instance_for_check(pool, instance)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the timed instance is gone"))?
        .into();
    let mut out = Vec::with_capacity(n.min(100_000));
    while out.len() < n && !stop.as_ref().is_some_and(|s| *s.borrow()) {
        let t = Instant::now();
        let fenced =
            cms::record_check_seen(pool, &rec, HOLDER, &seen, cms::CheckCommit::Async).await?;
        if !matches!(fenced, Fenced::Written { .. }) {
            anyhow::bail!("the timed check write was refused by its fence: {fenced:?}");
        }
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(sorted(out))
}

pub async fn run(backlog: usize) -> Result<Report> {
    let env = Env::start().await?;
    // Spread over 100 instances, as a fleet writes them.
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(insert_instance(&env.pool, &format!("retention-{i}"), "stopped", None).await?);
    }
    sqlx::query(
        "INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, checked_at)
         SELECT ($1::uuid[])[1 + g % 100], 'healthy', '16.4', 1,
                now() - interval '8 days' - g * interval '10 milliseconds'
           FROM generate_series(1, $2) g",
    )
    .bind(&ids)
    .bind(backlog as i64)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, checked_at)
         SELECT ($1::uuid[])[1 + g % 100], 'healthy', '16.4', 1, now() - g * interval '10 milliseconds'
           FROM generate_series(1, $2) g",
    )
    .bind(&ids)
    .bind(FRESH)
    .execute(&env.pool)
    .await?;
    sqlx::query("VACUUM ANALYZE toygres_cms.instance_health_checks")
        .execute(&env.pool)
        .await?;
    // One instance checked under a probe lease of a live replica, as the service writes it.
    let checked = insert_instance(&env.pool, "retention-checked", "running", None).await?;
    sqlx::query(toygres_actors::sql::REPLICA_REGISTER)
        .bind(HOLDER.0)
        .bind(HOLDER.1)
        .bind(3600.0)
        .bind("bench")
        .execute(&env.pool)
        .await?;
    sqlx::query(
        "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2 WHERE id = $1",
    )
    .bind(checked)
    .bind(ACTOR)
    .execute(&env.pool)
    .await?;
    toygres_actors::lease::store::for_actor(
        &env.pool,
        checked,
        ACTOR,
        HOLDER,
        Duration::from_secs(3600),
        toygres_actors::lease::store::Claim::Take,
    )
    .await?;
    let before = time_writes(&env.pool, checked, 2_000, None).await?;

    // Passes as the service runs them, each within its budget, until the backlog is gone;
    // the check writes go on beside them.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let during = {
        let pool = env.pool.clone();
        tokio::spawn(async move { time_writes(&pool, checked, usize::MAX, Some(done_rx)).await })
    };
    let t = Instant::now();
    let mut deleted = 0;
    loop {
        // No leader here: unfenced (the service's batches assert its term, one more call).
        let n = toygres_actors::cms::prune_health_history(
            &env.pool,
            RETENTION,
            config::PRUNE_BUDGET,
            None,
        )
        .await?;
        deleted += n;
        if n == 0 || deleted >= backlog as u64 {
            break;
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let during = during.await??;
    let old_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instance_health_checks WHERE checked_at < now() - interval '7 days'",
    )
    .fetch_one(&env.pool)
    .await?;
    // The timed writes are fresh rows too (of the one checked instance): not counted here.
    let fresh_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instance_health_checks WHERE instance_id <> $1",
    )
    .bind(checked)
    .fetch_one(&env.pool)
    .await?;
    let rows_per_s = deleted as f64 / seconds.max(1e-9);
    let share = config::PRUNE_BUDGET.as_secs_f64() / config::PRUNE_INTERVAL.as_secs_f64();
    let report = Report {
        backlog,
        deleted,
        seconds,
        rows_per_s,
        sustained_per_s: rows_per_s * share,
        baseline_per_s: 10_000.0 / config::PRUNE_INTERVAL.as_secs_f64(),
        old_left,
        fresh_left,
        write_before: (percentile(&before, 50.0), percentile(&before, 99.0)),
        write_during: (percentile(&during, 50.0), percentile(&during, 99.0)),
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        header(&format!(
            "Retention — a backlog of {} health rows older than 7 days, pruned as the service does",
            self.backlog
        ));
        row(
            "rows deleted per second while a pass runs",
            format!(
                "{} ({} rows in {:.1} s)",
                num(Some(self.rows_per_s), 0),
                self.deleted,
                self.seconds
            ),
            Baseline::None,
            DASH,
            None,
        );
        row(
            &format!(
                "sustained rate ({} s of every {} s)",
                config::PRUNE_BUDGET.as_secs(),
                config::PRUNE_INTERVAL.as_secs()
            ),
            format!("{} rows/s", num(Some(self.sustained_per_s), 0)),
            Baseline::Ratio {
                text: format!(
                    "{} rows/s (one batch of 10,000 per period)",
                    num(Some(self.baseline_per_s), 1)
                ),
                value: Some(self.sustained_per_s),
                base: Some(self.baseline_per_s),
            },
            "≥ 700 rows/s",
            Some(self.sustained_per_s >= TARGET_PER_S),
        );
        row(
            "rows older than the retention left / fresh rows kept",
            format!("{} / {} of {FRESH}", self.old_left, self.fresh_left),
            Baseline::None,
            "0 / all",
            Some(self.old_left == 0 && self.fresh_left == FRESH),
        );
        let (b50, b99) = self.write_before;
        let (d50, d99) = self.write_during;
        row(
            "a check's fenced write while pruning, p50 / p99",
            format!("{} / {}", ms(d50), ms(d99)),
            Baseline::Ratio {
                text: format!("{} / {} before the pruning", ms(b50), ms(b99)),
                value: d99,
                base: b99,
            },
            "p99 ≤ 2× the baseline's",
            Some(matches!((d99, b99), (Some(d), Some(b)) if d <= 2.0 * b)),
        );
    }
}
