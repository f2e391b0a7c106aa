//! The idle scenario: what an idle service with N actors costs the machine. Measured at
//! machine level (/proc/stat: every process, kernel included), against the same machine
//! with the benchmark's PostgreSQL running and no service — PostgreSQL is part of the
//! baseline. The actors probe that PostgreSQL for real (kept connections, the default),
//! every timer and duty at its default (30 s checks, 20-minute renewals, heartbeats, leader
//! term, fleet gauges). Then the same with `--duroxide-wait off` (duroxide-pg's own
//! polling) in the same run, as the comparison.
//!
//! `--targets pooled` (the default, as in `capacity`) puts a PgBouncer in transaction mode
//! in front of that PostgreSQL for the probes, started before the first baseline window: the
//! probes keep their connections to it and each check still runs its query on the real
//! server, but the server holds a few backends for them instead of one per instance (in
//! production each probe's backend lives on the instance's own server, not beside the
//! service). `--targets direct` points every probe at the server itself: 100 kept
//! connections are 100 backends on this machine. The pooler's CPU counts in the machine's
//! figure and is shown apart.
//!
//! On this VM class two agents that are neither ours nor PostgreSQL's grow with every process
//! on the machine: the kernel's DAMON reclaim thread (`kdamond`: it samples pages and walks
//! every mapping of each, so every backend mapping the shared buffers adds to it) and the
//! VM's init agent (pid 1). Their share is reported apart (their own CPU time, from
//! /proc/<pid>/stat), and a control window holds as many idle sessions as the service did
//! (no service, no statements) to show what the backends' mere existence costs them. It is
//! not subtracted from the machine's figure: /proc/stat samples busy time on the tick, the
//! per-process times do not, and the two disagree by more than the target's margin for work
//! that wakes for a fraction of a tick (the control's agents grew by more than the machine
//! did). The baseline is the mean of a window before the services and one after them.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::harness::{
    Baseline, Cpu, CpuWindow, DASH, Env, Service, checked_count, cpu_seconds, header, insert_many,
    metric, pct, row,
};
use crate::measure::{machine_busy, print_top, profile_by};
use crate::pooler::{Pooler, Targets};

/// CPU seconds so far of this VM's own agents, which are not ours and not PostgreSQL's but
/// whose work grows with every process on the machine: the kernel's DAMON threads
/// (`kdamond.*`: this VM's memory reclaim samples pages and walks every mapping of each,
/// so each PostgreSQL backend mapping the shared buffers adds to it) and pid 1 (here the
/// VM's init agent, which also watches processes).
fn vm_agents_busy() -> Option<f64> {
    let mut total = cpu_seconds(1)?;
    for pid in crate::harness::pids() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("kdamond") {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The machine's busy share over `window` and, within it, the VM's agents' (both in % of
/// one core).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Busy {
    pub machine_pct: f64,
    pub agents_pct: Option<f64>,
}

async fn machine_pct(window: Duration) -> Option<Busy> {
    let (b0, a0, t0) = (machine_busy()?, vm_agents_busy(), Instant::now());
    tokio::time::sleep(window).await;
    let (b1, a1) = (machine_busy()?, vm_agents_busy());
    let wall = t0.elapsed().as_secs_f64();
    Some(Busy {
        machine_pct: 100.0 * (b1 - b0) / wall,
        agents_pct: a1.zip(a0).map(|(b, a)| 100.0 * (b - a) / wall),
    })
}

/// Two windows of the machine with PostgreSQL alone, one before the services and one after:
/// their mean is the baseline, so a drift of the machine over the run shows as their gap.
fn mean(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a + b) / 2.0),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub label: String,
    /// Machine busy share with the service running (% of one core).
    pub machine_pct: Option<f64>,
    /// The same, less the baseline (PostgreSQL alone).
    pub added_pct: Option<f64>,
    /// The VM's agents' busy share in the window, and their share of `added_pct` (less
    /// theirs in the baseline).
    pub agents_pct: Option<f64>,
    pub agents_added_pct: Option<f64>,
    /// Per process: the service and every PostgreSQL process.
    pub cpu: Cpu,
    /// The probes' pooler (`--targets pooled`), % of one core.
    pub pooler_pct: Option<f64>,
    /// Fetches from Duroxide's queues per second (the store's counter).
    pub fetches_per_s: Option<f64>,
    /// Statements the bench database ran per second in the window (pg_stat_statements).
    pub statements_per_s: Option<f64>,
    /// The window's most frequent statements: (statement, calls, total ms).
    pub top: Vec<(String, i64, f64)>,
    /// Client backends on the server at the window's end, less the bench's own pool: the
    /// service's (CMS, Duroxide, leader, listener) and the probes' (one per kept connection
    /// with `--targets direct`, the pooler's few with `pooled`).
    pub backends: Option<i64>,
}

