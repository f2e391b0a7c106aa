//! The latency scenario: single inserts on an idle service, each timed from the trigger's
//! commit clock to the first probe (a local TCP recorder accepts it) and to the first health
//! row; the same NOTIFYs to a plain LISTEN connection are the physical floor. Then idle CPU,
//! and the poll-interval trade-off with the eager first check turned off.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::floor::{self, Floor};
use crate::harness::{
    Baseline, Cpu, CpuWindow, DASH, Env, Quantiles, Service, delete_all, header, insert_instance,
    ms, now_epoch, pct, row, running_any,
};
use crate::jobqueue::{self, JobQueue, JobQueueBaseline};

/// What one latency run measured (seconds; `None` = not measured).
#[derive(Debug, Serialize)]
pub struct Report {
    pub inserts: usize,
    /// Trigger commit → a plain LISTEN connection has the notification.
    pub notify: Quantiles,
    /// Commit → first probe started (connection accepted by the recorder).
    pub first_probe: Quantiles,
    /// Commit → the first health row's `checked_at`.
    pub first_row: Quantiles,
    /// `event_to_action_seconds`: (p50, p99) upper bucket bounds, if it has observations.
    pub event_to_action: Option<(f64, f64)>,
    pub idle_cpu: Cpu,
    pub poll_tradeoff: Vec<PollRun>,
    /// toygres' create flow: a `creating` row without a connection string set `running`
    /// with one → its first `healthy` row (the update's trigger clock → `checked_at`).
    pub create_flow: Quantiles,
    /// Commit → the first health row with a real server as the target and a new connection
    /// per probe (`--probe-keep-connections 0`): a job queue's job shape.
    pub server_row: Quantiles,
    /// The same inserts, the same target, with graphile-worker doing the job instead of the
    /// service (its baseline, [`crate::jobqueue`]); `None` when it could not run.
    pub jobqueue_row: Option<Quantiles>,
    /// The same probe, one at a time, by `pgbench -C` and nothing else ([`crate::floor`]).
    pub probe_floor: Option<Floor>,
}

/// One run with the eager first check off and a given Duroxide poll interval.
#[derive(Debug, Serialize)]
pub struct PollRun {
    pub poll_interval: String,
    pub inserts: usize,
    pub first_probe: Quantiles,
    pub idle_cpu: Cpu,
}

