//! Benchmarks against the limits, one command per figure:
//!
//!     cargo build --release --bins
//!     target/release/bench latency    # commit → first probe / first health row; idle CPU; poll trade-off
//!     target/release/bench burst      # 10,000 inserts in one transaction → all running and checked; then deleted
//!     target/release/bench capacity   # N actors at 30 s: staleness p50/p99, CPU; the naive Duroxide loop as baseline
//!     target/release/bench recovery   # listener cut for 60 s while 1,000 rows change; stale → healed
//!     target/release/bench smoke      # every scenario at a tiny size (the test suite runs this)
//!
//! Every scenario starts its own private PostgreSQL and the real `toygres-actors` binary (a
//! separate process, found next to this one), and prints Markdown table rows: figure, value,
//! the baseline measured in the same run, the ratio, and the target. Many instances share
//! one probe target (the benchmark's own PostgreSQL, or a local TCP recorder) — the rows say
//! which. CPU is read from /proc (utime+stime) for the service and for every PostgreSQL
//! process of the cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sqlx::PgPool;
use toygres_actors::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "toygres-actors benchmarks (see the README's benchmark table)"
)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Commit → first probe started / first health row, over single inserts; idle CPU.
    Latency {
        #[arg(long, default_value_t = 500)]
        inserts: usize,
        /// Duroxide poll intervals for the trade-off rows (eager first check off).
        #[arg(long, value_delimiter = ',', default_value = "10ms,50ms,100ms")]
        poll_intervals: Vec<String>,
        #[arg(long, default_value = "30s")]
        idle_window: String,
    },
    /// N instances inserted in one transaction → all actors running and checked; then deleted.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
    /// N actors at an interval for a duration: staleness, CPU; naive loop as the baseline.
    Capacity {
        #[arg(long, default_value_t = 5000)]
        actors: usize,
        #[arg(long, default_value = "30s")]
        interval: String,
        #[arg(long, default_value = "300s")]
        duration: String,
        /// Actors for the naive-loop baseline (0 = skip it).
        #[arg(long, default_value_t = 1000)]
        baseline_actors: usize,
        /// Extra flags for the service, e.g. "--duroxide-async-commit".
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        service_flags: String,
    },
    /// Listener cut off while rows change; stale actor → healed.
    Recovery {
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        #[arg(long, default_value = "60s")]
        outage: String,
    },
    /// All scenarios at a tiny size (keeps the harness from rotting).
    Smoke,
    /// (internal) run the naive Duroxide loop's workers against DATABASE_URL until killed.
    #[command(hide = true)]
    NaiveWorker { url: String, schema: String },
}

fn dur(s: &str) -> Result<Duration> {
    toygres_actors::settings::parse_duration(s).map_err(|e| anyhow::anyhow!(e))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.scenario {
            Scenario::Latency {
                inserts,
                poll_intervals,
                idle_window,
            } => latency(inserts, &poll_intervals, dur(&idle_window)?).await,
            Scenario::Burst { instances } => burst(instances).await,
            Scenario::Capacity {
                actors,
                interval,
                duration,
                baseline_actors,
                service_flags,
            } => {
                capacity(
                    actors,
                    dur(&interval)?,
                    dur(&duration)?,
                    baseline_actors,
                    &service_flags,
                )
                .await
            }
            Scenario::Recovery { rows, outage } => recovery(rows, dur(&outage)?).await,
            Scenario::Smoke => {
                latency(20, &["50ms".into()], Duration::from_secs(2)).await?;
                burst(200).await?;
                capacity(40, Duration::from_secs(2), Duration::from_secs(8), 20, "").await?;
                recovery(40, Duration::from_secs(3)).await
            }
            Scenario::NaiveWorker { url, schema } => naive::worker(&url, &schema).await,
        }
    })
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A private PostgreSQL with one migrated database.
struct Env {
    pg: EmbeddedPostgres,
    url: String,
    pool: PgPool,
}

impl Env {
    async fn start() -> Result<Env> {
        let mut opts = EmbeddedOptions::ephemeral_temp("bench");
        // Durable commits, as in production; pg_stat_statements for the profile.
        opts.fast_unsafe = false;
        opts.max_connections = 600;
        opts.settings = vec![
            (
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ),
            ("shared_buffers".into(), "512MB".into()),
        ];
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
        toygres_actors::db::ensure_database(&pg.url("postgres"), "bench").await?;
        let url = pg.url("bench");
        let pool = toygres_actors::db::cms_pool(&url, 8).await?;
        toygres_actors::db::migrate(&pool).await?;
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await;
        Ok(Env { pg, url, pool })
    }

