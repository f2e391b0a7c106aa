//! The capacity scenario: N actors checking at an interval, measured over a window after
//! warm-up — checks achieved, staleness (every gap between two checks of one instance),
//! CPU of the service and of PostgreSQL, statements per check from pg_stat_statements — and
//! for our actors the renewal lag (database timestamps: `probe_leases.renewal_lag_seconds`
//! of the renewals inside the window) and the Duroxide turns acked against the fleet's
//! demand. Checks, staleness and lag are also given per third of the window, so a figure
//! that drifts (a backlog growing) shows. A renewal's lag is recorded from its second on: at
//! the default 20-minute renewal they come from 22.5 min after an actor's start, so a short
//! window shows none ("–").
//! The naive Duroxide loop ([`crate::naive`]) runs the same measurement as the baseline.
//!
//! The probes hit one separate PostgreSQL cluster, either directly with a new connection
//! per probe (one server forks ~330 backends a second for 10,000 instances, which saturates
//! a small machine) or, by default, through a PgBouncer in transaction mode with the
//! service's default probe settings (kept connections): a fleet of 10,000 instances is
//! 10,000 servers, each forking its own backends.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::harness::{
    Cpu, CpuWindow, Env, NEW_CONNECTION_PER_PROBE, Quantiles, Service, TURNS, checked_count,
    insert_many, metric, now_epoch, running_current_in,
};
mod figures;
mod table;

use figures::{continued_as_new, decisions_in, gaps, renewal_lags};

use crate::measure::{machine_busy, profile};
use crate::naive;
use crate::pooler::Pooler;

/// What one run (ours or the naive loop) measured over the window.
#[derive(Debug, Serialize)]
pub struct Run {
    pub actors: usize,
    /// Health rows written inside the window.
    pub checks: i64,
    /// actors × window ÷ interval.
    pub ideal: f64,
    /// Gaps between consecutive checks of one instance (seconds), see [`gaps`].
    pub staleness: Quantiles,
    /// Rows whose current actor was running at the end of the window.
    pub actors_running: i64,
    /// Rows whose current actor has continued as new at least once by the end of the window
    /// (a soak must outlast 20 renewals: `--duration 5400s`).
    pub continued_as_new: i64,
    /// Decisions recorded inside the window, by action and trigger (ours only).
    pub decisions: Vec<(String, i64)>,
    pub cpu: Cpu,
    /// CPU time of the service and of PostgreSQL per check written in the window (ms): the
    /// figure to compare across fleet sizes.
    pub cpu_ms_per_check: CpuPerCheck,
    /// Busy time of the whole machine over the window (% of one core; /proc/stat).
    pub machine_pct: Option<f64>,
    /// CPU of the probe target cluster (% of one core).
    pub target_cpu_pct: Option<f64>,
    /// CPU of the pooler in front of it (% of one core), when there is one.
    pub pooler_cpu_pct: Option<f64>,
    /// `None` without pg_stat_statements or without a check.
    pub statements_per_check: Option<f64>,
    #[serde(skip)]
    pub top: Vec<(String, i64, f64)>,
    /// The same figures per third of the window.
    pub thirds: Vec<Third>,
    /// How late renewals ran (s), over the window (ours only; empty for the naive loop).
    pub renewal_lag: Quantiles,
    /// Orchestration turns acked per second over the window, and the fleet's demand
    /// (`toygres_actors_duroxide_turn_demand_per_second`), from the service's metrics.
    pub turns_per_s: Option<f64>,
    pub turn_demand_per_s: Option<f64>,
}

/// One third of the window.
#[derive(Debug, Serialize)]
pub struct Third {
    pub checks: i64,
    pub ideal: f64,
    pub staleness: Quantiles,
    pub renewal_lag: Quantiles,
}

/// CPU time per check written (ms), of the service and of PostgreSQL.
#[derive(Debug, Serialize)]
pub struct CpuPerCheck {
    pub service_ms: Option<f64>,
    pub pg_ms: Option<f64>,
}

impl CpuPerCheck {
    /// From the CPU of a window of `secs` seconds (% of one core) in which `checks` were written.
    fn of(cpu: &Cpu, secs: f64, checks: i64) -> Self {
        let per = |pct: Option<f64>| {
            pct.filter(|_| checks > 0)
                .map(|p| p / 100.0 * secs * 1000.0 / checks as f64)
        };
        Self {
            service_ms: per(cpu.service_pct),
            pg_ms: per(cpu.pg_pct),
        }
    }