/// Measures everything, then prints the table.
/// `job_queue`: whether the job-queue baseline runs beside the single inserts to a real
/// server.
pub async fn run(
    inserts: usize,
    poll_intervals: &[String],
    idle_window: Duration,
    job_queue: JobQueueBaseline,
) -> Result<Report> {
    let env = Env::start().await?;
    let notify = notify_floor(&env, inserts).await?;

    // The service, default settings (eager first check on).
    let svc = measure(&env, inserts, &[], idle_window, "svc").await?;
    let create_flow = create_flow(&env, CREATE_FLOWS).await?;
    let server_inserts = (inserts * 3 / 5).max(10);
    let probe_floor = floor::new_connections(&env, server_inserts, 1);
    let (server_row, jobqueue_row) = against_job_queue(&env, server_inserts, job_queue).await?;

    // Trade-off: without the eager first check, the first probe waits for Duroxide's poll.
    let n = (inserts / 5).max(10);
    let mut poll_tradeoff = Vec::new();
    for p in poll_intervals {
        let flags = [
            "--eager-first-check",
            "false",
            "--poll-interval",
            p.as_str(),
        ];
        let r = measure(&env, n, &flags, idle_window, &format!("poll{p}")).await?;
        poll_tradeoff.push(PollRun {
            poll_interval: p.clone(),
            inserts: n,
            first_probe: r.first_probe,
            idle_cpu: r.idle_cpu,
        });
    }
    let report = Report {
        inserts,
        notify,
        first_probe: svc.first_probe,
        first_row: svc.first_row,
        event_to_action: svc.event_to_action,
        idle_cpu: svc.idle_cpu,
        poll_tradeoff,
        create_flow,
        server_row,
        jobqueue_row,
        probe_floor,
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        header(&format!(
            "Latency — {} single inserts on an idle service (probe target: a local TCP recorder)",
            self.inserts
        ));
        let (b50, b99) = (self.notify.p50, self.notify.p99);
        let vs_floor = |text: Option<f64>, value: Option<f64>, base: Option<f64>| Baseline::Ratio {
            text: ms(text),
            value,
            base,
        };
        row(
            "NOTIFY delivery p50 / p99 (physical floor)",
            format!("{} / {}", ms(b50), ms(b99)),
            Baseline::None,
            DASH,
            None,
        );
        let p50 = self.first_probe.p50;
        let p99 = self.first_probe.p99;
        row(
            "commit → first probe started, p50",
            ms(p50),
            vs_floor(b50, p50, b50),
            "≤ 5 ms",
            p50.map(|v| v <= 0.005),
        );
        // The latency is bought with an idle cost (a poll would make it cheap and slow):
        // both in one row.
        row(
            "commit → first probe started, p99 (at the idle cost of the row below)",
            format!("{} (idle {})", ms(p99), pct(self.idle_cpu.total(), 2)),
            vs_floor(b99, p99, b99),
            "≤ 10 ms",
            p99.map(|v| v <= 0.010),
        );
        row(
            "commit → first health row, p50 / p99",
            format!("{} / {}", ms(self.first_row.p50), ms(self.first_row.p99)),
            vs_floor(b50, self.first_row.p50, b50),
            DASH,
            None,
        );
        row(
            "commit → Duroxide call done (event_to_action_seconds), p50 / p99 from buckets",
            match self.event_to_action {
                Some((p50, p99)) => format!("{} / {}", bucket(p50), bucket(p99)),
                None => DASH.into(),
            },
            Baseline::None,
            "p99 ≤ 10 ms",
            self.event_to_action.map(|(_, p99)| p99 <= 0.010),
        );
        row(
            &format!(
                "toygres' create flow ({} rows `creating` → `running` with a connection string): update → healthy, p50 / p99",
                self.create_flow.samples
            ),
            format!(
                "{} / {}",
                ms(self.create_flow.p50),
                ms(self.create_flow.p99)
            ),
            vs_floor(self.first_row.p99, self.create_flow.p99, self.first_row.p99),
            "≤ 1 s",
            self.create_flow.p99.map(|v| v <= 1.0),
        );
        self.print_against_job_queue();
        let cpu = self.idle_cpu;
        row(
            "idle CPU, service + PostgreSQL (% of one core)",
            format!(
                "{} + {} = {}",
                pct(cpu.service_pct, 2),
                pct(cpu.pg_pct, 2),
                pct(cpu.total(), 2)
            ),
            Baseline::None,
            "≤ 3 %",
            cpu.total().map(|t| t <= 3.0),
        );
        for r in &self.poll_tradeoff {
            row(
                &format!(
                    "no eager check, poll {}: first probe p50 / p99; idle CPU",
                    r.poll_interval
                ),
                format!(
                    "{} / {}; {}",
                    ms(r.first_probe.p50),
                    ms(r.first_probe.p99),
                    pct(r.idle_cpu.total(), 2)
                ),
                vs_floor(b50, r.first_probe.p50, b50),
                "trade-off",
                None,
            );
        }
    }

    /// A real server, a new connection per probe: the service against the job queue, and
    /// the floor (pgbench, nothing else).
    fn print_against_job_queue(&self) {
        let (ours, jq) = (&self.server_row, self.jobqueue_row.as_ref());
        let jq_at = |q: fn(&Quantiles) -> Option<f64>| jq.and_then(q);
        for (label, value, base, most) in [
            ("p50", ours.p50, jq_at(|q| q.p50), 0.8),
            ("p99", ours.p99, jq_at(|q| q.p99), 1.0),
        ] {
            row(
                &format!(
                    "a real server, a new connection per probe ({} inserts): commit → first health row, {label} (baseline: {} doing the same job)",
                    ours.samples,
                    jobqueue::NAME
                ),
                ms(value),
                Baseline::Ratio {
                    text: ms(base),
                    value,
                    base,
                },
                &format!("≤ {most:.1}×"),
                value.zip(base).map(|(v, b)| v <= most * b),
            );
        }
        floor::latency_row(self.probe_floor.as_ref());
    }
}

/// For instance `name`, from a LISTEN on `toygres_instances` and `toygres_health`: the
/// trigger's clock of its change and the `checked_at` of the first health event that `want`
/// accepts (epoch seconds; at most 60 s).
async fn trigger_and_health(
    events: &mut toygres_actors::db::PgSession,
    name: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Result<(f64, f64)> {
    let (mut at, mut checked) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (Some(at), Some(checked)) = (at, checked) {
            return Ok((at, checked));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, events.notifications.recv())
            .await
            .with_context(|| format!("{name}: no change and health event within 60 s"))?
            .context("closed")?;
        let v: serde_json::Value = serde_json::from_str(n.payload())?;
        if v["k8s_name"] != name {
            continue;
        }
        if n.channel() == "toygres_instances" {
            at = v["at"].as_f64();
        } else if want(&v) {
            checked = Some(checked_at(&v)?);
        }
    }
}

