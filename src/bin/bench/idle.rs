//! The idle scenario: what an idle service with N actors costs the machine. Measured at
//! machine level (/proc/stat: every process, kernel included), against the same machine
//! with the benchmark's PostgreSQL running and no service — PostgreSQL is part of the
//! baseline. The actors probe that PostgreSQL for real (kept connections, the default),
//! every timer and duty at its default (30 s checks, 4-minute renewals, heartbeats, leader
//! term, fleet gauges). Then the same with `--duroxide-wait off` (duroxide-pg's own
//! polling) in the same run, as the comparison.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::harness::{
    Baseline, Cpu, CpuWindow, DASH, Env, Service, checked_count, header, insert_many, metric, pct,
    row,
};

/// Busy time of the whole machine so far, in seconds of one core (/proc/stat's first line:
/// user + nice + system + irq + softirq + steal, in USER_HZ = 100 ticks a second).
pub(crate) fn machine_busy() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 8 {
        return None;
    }
    Some((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / 100.0)
}

/// The machine's busy share (% of one core) over `window`.
async fn machine_pct(window: Duration) -> Option<f64> {
    let (b0, t0) = (machine_busy()?, Instant::now());
    tokio::time::sleep(window).await;
    let b1 = machine_busy()?;
    Some(100.0 * (b1 - b0) / t0.elapsed().as_secs_f64())
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub label: String,
    /// Machine busy share with the service running (% of one core).
    pub machine_pct: Option<f64>,
    /// The same, less the baseline (PostgreSQL alone).
    pub added_pct: Option<f64>,
    /// Per process: the service and every PostgreSQL process.
    pub cpu: Cpu,
    /// Fetches from Duroxide's queues per second (the store's counter).
    pub fetches_per_s: Option<f64>,
    /// Statements the bench database ran per second in the window (pg_stat_statements).
    pub statements_per_s: Option<f64>,
    /// The window's most frequent statements: (statement, calls, total ms).
    pub top: Vec<(String, i64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub actors: usize,
    pub window_s: f64,
    /// PostgreSQL alone (no service), % of one core.
    pub baseline_pct: Option<f64>,
    pub waiting: Run,
    pub polling: Run,
}

/// Fetches that reached duroxide-pg (`toygres_actors_duroxide_fetches_total`, results `item`
/// and `empty`; not `skipped`), both queues.
fn fetches(metrics: &str) -> Option<f64> {
    let mut total = None;
    for queue in ["orchestrator", "worker"] {
        for result in ["item", "empty"] {
            let series = format!(
                "toygres_actors_duroxide_fetches_total{{queue=\"{queue}\",result=\"{result}\"}}"
            );
            if let Some(v) = metric(metrics, &series) {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
    }
    total
}

async fn measure(
    env: &Env,
    label: &str,
    wait: &str,
    actors: usize,
    insert: bool,
    (warmup, window): (Duration, Duration),
    baseline: Option<f64>,
) -> Result<Run> {
    let svc = Service::start(&env.url, &["--duroxide-wait", wait]).await?;
    if insert {
        insert_many(&env.pool, "idle", actors, "running", Some(&env.target())).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while checked_count(&env.pool).await? < actors as i64 {
        if Instant::now() > deadline {
            bail!("{label}: not every instance was checked within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past start-up and the hand-over from a previous process, into the steady state.
    tokio::time::sleep(warmup).await;
    let f0 = fetches(&svc.metrics().await);
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&env.pool)
        .await;
    let w = CpuWindow::start(env, Some(svc.pid()));
    let t0 = Instant::now();
    let machine = machine_pct(window).await;
    let cpu = w.finish(env);
    // Idle, what runs how often matters more than what took longest.
    let (statements, top) = crate::capacity::profile_by(env, "calls", 16).await;
    let f1 = fetches(&svc.metrics().await);
    let fetches_per_s = f1
        .zip(f0)
        .map(|(b, a)| (b - a) / t0.elapsed().as_secs_f64());
    let statements_per_s = statements.map(|n| n / t0.elapsed().as_secs_f64());
    Ok(Run {
        label: label.to_string(),
        machine_pct: machine,
        added_pct: machine.zip(baseline).map(|(m, b)| m - b),
        cpu,
        fetches_per_s,
        statements_per_s,
        top,
    })
}

pub async fn run(actors: usize, window: Duration, warmup: Duration) -> Result<Report> {
    let env = Env::start().await?;
    // PostgreSQL alone (after its start-up settles).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_pct = machine_pct(window).await;
    let waiting = measure(
        &env,
        "toygres-actors (fetches wait for wake-ups)",
        "on",
        actors,
        true,
        (warmup, window),
        baseline_pct,
    )
    .await?;
    let polling = measure(
        &env,
        "--duroxide-wait off (duroxide-pg polls every 250 ms)",
        "off",
        actors,
        false,
        // The same actors, their renewals spread already: past the restart is enough.
        (warmup.min(Duration::from_secs(45)), window),
        baseline_pct,
    )
    .await?;
    let report = Report {
        actors,
        window_s: window.as_secs_f64(),
        baseline_pct,
        waiting,
        polling,
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        header(&format!(
            "Idle — {} actors at default settings probing a real PostgreSQL, measured over {} s (machine level, /proc/stat)",
            self.actors, self.window_s
        ));
        row(
            "machine, PostgreSQL alone (the baseline; % of one core)",
            pct(self.baseline_pct, 2),
            Baseline::None,
            DASH,
            None,
        );
        for r in [&self.waiting, &self.polling] {
            let is_ours = std::ptr::eq(r, &self.waiting);
            row(
                &format!("{}: added over the baseline (% of one core)", r.label),
                pct(r.added_pct, 2),
                if is_ours {
                    Baseline::Ratio {
                        text: pct(self.polling.added_pct, 2),
                        value: r.added_pct,
                        base: self.polling.added_pct,
                    }
                } else {
                    Baseline::None
                },
                if is_ours { "≤ 1.5 %" } else { DASH },
                if is_ours {
                    Some(r.added_pct.is_some_and(|p| p <= 1.5))
                } else {
                    None
                },
            );
            row(
                &format!(
                    "{}: service + PostgreSQL processes (% of one core)",
                    r.label
                ),
                format!("{} + {}", pct(r.cpu.service_pct, 2), pct(r.cpu.pg_pct, 2)),
                Baseline::None,
                DASH,
                None,
            );
            row(
                &format!("{}: Duroxide fetches per second", r.label),
                r.fetches_per_s
                    .map(|f| format!("{f:.2}"))
                    .unwrap_or_else(|| DASH.into()),
                Baseline::None,
                DASH,
                None,
            );
            row(
                &format!("{}: statements per second (pg_stat_statements)", r.label),
                r.statements_per_s
                    .map(|f| format!("{f:.1}"))
                    .unwrap_or_else(|| DASH.into()),
                Baseline::None,
                DASH,
                None,
            );
        }
        crate::capacity::print_top(
            &format!("{}, the window", self.waiting.label),
            &self.waiting.top,
        );
    }
}