/// The control: PostgreSQL with as many idle sessions as the service held, and no service.
#[derive(Debug, Serialize)]
pub struct Control {
    pub sessions: i64,
    pub added_pct: Option<f64>,
    pub agents_added_pct: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub actors: usize,
    /// What the probes connect to (see the module doc).
    pub targets: Targets,
    pub window_s: f64,
    /// PostgreSQL alone (no service), % of one core: the mean of the windows before and after.
    pub baseline_pct: Option<f64>,
    pub baseline_before: Option<Busy>,
    pub baseline_after: Option<Busy>,
    /// The VM's agents' share of the baseline.
    pub baseline_agents_pct: Option<f64>,
    pub waiting: Run,
    pub polling: Run,
    pub control: Control,
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

/// Where the instances' probes connect: the server itself, or the pooler in front of it.
struct Setup<'a> {
    env: &'a Env,
    pooler: Option<&'a Pooler>,
}

impl Setup<'_> {
    fn target(&self) -> String {
        self.pooler
            .map_or_else(|| self.env.target(), Pooler::target)
    }

    fn pooler_seconds(&self) -> Option<f64> {
        self.pooler.and_then(|p| cpu_seconds(p.pid()))
    }
}

async fn measure(
    setup: &Setup<'_>,
    label: &str,
    wait: &str,
    actors: usize,
    insert: bool,
    (warmup, window): (Duration, Duration),
) -> Result<Run> {
    let env = setup.env;
    let svc = Service::start(&env.url, &["--duroxide-wait", wait]).await?;
    if insert {
        insert_many(&env.pool, "idle", actors, "running", Some(&setup.target())).await?;
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
    let p0 = setup.pooler_seconds();
    let t0 = Instant::now();
    let busy = machine_pct(window).await;
    let machine = busy.map(|b| b.machine_pct);
    let cpu = w.finish(env);
    let pooler_pct = setup
        .pooler_seconds()
        .zip(p0)
        .map(|(b, a)| 100.0 * (b - a) / t0.elapsed().as_secs_f64());
    // Idle, what runs how often matters more than what took longest.
    let (statements, top) = profile_by(env, "calls", 16).await;
    // The bench's own pool is not counted.
    let backends: Option<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(&env.pool)
    .await
    .ok()
    .map(|n: i64| n - i64::from(env.pool.size()));
    let f1 = fetches(&svc.metrics().await);
    let fetches_per_s = f1
        .zip(f0)
        .map(|(b, a)| (b - a) / t0.elapsed().as_secs_f64());
    let statements_per_s = statements.map(|n| n / t0.elapsed().as_secs_f64());
    Ok(Run {
        label: label.to_string(),
        machine_pct: machine,
        // Set against the baseline once it is known (see `run`).
        added_pct: None,
        agents_pct: busy.and_then(|b| b.agents_pct),
        agents_added_pct: None,
        cpu,
        pooler_pct,
        fetches_per_s,
        statements_per_s,
        top,
        backends,
    })
}

/// Backends the probes' pooler may open on the server: 3.3 checks a second of well under a
/// millisecond each need one; a start-up's first checks a few.
const POOLER_SERVER_CONNECTIONS: u32 = 4;

/// The machine with `n` idle sessions open on the server (no statement runs on them) and
/// no service: what merely having that many backends costs this VM.
async fn control(env: &Env, n: i64, window: Duration) -> Result<Option<Busy>> {
    let mut sessions = Vec::new();
    for _ in 0..n {
        sessions.push(
            toygres_actors::db::connect_session(
                &env.target(),
                "bench-idle-control",
                Duration::from_secs(5),
            )
            .await?,
        );
    }
    let busy = machine_pct(window).await;
    drop(sessions);
    Ok(busy)
}

pub async fn run(
    actors: usize,
    window: Duration,
    warmup: Duration,
    targets: Targets,
) -> Result<Report> {
    let env = Env::start().await?;
    // The pooler is part of the probe target: running, idle, in the baseline too.
    let pooler = match targets {
        Targets::Pooled => Some(Pooler::start(
            env.pg.port(),
            POOLER_SERVER_CONNECTIONS,
            true,
        )?),
        Targets::Direct => None,
    };
    let setup = Setup {
        env: &env,
        pooler: pooler.as_ref(),
    };
    // PostgreSQL alone (after its start-up settles).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = machine_pct(window).await;
    // The runs are judged against the mean of both baselines, known only at the end.
    let mut waiting = measure(
        &setup,
        "toygres-actors (fetches wait for wake-ups)",
        "on",
        actors,
        true,
        (warmup, window),
    )
    .await?;
    let mut polling = measure(
        &setup,
        "--duroxide-wait off (duroxide-pg polls every 250 ms)",
        "off",
        actors,
        false,
        // The same actors, their renewals spread already: past the restart is enough.
        (warmup.min(Duration::from_secs(45)), window),
    )
    .await?;
    // Every service stopped: PostgreSQL alone again (its backends of the runs are gone).
    let after = machine_pct(window).await;
    let baseline_pct = mean(before.map(|b| b.machine_pct), after.map(|b| b.machine_pct));
    let sessions = waiting.backends.unwrap_or(0);
    let control_busy = if sessions > 0 {
        control(&env, sessions, window).await?
    } else {
        None
    };
    let baseline_agents_pct = mean(
        before.and_then(|b| b.agents_pct),
        after.and_then(|b| b.agents_pct),
    );
    for r in [&mut waiting, &mut polling] {
        r.added_pct = r.machine_pct.zip(baseline_pct).map(|(m, b)| m - b);
        r.agents_added_pct = r.agents_pct.zip(baseline_agents_pct).map(|(a, b)| a - b);
    }
    let control = Control {
        sessions,
        added_pct: control_busy
            .zip(baseline_pct)
            .map(|(c, b)| c.machine_pct - b),
        agents_added_pct: control_busy
            .and_then(|c| c.agents_pct)
            .zip(baseline_agents_pct)
            .map(|(c, b)| c - b),
    };
    let report = Report {
        actors,
        targets,
        control,
        window_s: window.as_secs_f64(),
        baseline_pct,
        baseline_before: before,
        baseline_after: after,
        baseline_agents_pct,
        waiting,
        polling,
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        self.print_baseline();
        // Ours against duroxide-pg's own polling, which has no baseline of its own.
        print_run(&self.waiting, Some(&self.polling));
        print_run(&self.polling, None);
        self.print_control();
        print_top(
            &format!("{}, the window", self.waiting.label),
            &self.waiting.top,
        );
    }

    /// The header, and the machine with PostgreSQL alone.
    fn print_baseline(&self) {
        header(&format!(
            "Idle — {} actors at default settings probing a real PostgreSQL ({}), measured over {} s (machine level, /proc/stat)",
            self.actors,
            match self.targets {
                Targets::Pooled => "through a PgBouncer in transaction mode in front of it",
                Targets::Direct => "directly: a backend per kept connection",
            },
            self.window_s
        ));
        row(
            "machine, PostgreSQL alone (the baseline, mean of a window before and one after the services; % of one core)",
            format!(
                "{} (before {}, after {})",
                pct(self.baseline_pct, 2),
                pct(self.baseline_before.map(|b| b.machine_pct), 2),
                pct(self.baseline_after.map(|b| b.machine_pct), 2)
            ),
            Baseline::None,
            DASH,
            None,
        );
        row(
            "of which the VM's agents (kdamond, pid 1), PostgreSQL alone",
            pct(self.baseline_agents_pct, 2),
            Baseline::None,
            DASH,
            None,
        );
    }

    /// PostgreSQL with as many idle sessions as the service held, and no service.
    fn print_control(&self) {
        row(
            &format!(
                "control, no service: PostgreSQL with {} idle sessions (as many as the service held): added over the baseline (% of one core)",
                self.control.sessions
            ),
            pct(self.control.added_pct, 2),
            Baseline::None,
            DASH,
            None,
        );
        row(
            "control, no service: of which the VM's agents (kdamond, pid 1)",
            pct(self.control.agents_added_pct, 2),
            Baseline::None,
            DASH,
            None,
        );
    }
}

/// One service's rows. With `against` (ours, against the polling run) its added share is
/// compared with that run's and held to the target.
fn print_run(r: &Run, against: Option<&Run>) {
    row(
        &format!("{}: added over the baseline (% of one core)", r.label),
        pct(r.added_pct, 2),
        match against {
            Some(other) => Baseline::Ratio {
                text: pct(other.added_pct, 2),
                value: r.added_pct,
                base: other.added_pct,
            },
            None => Baseline::None,
        },
        if against.is_some() { "≤ 1.5 %" } else { DASH },
        against.map(|_| r.added_pct.is_some_and(|p| p <= 1.5)),
    );
    row(
        &format!("{}: of which the VM's agents (kdamond, pid 1)", r.label),
        pct(r.agents_added_pct, 2),
        Baseline::None,
        DASH,
        None,
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
    if r.pooler_pct.is_some() {
        row(
            &format!("{}: the probes' PgBouncer (% of one core)", r.label),
            pct(r.pooler_pct, 2),
            Baseline::None,
            DASH,
            None,
        );
    }
    row(
        &format!("{}: client backends on the server", r.label),
        r.backends
            .map(|n| n.to_string())
            .unwrap_or_else(|| DASH.into()),
        Baseline::None,
        DASH,
        None,
    );
    print_activity(r);
}

/// Duroxide's fetches and the database's statements per second.
fn print_activity(r: &Run) {
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