/// The `checked_at` of a `toygres_health` notification, in epoch seconds.
fn checked_at(v: &serde_json::Value) -> Result<f64> {
    let checked = v["checked_at"].as_str().unwrap_or("");
    let t = chrono::DateTime::parse_from_rfc3339(checked)
        .with_context(|| format!("toygres_health checked_at {checked:?}"))?;
    Ok(t.timestamp_micros() as f64 / 1e6)
}

/// Rows taken through toygres' create flow, one after the other.
const CREATE_FLOWS: usize = 50;

/// toygres' create flow on the service at default settings: `n` rows inserted `creating`
/// without a connection string (their actors report `unknown`), then each set `running`
/// with one (a real PostgreSQL, the bench's), one at a time: the update's trigger clock →
/// the first `healthy` row's `checked_at`, from our own LISTEN. The baseline of the row is
/// the plain insert's commit → first health row p99, measured just before.
async fn create_flow(env: &Env, n: usize) -> Result<Quantiles> {
    let svc = Service::start(&env.url, &["--check-interval", "30s"]).await?;
    let mut events = env
        .listen("bench-create", &["toygres_health", "toygres_instances"])
        .await?;
    for i in 0..n {
        insert_instance(&env.pool, &format!("create-{i}"), "creating", None).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unknown: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM toygres_cms.instances
              WHERE k8s_name LIKE 'create-%' AND health_status::text = 'unknown'
                AND last_health_check IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await?;
        if unknown as usize >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the creating rows got no `unknown` check in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while events.notifications.try_recv().is_ok() {}
    let target = env.target();
    let mut took = Vec::new();
    for i in 0..n {
        let name = format!("create-{i}");
        sqlx::query(
            "UPDATE toygres_cms.instances SET state = 'running', dns_connection_string = $2
              WHERE k8s_name = $1",
        )
        .bind(&name)
        .bind(&target)
        .execute(&env.pool)
        .await?;
        let healthy = |v: &serde_json::Value| v["new"] == "healthy";
        let (at, healthy_at) = trigger_and_health(&mut events, &name, healthy).await?;
        took.push(healthy_at - at);
    }
    delete_all(&env.pool).await?;
    drop(svc);
    Ok(Quantiles::of(took))
}

/// Trigger NOTIFY → a plain LISTEN connection, over single inserts (rows in state
/// `stopped`, deleted afterwards).
async fn notify_floor(env: &Env, inserts: usize) -> Result<Quantiles> {
    let mut s = env.listen("bench-listen", &["toygres_instances"]).await?;
    let mut base = Vec::new();
    for i in 0..inserts {
        insert_instance(&env.pool, &format!("base-{i}"), "stopped", None).await?;
        let n = tokio::time::timeout(Duration::from_secs(5), s.notifications.recv())
            .await?
            .context("listener closed")?;
        let got = now_epoch();
        let v: serde_json::Value = serde_json::from_str(n.payload())?;
        let at = v["at"]
            .as_f64()
            .context("toygres_instances payload has no `at` clock")?;
        base.push(got - at);
    }
    delete_all(&env.pool).await?;
    Ok(Quantiles::of(base))
}

/// Every row deleted, then until the service has no actor running (at most 60 s).
async fn delete_all_and_wait(env: &Env) -> Result<()> {
    delete_all(&env.pool).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_any(&env.pool, "toygres_actors_duroxide").await? > 0 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Rounds of [`against_job_queue`]: the service and the job queue take turns, so a drift of
/// the machine over the sitting falls on both.
const ROUNDS: usize = 3;
/// Inserts before each round's timed ones (a fresh process's first jobs are slower).
const WARM_UP: usize = 5;

/// `n` single inserts whose target is the bench's PostgreSQL itself, every probe opening a
/// new connection: the commit (the trigger's clock) → the first health row's `checked_at`,
/// one insert at a time, for the service (`--probe-keep-connections 0`) and for the job
/// queue doing the same job, in turns. The job queue's figure is `None` (and its reason
/// printed) when it cannot run here.
async fn against_job_queue(
    env: &Env,
    n: usize,
    job_queue: JobQueueBaseline,
) -> Result<(Quantiles, Option<Quantiles>)> {
    // The same connection string for both, without TLS: node-postgres never asks for it
    // unless told, and the service follows libpq, whose default (`prefer`) asks first.
    let target = format!("{}?sslmode=disable", env.target());
    let mut events = env
        .listen("bench-server", &["toygres_health", "toygres_instances"])
        .await?;
    let mut ours = Vec::new();
    let mut theirs = match job_queue {
        JobQueueBaseline::Run => Some(Vec::new()),
        JobQueueBaseline::Skip => None,
    };
    let per_round = n.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        let svc = Service::start(
            &env.url,
            &["--check-interval", "30s", "--probe-keep-connections", "0"],
        )
        .await?;
        // Let the service settle (its start-up reconcile, first pruning) before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tag = format!("server-{round}");
        let timed = single_inserts(env, &mut events, &target, &tag, per_round).await?;
        ours.extend(timed);
        delete_all_and_wait(env).await?;
        drop(svc);

        let Some(took) = theirs.as_mut() else {
            continue;
        };
        let q = match JobQueue::start(&env.pool, &env.url, jobqueue::CONCURRENCY).await {
            Ok(q) => q,
            Err(e) => {
                eprintln!("no job-queue baseline: {e:#}");
                theirs = None;
                continue;
            }
        };
        let tag = format!("queue-{round}");
        took.extend(single_inserts(env, &mut events, &target, &tag, per_round).await?);
        q.stop(&env.pool).await?;
        delete_all(&env.pool).await?;
    }
    Ok((Quantiles::of(ours), theirs.map(Quantiles::of)))
}

/// `n` timed single inserts (after [`WARM_UP`] untimed ones) of rows `running` with `target`,
/// one at a time: each commit (the trigger's clock) → its first health row's `checked_at`.
async fn single_inserts(
    env: &Env,
    events: &mut toygres_actors::db::PgSession,
    target: &str,
    tag: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    for i in 0..WARM_UP + n {
        let name = format!("{tag}-{i}");
        insert_instance(&env.pool, &name, "running", Some(target)).await?;
        let (at, row_at) = trigger_and_health(events, &name, |_| true).await?;
        if i >= WARM_UP {
            took.push(row_at - at);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(took)
}

/// Accepts TCP connections and reports each accept's time; the probe then fails (not
/// PostgreSQL), which is fine: we measure when it started.
async fn accept_recorder() -> Result<(u16, tokio::sync::mpsc::UnboundedReceiver<f64>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let _ = tx.send(now_epoch());
            drop(sock);
        }
    });
    Ok((port, rx))
}