    /// A probe target on this server (many instances share it).
    fn target(&self) -> String {
        format!(
            "postgres://toygres:bench-pw@127.0.0.1:{}/postgres",
            self.pg.port()
        )
    }

    /// CPU seconds of every process of the cluster.
    fn pg_cpu(&self) -> f64 {
        let pid_file =
            std::fs::read_to_string(self.pg.data_dir().join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return 0.0;
        };
        let mut total = cpu_seconds(postmaster);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
                    && parent_of(pid) == Some(postmaster)
                {
                    total += cpu_seconds(pid);
                }
            }
        }
        total
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: split after the closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// utime + stime of a process, in seconds (exited children are not counted).
fn cpu_seconds(pid: i32) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// PostgreSQL CPU including backends that exited meanwhile is not visible in /proc; we
/// sample it often enough by measuring over windows where backends live long (pools).
struct CpuWindow {
    service_pid: Option<i32>,
    service0: f64,
    pg0: f64,
    t0: Instant,
}

impl CpuWindow {
    fn start(env: &Env, service_pid: Option<i32>) -> Self {
        CpuWindow {
            service_pid,
            service0: service_pid.map(cpu_seconds).unwrap_or(0.0),
            pg0: env.pg_cpu(),
            t0: Instant::now(),
        }
    }

    /// (service % of a core, PostgreSQL % of a core) since start.
    fn finish(&self, env: &Env) -> (f64, f64) {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let svc = self.service_pid.map(cpu_seconds).unwrap_or(0.0) - self.service0;
        let pg = env.pg_cpu() - self.pg0;
        (100.0 * svc / wall, 100.0 * pg.max(0.0) / wall)
    }
}

/// The real service binary, next to this one.
struct Service {
    child: Child,
    http: String,
}

fn service_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("toygres-actors");
    if !bin.exists() {
        bail!(
            "{} not found: build both binaries first (cargo build --release --bins)",
            bin.display()
        );
    }
    Ok(bin)
}

impl Service {
    async fn start(url: &str, flags: &[&str]) -> Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = std::env::temp_dir().join(format!("toygres-actors-bench-{port}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(service_binary()?)
            .arg("run")
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .args(flags)
            .env("DATABASE_URL", url)
            .env("TOYGRES_ACTORS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut svc = Service {
            child,
            http: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest_get(&format!("{}/readyz", svc.http)).await
                && r.contains("\"leader\":true")
            {
                return Ok(svc);
            }
            if let Ok(Some(status)) = svc.child.try_wait() {
                bail!(
                    "service exited ({status}): {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "service not ready within 60 s (log: {})",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    async fn metrics(&self) -> String {
        reqwest_get(&format!("{}/metrics", self.http))
            .await
            .unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP GET over a TCP socket (the bench needs no HTTP client crate).
async fn reqwest_get(url: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text))
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!("| figure | value | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
}

fn row(
    figure: &str,
    value: String,
    baseline: Option<(String, f64, f64)>,
    target: &str,
    met: Option<bool>,
) {
    let (b, ratio) = match baseline {
        Some((text, v, base)) if base > 0.0 => (text, format!("{:.1}×", v / base)),
        Some((text, _, _)) => (text, "–".into()),
        None => ("–".into(), "–".into()),
    };
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    };
    println!("| {figure} | {value} | {b} | {ratio} | {target} | {met} |");
}

fn ms(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1000.0)
    } else {
        format!("{:.1} ms", s * 1000.0)
    }
}

async fn insert_instance(
    pool: &PgPool,
    name: &str,
    state: &str,
    target: Option<&str>,
) -> Result<uuid::Uuid> {
    Ok(sqlx::query_scalar(
        "INSERT INTO toygres_cms.instances (user_name, k8s_name, postgres_version, storage_size_gb, state,
                                            create_orchestration_id, dns_connection_string)
         VALUES ('bench', $1, '16', 1, $2::text::toygres_cms.instance_state, 'bench', $3) RETURNING id",
    )
    .bind(name)
    .bind(state)
    .bind(target)
    .fetch_one(pool)
    .await?)
}

/// Actors Duroxide runs right now (all incarnations) and rows whose current actor runs.
async fn running_current(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instances c
           JOIN toygres_duroxide.instances i ON i.instance_id = c.instance_actor_orchestration_id
           JOIN toygres_duroxide.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status = 'Running'",
    )
    .fetch_one(pool)
    .await?)
}