    pub(super) fn total(&self) -> Option<f64> {
        Some(self.service_ms? + self.pg_ms?)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// `pooled` (PgBouncer in transaction mode, default probe settings) or `direct` (a new
    /// connection per probe to the one target cluster).
    pub targets: &'static str,
    pub interval_s: f64,
    pub window_s: f64,
    pub ours: Run,
    /// `None` when the baseline was skipped (`--baseline-actors 0`).
    pub naive: Option<Run>,
}

pub async fn run(
    n: usize,
    interval: Duration,
    window: Duration,
    baseline_n: usize,
    flags: &str,
    pooled: bool,
) -> Result<Report> {
    let naive = if baseline_n > 0 {
        let env = Env::start().await?;
        Some(run_naive(&env, baseline_n, interval, window, pooled).await?)
    } else {
        None
    };
    let env = Env::start().await?;
    let ours = run_ours(&env, n, interval, window, flags, pooled).await?;
    let report = Report {
        targets: if pooled { "pooled" } else { "direct" },
        interval_s: interval.as_secs_f64(),
        window_s: window.as_secs_f64(),
        ours,
        naive,
    };
    report.print();
    Ok(report)
}

async fn run_ours(
    env: &Env,
    n: usize,
    interval: Duration,
    window: Duration,
    flags: &str,
    pooled: bool,
) -> Result<Run> {
    let interval_s = format!("{}ms", interval.as_millis());
    let mut all = vec!["--check-interval", interval_s.as_str()];
    if !pooled {
        all.extend(NEW_CONNECTION_PER_PROBE);
    }
    all.extend(flags.split_whitespace());
    let svc = Service::start(&env.url, &all).await?;
    let target_env = Env::start().await?;
    let pooler = start_pooler(&target_env, pooled)?;
    let target = pooler
        .as_ref()
        .map_or_else(|| target_env.target(), Pooler::target);
    insert_fleet(env, "cap", n, &target).await?;
    warm_up(env, n, interval, "toygres_actors_duroxide").await?;
    let probe = Probe {
        env,
        target: &target_env,
        pid: Some(svc.pid()),
        schema: "toygres_actors_duroxide",
        service: Some(&svc),
        pooler: pooler.as_ref(),
    };
    probe.measure(n, interval, window).await
}

/// `n` running instances probing `target`, inserted 1,000 at a time with a pause between
/// (a fleet that grows, not one storm), named `PREFIX<first>-<k>`.
pub(crate) async fn insert_fleet(env: &Env, prefix: &str, n: usize, target: &str) -> Result<()> {
    for start in (0..n).step_by(1000) {
        let k = (n - start).min(1000);
        insert_many(
            &env.pool,
            &format!("{prefix}{start}"),
            k,
            "running",
            Some(target),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Backends the pooler may open on the target cluster.
pub(crate) const POOLER_SERVER_CONNECTIONS: u32 = 20;

/// A transaction-mode PgBouncer in front of the target cluster, if `pooled`.
fn start_pooler(target: &Env, pooled: bool) -> Result<Option<Pooler>> {
    if !pooled {
        return Ok(None);
    }
    Ok(Some(Pooler::start(
        target.pg.port(),
        POOLER_SERVER_CONNECTIONS,
        true,
    )?))
}

async fn run_naive(
    env: &Env,
    n: usize,
    interval: Duration,
    window: Duration,
    pooled: bool,
) -> Result<Run> {
    let worker = naive::Worker::spawn(&env.url)?;
    let target_env = Env::start().await?;
    let pooler = start_pooler(&target_env, pooled)?;
    let target = pooler
        .as_ref()
        .map_or_else(|| target_env.target(), Pooler::target);
    insert_many(&env.pool, "naive", n, "running", Some(&target)).await?;
    naive::start_actors(&env.url, &env.pool, interval).await?;
    warm_up(env, n, interval, naive::SCHEMA).await?;
    let probe = Probe {
        env,
        target: &target_env,
        pid: Some(worker.pid()),
        schema: naive::SCHEMA,
        service: None,
        pooler: pooler.as_ref(),
    };
    probe.measure(n, interval, window).await
}

/// Waits until every row has a first health check and every actor runs (at most 30 min), so
/// the start's transient (every start going through Duroxide at once) is over, then one and a
/// half intervals more so first timers (spread over the first interval) have fired. Our
/// actors' first renewals are spread over a renewal period after their start, at a rate
/// close to the steady one, so they do not hold the window back. The window measures the
/// steady state; `bench burst` measures the start.
async fn warm_up(env: &Env, n: usize, interval: Duration, schema: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while Instant::now() <= deadline
        && ((checked_count(&env.pool).await? as usize) < n
            || (running_current_in(&env.pool, schema).await? as usize) < n)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(interval + interval / 2).await;
    Ok(())
}

/// Where a run's figures are read: the CMS database, the probe target cluster, the process
/// that runs the actors and the Duroxide schema they live in.
struct Probe<'a> {
    env: &'a Env,
    target: &'a Env,
    pid: Option<i32>,
    schema: &'a str,
    /// Our service (its metrics: turns acked, turn demand); `None` for the naive loop.
    service: Option<&'a Service>,
    pooler: Option<&'a Pooler>,
}

const DEMAND: &str = "toygres_actors_duroxide_turn_demand_per_second";

impl Probe<'_> {
    async fn measure(&self, n: usize, interval: Duration, window: Duration) -> Result<Run> {
        let env = self.env;
        let _ = sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&env.pool)
            .await;
        let from = now_epoch();
        let w = CpuWindow::start(env, self.pid);
        let wt = CpuWindow::start(self.target, self.pooler.map(Pooler::pid));
        let machine0 = machine_busy();
        let turns0 = match self.service {
            Some(svc) => metric(&svc.metrics().await, TURNS),
            None => None,
        };
        let t0 = Instant::now();
        // Thirds: every actor renews once per renewal period, and only its last renewal's lag
        // is kept, so the lags are sampled at the end of each third.
        let mut bounds = vec![from];
        let mut lags: Vec<Vec<f64>> = Vec::new();
        for i in 1..=3 {
            tokio::time::sleep_until((t0 + window * i / 3).into()).await;
            let end = now_epoch();
            let start = *bounds.last().unwrap_or(&from);
            lags.push(if self.service.is_some() {
                renewal_lags(env, start, end).await?
            } else {
                Vec::new()
            });
            bounds.push(end);
        }
        let (turns_per_s, turn_demand_per_s) = match self.service {
            Some(svc) => {
                let text = svc.metrics().await;
                let rate = metric(&text, TURNS)
                    .zip(turns0)
                    .map(|(b, a)| (b - a) / t0.elapsed().as_secs_f64());
                (rate, metric(&text, DEMAND))
            }
            None => (None, None),
        };
        let machine_pct = machine_busy()
            .zip(machine0)
            .map(|(b, a)| 100.0 * (b - a) / t0.elapsed().as_secs_f64());
        let measured_s = t0.elapsed().as_secs_f64();
        let cpu = w.finish(env);
        let target_cpu = wt.finish(self.target);
        let to = now_epoch();
        let actors_running = running_current_in(&env.pool, self.schema).await?;
        let continued_as_new = continued_as_new(env, self.schema).await?;
        let decisions = match self.service {
            Some(_) => decisions_in(env, from, to).await?,
            None => Vec::new(),
        };
        let (statements, top) = profile(env).await;
        let (checks, staleness) = gaps(env, from, to, n).await?;
        let mut thirds = Vec::new();
        for (i, lag) in lags.iter().enumerate() {
            let (a, b) = (bounds[i], bounds[i + 1]);
            let (third_checks, third_staleness) = gaps(env, a, b, n).await?;
            thirds.push(Third {
                checks: third_checks,
                ideal: n as f64 * (b - a) / interval.as_secs_f64(),
                staleness: third_staleness,
                renewal_lag: Quantiles::of(lag.clone()),
            });
        }
        let renewal_lag = Quantiles::of(lags.concat());
        Ok(Run {
            actors: n,
            checks,
            ideal: n as f64 * window.as_secs_f64() / interval.as_secs_f64(),
            staleness,
            actors_running,
            continued_as_new,
            decisions,
            cpu_ms_per_check: CpuPerCheck::of(&cpu, measured_s, checks),
            cpu,
            machine_pct,
            target_cpu_pct: target_cpu.pg_pct,
            pooler_cpu_pct: target_cpu.service_pct.filter(|_| self.pooler.is_some()),
            statements_per_check: statements.filter(|_| checks > 0).map(|s| s / checks as f64),
            top,
            thirds,
            renewal_lag,
            turns_per_s,
            turn_demand_per_s,
        })
    }
}