struct Measured {
    first_probe: Quantiles,
    first_row: Quantiles,
    event_to_action: Option<(f64, f64)>,
    idle_cpu: Cpu,
}

/// One service with `flags`: `inserts` single inserts timed one at a time, then everything
/// deleted and the idle CPU measured over `idle`.
async fn measure(
    env: &Env,
    inserts: usize,
    flags: &[&str],
    idle: Duration,
    tag: &str,
) -> Result<Measured> {
    let mut all = vec!["--check-interval", "30s"];
    all.extend_from_slice(flags);
    let svc = Service::start(&env.url, &all).await?;
    let (port, mut accepts) = accept_recorder().await?;
    let target = format!("postgres://bench:pw@127.0.0.1:{port}/postgres?connect_timeout=2");
    let mut health = env
        .listen("bench-health", &["toygres_health", "toygres_instances"])
        .await?;
    // Let the service settle (its start-up reconcile, first pruning) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut probe = Vec::new();
    let mut first_row = Vec::new();
    for i in 0..inserts {
        let name = format!("{tag}-{i}");
        insert_instance(&env.pool, &name, "running", Some(&target)).await?;
        // The trigger's clock and the health row's, from our own LISTEN.
        let (at, row_at) = trigger_and_health(&mut health, &name, |_| true).await?;
        let accept = tokio::time::timeout(Duration::from_secs(30), accepts.recv())
            .await?
            .context("recorder closed")?;
        probe.push(accept - at);
        first_row.push(row_at - at);
        while accepts.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let event_to_action = histogram_quantiles(
        &svc.metrics().await,
        "toygres_actors_event_to_action_seconds",
    );
    delete_all_and_wait(env).await?;
    // Idle: nothing to do for the service but its timers and polls. The dead rows of the
    // bench's own inserts and deletes are vacuumed first: autovacuum cleaning up after the
    // bench is no part of the service's idle cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::raw_sql("VACUUM").execute(&env.pool).await?;
    let w = CpuWindow::start(env, Some(svc.pid()));
    tokio::time::sleep(idle).await;
    let idle_cpu = w.finish(env);
    drop(svc);
    Ok(Measured {
        first_probe: Quantiles::of(probe),
        first_row: Quantiles::of(first_row),
        event_to_action,
        idle_cpu,
    })
}

/// A histogram quantile's upper bound: "≤ 2.00 ms", or "> the largest bucket" (+Inf).
fn bucket(le: f64) -> String {
    if le.is_finite() {
        format!("≤ {}", ms(Some(le)))
    } else {
        "> largest bucket".into()
    }
}

/// (p50, p99) upper bounds from a Prometheus histogram's cumulative buckets; `None` if it
/// has no observations.
fn histogram_quantiles(text: &str, name: &str) -> Option<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= p * total)
            .map(|(le, _)| *le)
    };
    Some((q(0.5)?, q(0.99)?))
}