async fn running_any(pool: &PgPool, schema: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.instances i
           JOIN {schema}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status = 'Running'"
    ))
    .fetch_one(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------

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

async fn latency(inserts: usize, poll_intervals: &[String], idle_window: Duration) -> Result<()> {
    let env = Env::start().await?;
    header(&format!(
        "Latency — {inserts} single inserts on an idle service (probe target: a local TCP recorder)"
    ));

    // Baseline: trigger NOTIFY → a plain LISTEN connection.
    let mut base = Vec::new();
    {
        let mut s =
            toygres_actors::db::connect_session(&env.url, "bench-listen", Duration::from_secs(5))
                .await?;
        s.client.batch_execute("LISTEN toygres_instances").await?;
        for i in 0..inserts {
            insert_instance(&env.pool, &format!("base-{i}"), "stopped", None).await?;
            let n = tokio::time::timeout(Duration::from_secs(5), s.notifications.recv())
                .await?
                .context("listener closed")?;
            let got = now_epoch();
            let v: serde_json::Value = serde_json::from_str(n.payload())?;
            base.push(got - v["at"].as_f64().unwrap_or(got));
        }
        sqlx::query("DELETE FROM toygres_cms.instances")
            .execute(&env.pool)
            .await?;
    }
    let base = sorted(base);

    // The service, default settings (eager first check on).
    let (probe, first_row, e2a, cpu) =
        measure_latency(&env, inserts, &[], idle_window, "svc").await?;
    let probe = sorted(probe);
    let first_row = sorted(first_row);
    let b50 = percentile(&base, 50.0);
    let b99 = percentile(&base, 99.0);
    row(
        "NOTIFY delivery p50 / p99 (physical floor)",
        format!("{} / {}", ms(b50), ms(b99)),
        None,
        "–",
        None,
    );
    row(
        "commit → first probe started, p50",
        ms(percentile(&probe, 50.0)),
        Some((ms(b50), percentile(&probe, 50.0), b50)),
        "≤ 5 ms",
        Some(percentile(&probe, 50.0) <= 0.005),
    );
    row(
        "commit → first probe started, p99",
        ms(percentile(&probe, 99.0)),
        Some((ms(b99), percentile(&probe, 99.0), b99)),
        "≤ 20 ms",
        Some(percentile(&probe, 99.0) <= 0.020),
    );
    row(
        "commit → first health row, p50 / p99",
        format!(
            "{} / {}",
            ms(percentile(&first_row, 50.0)),
            ms(percentile(&first_row, 99.0))
        ),
        Some((ms(b50), percentile(&first_row, 50.0), b50)),
        "–",
        None,
    );
    if let Some((p50, p99)) = e2a {
        row(
            "commit → Duroxide call done (event_to_action_seconds), p50 / p99 from buckets",
            format!("≤ {} / ≤ {}", ms(p50), ms(p99)),
            None,
            "p99 ≤ 10 ms",
            Some(p99 <= 0.010),
        );
    }
    row(
        "idle CPU, service + PostgreSQL (% of one core)",
        format!("{:.2} % + {:.2} % = {:.2} %", cpu.0, cpu.1, cpu.0 + cpu.1),
        None,
        "≤ 3 %",
        Some(cpu.0 + cpu.1 <= 3.0),
    );

    // Trade-off: without the eager first check, the first probe waits for Duroxide's poll.
    let n = (inserts / 5).max(10);
    for p in poll_intervals {
        let flags = [
            "--eager-first-check",
            "false",
            "--poll-interval",
            p.as_str(),
        ];
        let (probe, _, _, cpu) =
            measure_latency(&env, n, &flags, idle_window, &format!("poll{p}")).await?;
        let probe = sorted(probe);
        row(
            &format!("no eager check, poll {p}: first probe p50 / p99; idle CPU"),
            format!(
                "{} / {}; {:.2} %",
                ms(percentile(&probe, 50.0)),
                ms(percentile(&probe, 99.0)),
                cpu.0 + cpu.1
            ),
            Some((ms(b50), percentile(&probe, 50.0), b50)),
            "trade-off",
            None,
        );
    }
    Ok(())
}

type LatencyRun = (Vec<f64>, Vec<f64>, Option<(f64, f64)>, (f64, f64));

async fn measure_latency(
    env: &Env,
    inserts: usize,
    flags: &[&str],
    idle: Duration,
    tag: &str,
) -> Result<LatencyRun> {
    let mut all = vec!["--check-interval", "30s"];
    all.extend_from_slice(flags);
    let svc = Service::start(&env.url, &all).await?;
    let (port, mut accepts) = accept_recorder().await?;
    let target = format!("postgres://bench:pw@127.0.0.1:{port}/postgres?connect_timeout=2");
    let mut health =
        toygres_actors::db::connect_session(&env.url, "bench-health", Duration::from_secs(5))
            .await?;
    health
        .client
        .batch_execute("LISTEN toygres_health; LISTEN toygres_instances")
        .await?;
    // Let the service settle (its start-up reconcile, first pruning) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut probe = Vec::new();
    let mut first_row = Vec::new();
    for i in 0..inserts {
        let name = format!("{tag}-{i}");
        insert_instance(&env.pool, &name, "running", Some(&target)).await?;
        // The trigger's clock, from our own LISTEN.
        let mut at = None;
        let mut row_at = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while at.is_none() || row_at.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, health.notifications.recv())
                .await
                .context("no notification within 30 s")?
                .context("closed")?;
            let v: serde_json::Value = serde_json::from_str(n.payload())?;
            if v["k8s_name"] != name.as_str() {
                continue;
            }
            if n.channel() == "toygres_instances" {
                at = v["at"].as_f64();
            } else {
                let checked =
                    chrono::DateTime::parse_from_rfc3339(v["checked_at"].as_str().unwrap_or(""))
                        .map(|t| t.timestamp_micros() as f64 / 1e6)
                        .ok();
                row_at = checked.or(Some(now_epoch()));
            }
        }
        let accept = tokio::time::timeout(Duration::from_secs(30), accepts.recv())
            .await?
            .context("recorder closed")?;
        let at = at.unwrap_or(accept);
        probe.push(accept - at);
        first_row.push(row_at.unwrap_or(accept) - at);
        while accepts.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e2a = histogram_quantiles(
        &svc.metrics().await,
        "toygres_actors_event_to_action_seconds",
    );
    sqlx::query("DELETE FROM toygres_cms.instances")
        .execute(&env.pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_any(&env.pool, "toygres_duroxide").await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: nothing to do for the service but its timers and polls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = CpuWindow::start(env, Some(svc.pid()));
    tokio::time::sleep(idle).await;
    let cpu = w.finish(env);
    drop(svc);
    Ok((probe, first_row, e2a, cpu))
}

/// (p50, p99) upper bounds from a Prometheus histogram's cumulative buckets.
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

// ---------------------------------------------------------------------------------------
// Burst
// ---------------------------------------------------------------------------------------

async fn burst(n: usize) -> Result<()> {
    let env = Env::start().await?;
    header(&format!(
        "Burst — {n} instances in one transaction (all probe the benchmark's own PostgreSQL)"
    ));
    // Baseline: the same transaction's notifications to a plain LISTEN connection.
    let base_all = {
        let mut s =
            toygres_actors::db::connect_session(&env.url, "bench-listen", Duration::from_secs(5))
                .await?;
        s.client.batch_execute("LISTEN toygres_instances").await?;
        let t0 = Instant::now();
        insert_many(&env.pool, "base", n, "stopped", None).await?;
        let commit = t0.elapsed();
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(60), s.notifications.recv())
                .await?
                .context("closed")?;
        }
        let all = t0.elapsed() - commit;
        sqlx::query("DELETE FROM toygres_cms.instances")
            .execute(&env.pool)
            .await?;
        all.as_secs_f64()
    };

    let svc = Service::start(
        &env.url,
        &[
            "--check-interval",
            "30s",
            "--probe-keep-connections",
            "0",
            "--probe-concurrency",
            "64",
        ],
    )
    .await?;
    let w = CpuWindow::start(&env, Some(svc.pid()));
    let target = env.target();
    let t0 = Instant::now();
    insert_many(&env.pool, "burst", n, "running", Some(&target)).await?;
    let committed = t0.elapsed();
    let mut running_at = None;
    let mut checked_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (running_at.is_none() || checked_at.is_none()) && Instant::now() < deadline {
        if running_at.is_none() && running_current(&env.pool).await? as usize >= n {
            running_at = Some(t0.elapsed() - committed);
        }
        if checked_at.is_none() {
            let checked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NOT NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            if checked as usize >= n {
                checked_at = Some(t0.elapsed() - committed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_in = w.finish(&env);
    let w = CpuWindow::start(&env, Some(svc.pid()));
    let t1 = Instant::now();
    sqlx::query("DELETE FROM toygres_cms.instances")
        .execute(&env.pool)
        .await?;
    let deleted = t1.elapsed();
    let mut gone_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while gone_at.is_none() && Instant::now() < deadline {
        if running_any(&env.pool, "toygres_duroxide").await? == 0 {
            gone_at = Some(t1.elapsed() - deleted);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_out = w.finish(&env);
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or("not reached".into())
    };
    let ok = |d: Option<Duration>| Some(d.is_some_and(|d| d <= Duration::from_secs(5)));
    let base = Some((format!("{base_all:.2} s (all NOTIFYs delivered)"), 0.0, 0.0));
    let with_ratio =
        |d: Option<Duration>| d.map(|d| (format!("{base_all:.2} s"), d.as_secs_f64(), base_all));
    row(
        &format!("commit → all {n} actors running"),
        fmt(running_at),
        with_ratio(running_at).or(base.clone()),
        "≤ 5 s",
        ok(running_at),
    );
    row(
        &format!("commit → all {n} with a first health row"),
        fmt(checked_at),
        with_ratio(checked_at).or(base.clone()),
        "≤ 5 s",
        ok(checked_at),
    );
    row(
        &format!("commit of DELETE → all {n} actors gone"),
        fmt(gone_at),
        with_ratio(gone_at).or(base),
        "≤ 5 s",
        ok(gone_at),
    );
    row(
        "CPU during insert burst / delete burst (service + PostgreSQL, % of one core)",
        format!(
            "{:.0} % / {:.0} %",
            cpu_in.0 + cpu_in.1,
            cpu_out.0 + cpu_out.1
        ),
        None,
        "–",
        None,
    );
    Ok(())
}

async fn insert_many(
    pool: &PgPool,
    prefix: &str,
    n: usize,
    state: &str,
    target: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO toygres_cms.instances (user_name, k8s_name, postgres_version, storage_size_gb, state,
                                            create_orchestration_id, dns_connection_string)
         SELECT 'bench', $1 || '-' || g, '16', 1, $3::text::toygres_cms.instance_state, 'bench', $4
           FROM generate_series(1, $2) g",
    )
    .bind(prefix)
    .bind(n as i64)
    .bind(state)
    .bind(target)
    .execute(pool)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------------------

struct CapacityResult {
    checks: i64,
    ideal: f64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu: (f64, f64),
    /// CPU of the probe target cluster (% of one core).
    target_cpu: f64,
    statements_per_check: f64,
    top: Vec<(String, i64, f64)>,
}

async fn capacity(
    n: usize,
    interval: Duration,
    window: Duration,
    baseline_n: usize,
    flags: &str,
) -> Result<()> {
    header(&format!(
        "Capacity — actors at a {}s interval, measured over {}s after warm-up (all probe one separate PostgreSQL, a new connection per probe)",
        interval.as_secs_f64(),
        window.as_secs_f64()
    ));
    let base = if baseline_n > 0 {
        let env = Env::start().await?;
        Some(run_naive(&env, baseline_n, interval, window).await?)
    } else {
        None
    };
    let env = Env::start().await?;
    let r = run_ours(&env, n, interval, window, flags).await?;
    if let Some(b) = &base {
        report_capacity(
            &format!("naive loop, {baseline_n} actors"),
            b,
            interval,
            None,
        );
    }
    report_capacity(
        &format!("toygres-actors, {n} actors"),
        &r,
        interval,
        base.as_ref(),
    );
    print_top("toygres-actors run, pg_stat_statements", &r.top);
    if let Some(b) = &base {
        print_top("naive loop", &b.top);
    }
    Ok(())
}

/// A `pg_stat_statements` top list as a Markdown table.
fn print_top(title: &str, top: &[(String, i64, f64)]) {
    println!("\nTop statements ({title}):\n");
    println!("| calls | total ms | statement |");
    println!("|---|---|---|");
    for (q, calls, total) in top {
        let q: String = q
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(90)
            .collect();
        println!("| {calls} | {total:.0} | `{}` |", q.replace('|', "\\|"));
    }
}

fn report_capacity(
    label: &str,
    r: &CapacityResult,
    interval: Duration,
    base: Option<&CapacityResult>,
) {
    let per_s = r.checks as f64;
    let target_p99 = interval.as_secs_f64() * 35.0 / 30.0;
    row(
        &format!("{label}: checks achieved / ideal"),
        format!(
            "{:.0} / {:.0} ({:.0} %)",
            per_s,
            r.ideal,
            100.0 * per_s / r.ideal.max(1.0)
        ),
        None,
        "–",
        None,
    );
    row(
        &format!("{label}: staleness p50 / p99 / max"),
        format!("{:.1} s / {:.1} s / {:.1} s", r.p50, r.p99, r.max),
        base.map(|b| (format!("p99 {:.1} s", b.p99), r.p99, b.p99)),
        &format!("p99 ≤ {target_p99:.0} s"),
        Some(r.p99 <= target_p99),
    );
    row(
        &format!("{label}: CPU service + PostgreSQL (% of one core; 200 % = the machine)"),
        format!("{:.0} % + {:.0} %", r.cpu.0, r.cpu.1),
        base.map(|b| {
            (
                format!("{:.0} % + {:.0} %", b.cpu.0, b.cpu.1),
                r.cpu.0 + r.cpu.1,
                b.cpu.0 + b.cpu.1,
            )
        }),
        "–",
        None,
    );
    row(
        &format!("{label}: probe target cluster CPU (a separate PostgreSQL all instances share)"),
        format!("{:.0} %", r.target_cpu),
        None,
        "–",
        None,
    );
    row(
        &format!("{label}: PostgreSQL statements per check"),
        format!("{:.1}", r.statements_per_check),
        base.map(|b| {
            (
                format!("{:.1}", b.statements_per_check),
                r.statements_per_check,
                b.statements_per_check,
            )
        }),
        "–",
        None,
    );
}

async fn staleness(env: &Env, from: f64, to: f64, n: usize) -> Result<(i64, f64, f64, f64)> {
    // Every gap between consecutive checks of one instance inside the window, plus the
    // open gap from each instance's last check to the window's end (a stuck actor counts).
    let rows: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT instance_id, extract(epoch FROM checked_at)::float8 FROM toygres_cms.instance_health_checks
          WHERE checked_at >= to_timestamp($1) - interval '120 seconds' AND checked_at <= to_timestamp($2)
          ORDER BY instance_id, checked_at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&env.pool)
    .await?;
    let mut by: HashMap<uuid::Uuid, Vec<f64>> = HashMap::new();
    for (id, t) in rows {
        by.entry(id).or_default().push(t);
    }
    let mut gaps = Vec::new();
    let mut checks = 0;
    for ts in by.values() {
        let mut prev: Option<f64> = None;
        for &t in ts {
            if t >= from {
                checks += 1;
                if let Some(p) = prev {
                    gaps.push(t - p);
                }
            }
            prev = Some(t);
        }
        if let Some(p) = prev {
            gaps.push(to - p);
        }
    }
    // Instances with no check at all in the window are as stale as the window is long.
    for _ in by.len()..n {
        gaps.push(to - from + 120.0);
    }
    let g = sorted(gaps);
    Ok((
        checks,
        percentile(&g, 50.0),
        percentile(&g, 99.0),
        g.last().copied().unwrap_or(0.0),
    ))
}

async fn profile(env: &Env) -> Result<(f64, Vec<(String, i64, f64)>)> {
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::int8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap_or(None);
    let top: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT query, calls, total_exec_time FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
          ORDER BY total_exec_time DESC LIMIT 8",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap_or_default();
    Ok((total.unwrap_or(0) as f64, top))
}

async fn run_ours(
    env: &Env,
    n: usize,
    interval: Duration,
    window: Duration,
    flags: &str,
) -> Result<CapacityResult> {
    let interval_s = format!("{}ms", interval.as_millis());
    let mut all = vec![
        "--check-interval",
        interval_s.as_str(),
        "--probe-keep-connections",
        "0",
        "--probe-concurrency",
        "64",
        "--stale-after",
        "600s",
    ];
    all.extend(flags.split_whitespace());
    let svc = Service::start(&env.url, &all).await?;
    let target_env = Env::start().await?;
    let target = target_env.target();
    for start in (0..n).step_by(1000) {
        let k = (n - start).min(1000);
        insert_many(
            &env.pool,
            &format!("cap{start}"),
            k,
            "running",
            Some(&target),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    warm_up(env, n, interval).await?;
    measure_window(env, &target_env, Some(svc.pid()), n, interval, window).await
}

async fn warm_up(env: &Env, n: usize, interval: Duration) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let checked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await?;
        if checked as usize >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One more interval so first timers (spread over the first interval) have fired.
    tokio::time::sleep(interval + interval / 2).await;
    Ok(())
}

async fn measure_window(
    env: &Env,
    target: &Env,
    pid: Option<i32>,
    n: usize,
    interval: Duration,
    window: Duration,
) -> Result<CapacityResult> {
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&env.pool)
        .await;
    let from = now_epoch();
    let w = CpuWindow::start(env, pid);
    let wt = CpuWindow::start(target, None);
    tokio::time::sleep(window).await;
    let cpu = w.finish(env);
    let target_cpu = wt.finish(target).1;
    let to = now_epoch();
    let (statements, top) = profile(env).await?;
    let (checks, p50, p99, max) = staleness(env, from, to, n).await?;
    Ok(CapacityResult {
        checks,
        ideal: n as f64 * window.as_secs_f64() / interval.as_secs_f64(),
        p50,
        p99,
        max,
        cpu,
        target_cpu,
        statements_per_check: statements / (checks.max(1) as f64),
        top,
    })
}

async fn run_naive(
    env: &Env,
    n: usize,
    interval: Duration,
    window: Duration,
) -> Result<CapacityResult> {
    let schema = "naive_duroxide";
    let mut worker = Command::new(std::env::current_exe()?)
        .args(["naive-worker", &env.url, schema])
        .env("TOYGRES_ACTORS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let target_env = Env::start().await?;
    let result = async {
        let store = Arc::new(duroxide_pg::PostgresProvider::new_with_schema(&env.url, Some(schema)).await?);
        let client = duroxide::Client::new(store);
        let target = target_env.target();
        insert_many(&env.pool, "naive", n, "running", Some(&target)).await?;
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM toygres_cms.instances").fetch_all(&env.pool).await?;
        for id in ids {
            let actor = format!("naive-{id}");
            sqlx::query("UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2 WHERE id = $1")
                .bind(id)
                .bind(&actor)
                .execute(&env.pool)
                .await?;
            let input = naive::Input {
                instance_id: id,
                interval_ms: interval.as_millis() as u64,
            };
            client
                .start_orchestration(&actor, naive::NAME, serde_json::to_string(&input)?)
                .await?;
        }
        warm_up(env, n, interval).await?;
        measure_window(env, &target_env, Some(worker.id() as i32), n, interval, window).await
    }
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    result
}

/// The naive Duroxide loop, as toygres' seed runs it: one activity, a durable timer and
/// continue-as-new on every iteration, default runtime options, no extra index, no planner
/// settings. It does the same work per iteration as our actor (the same health check).
mod naive {
    use std::sync::Arc;
    use std::time::Duration;

    use duroxide::runtime::registry::ActivityRegistry;
    use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry};
    use serde::{Deserialize, Serialize};

    pub const NAME: &str = "naive::Actor";

    #[derive(Serialize, Deserialize, Clone)]
    pub struct Input {
        pub instance_id: uuid::Uuid,
        pub interval_ms: u64,
    }

    async fn orchestration(ctx: OrchestrationContext, input: Input) -> Result<String, String> {
        let check = toygres_actors::check::CheckInput {
            instance_id: input.instance_id,
            actor_states: vec!["creating".into(), "running".into()],
            consecutive_failures: 0,
            unhealthy_after: 1,
        };
        let out: toygres_actors::check::CheckOutcome = ctx
            .schedule_activity_typed(toygres_actors::config::ACTIVITY_HEALTH_CHECK, &check)
            .await?;
        if let toygres_actors::check::CheckOutcome::Exit { reason } = out {
            return Ok(reason);
        }
        ctx.schedule_timer(Duration::from_millis(input.interval_ms))
            .await;
        ctx.continue_as_new_typed(&input).await
    }

    pub async fn worker(url: &str, schema: &str) -> anyhow::Result<()> {
        let store =
            Arc::new(duroxide_pg::PostgresProvider::new_with_schema(url, Some(schema)).await?);
        let pool = toygres_actors::db::cms_pool(url, 8).await?;
        let prober = Arc::new(toygres_actors::health::Prober::new(
            toygres_actors::health::ProbeSettings {
                connect_timeout: Duration::from_secs(5),
                query_timeout: Duration::from_secs(5),
                keep_connections: 0,
                max_concurrent: 64,
            },
        ));
        let deps = Arc::new(toygres_actors::check::ActorDeps { pool, prober });
        let activities = toygres_actors::actor::register_activities(
            ActivityRegistry::builder(),
            deps.clone(),
            // The naive loop uses only the v1 health-check activity.
            Arc::new(toygres_actors::lease::Scheduler::new(
                Arc::new(toygres_actors::identity::ReplicaId::new("naive")),
                deps,
                1,
            )),
        )
        .build();
        let orchestrations = OrchestrationRegistry::builder()
            .register_typed(NAME, orchestration)
            .build();
        let _rt =
            duroxide::runtime::Runtime::start_with_store(store, activities, orchestrations).await;
        // Run until killed.
        std::future::pending::<()>().await;
        let _ = ActivityContext::instance_id;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------

/// A TCP proxy in front of PostgreSQL whose door can be shut: while shut, new connections
/// are refused (established ones keep working) — a listener cut off from the database.
async fn door_proxy(upstream: u16) -> Result<(u16, Arc<AtomicBool>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let open = Arc::new(AtomicBool::new(true));
    let door = open.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            if !door.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    Ok((port, open))
}

async fn problems(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH live AS (
            SELECT i.instance_id, substr(i.instance_id, 7, 36) AS inst FROM toygres_duroxide.instances i
              JOIN toygres_duroxide.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
             WHERE e.status = 'Running')
         SELECT
           (SELECT count(*) FROM toygres_cms.instances c
             WHERE c.state::text IN ('creating', 'running')
               AND NOT EXISTS (SELECT 1 FROM live WHERE live.instance_id = c.instance_actor_orchestration_id))
         + (SELECT count(*) FROM live
             WHERE NOT EXISTS (SELECT 1 FROM toygres_cms.instances c
                                WHERE c.instance_actor_orchestration_id = live.instance_id
                                  AND c.state::text IN ('creating', 'running')))",
    )
    .fetch_one(pool)
    .await?)
}

async fn recovery(rows: usize, outage: Duration) -> Result<()> {
    let env = Env::start().await?;
    header(&format!(
        "Recovery — listener cut off for {}s while {rows} rows change",
        outage.as_secs_f64()
    ));
    let (port, door) = door_proxy(env.pg.port()).await?;
    let via_proxy = env
        .url
        .replace(&format!(":{}/", env.pg.port()), &format!(":{port}/"));
    let svc = Service::start(
        &via_proxy,
        &["--check-interval", "30s", "--resync-interval", "600s"],
    )
    .await?;
    insert_many(&env.pool, "rec", rows, "running", None).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while problems(&env.pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cut the listener off: shut the door, kill its backend.
    door.store(false, Ordering::SeqCst);
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'toygres-actors-listener'")
        .execute(&env.pool)
        .await?;
    let cut = Instant::now();
    // Change every row during the outage: a third stopped, a third deleted, a third
    // restarted through stop → running, plus new rows.
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM toygres_cms.instances ORDER BY k8s_name")
            .fetch_all(&env.pool)
            .await?;
    let step = outage / (ids.len().max(1) as u32 + 1);
    for (i, id) in ids.iter().enumerate() {
        match i % 3 {
            0 => {
                sqlx::query("UPDATE toygres_cms.instances SET state = 'stopped' WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
            }
            1 => {
                sqlx::query("DELETE FROM toygres_cms.instances WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
                insert_instance(&env.pool, &format!("rec-new-{i}"), "creating", None).await?;
            }
            _ => {
                sqlx::query("UPDATE toygres_cms.instances SET state = 'deleting' WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
            }
        }
        tokio::time::sleep(step).await;
    }
    let left = outage.saturating_sub(cut.elapsed());
    tokio::time::sleep(left).await;
    door.store(true, Ordering::SeqCst);
    let opened = Instant::now();
    // Reconnected: a new listener backend.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'toygres-actors-listener'")
            .fetch_one(&env.pool)
            .await?;
        if n > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reconnected = Instant::now();
    while problems(&env.pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converged = reconnected.elapsed();
    let remaining = problems(&env.pool).await?;
    row(
        "door open → listener reconnected",
        format!("{:.2} s", (reconnected - opened).as_secs_f64()),
        None,
        "–",
        None,
    );
    row(
        &format!("reconnect → all {rows}+ instances right ({remaining} wrong at the end)"),
        format!("{:.2} s", converged.as_secs_f64()),
        None,
        "≤ 2 s",
        Some(remaining == 0 && converged <= Duration::from_secs(2)),
    );
    drop(svc);

    // Stale → healed, with short thresholds.
    let stale_after = if outage >= Duration::from_secs(30) {
        30
    } else {
        3
    };
    let resync = if outage >= Duration::from_secs(30) {
        10
    } else {
        1
    };
    let env2 = Env::start().await?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hang_port = l.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let stale_s = format!("{stale_after}s");
    let resync_s = format!("{resync}s");
    let check_s = format!("{}s", (stale_after / 3).max(1));
    let svc = Service::start(
        &env2.url,
        &[
            "--check-interval",
            &check_s,
            "--stale-after",
            &stale_s,
            "--resync-interval",
            &resync_s,
            "--probe-connect-timeout",
            "600s",
            "--lease-renew-interval",
            &check_s,
        ],
    )
    .await?;
    insert_instance(
        &env2.pool,
        "hang",
        "running",
        Some(&format!("postgres://x:pw@127.0.0.1:{hang_port}/db")),
    )
    .await?;
    // Stale onset: stale_after after the actor started (it never completes a check).
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut heal: Option<f64> = None;
    while heal.is_none() && Instant::now() < deadline {
        heal = sqlx::query_scalar(
            "SELECT extract(epoch FROM d.decided_at - (i.created_at + make_interval(secs => $1)))::float8
               FROM toygres_actors.decisions d
               JOIN toygres_duroxide.instances i ON i.instance_id = d.old_actor_id
              WHERE d.k8s_name = 'hang' AND d.action = 'restart'
              ORDER BY d.decided_at LIMIT 1",
        )
        .bind(stale_after as f64)
        .fetch_optional(&env2.pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(svc);
    row(
        &format!("actor stale → restarted (stale_after {stale_after}s, resync {resync}s)"),
        heal.map(|h| format!("{h:.1} s after it went stale"))
            .unwrap_or("not healed".into()),
        None,
        &format!("≤ one resync ({resync} s) after stale_after"),
        Some(heal.is_some_and(|h| h <= resync as f64 + 1.0)),
    );
    drop(env2);
    drop(env);
    Ok(())
}
