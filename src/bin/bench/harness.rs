//! What every scenario shares: a private PostgreSQL ([`Env`]), the real service as a separate
//! process ([`Service`]), CPU windows read from /proc, percentiles, the Markdown table
//! printer and the SQL helpers that insert instances and count running actors.
//!
//! Nothing here invents a figure: a value that could not be read is `None` and prints "–".

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sqlx::PgPool;

use crate::report;

// The library calls of the harness, in one place.
use toygres_actors::db::{PgSession, cms_pool, connect_session, ensure_database, migrate};
use toygres_actors::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

/// Service flags of the scenarios that probe with a new connection each time (64 at once):
/// the probe's full cost, as the tables of docs/benchmarks.md state.
pub const NEW_CONNECTION_PER_PROBE: [&str; 4] =
    ["--probe-keep-connections", "0", "--probe-concurrency", "64"];

/// Orchestration turns the service acked (its store's counter).
pub const TURNS: &str = "toygres_actors_duroxide_turns_total{queue=\"orchestrator\"}";

/// A counter or gauge from Prometheus text, summed over the lines that start with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}

/// Printed for every cell that was not measured.
pub const DASH: &str = "–";

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A private PostgreSQL with one migrated database.
pub struct Env {
    pub pg: EmbeddedPostgres,
    pub url: String,
    pub pool: PgPool,
}

impl Env {
    pub async fn start() -> Result<Env> {
        Self::start_with(600).await
    }

    /// [`Env::start`] with room for `max_connections` (probes on kept connections to this
    /// server take one each).
    pub async fn start_with(max_connections: u32) -> Result<Env> {
        let mut opts = EmbeddedOptions::ephemeral_temp("bench");
        // Durable commits, as in production; pg_stat_statements for the profile.
        opts.fast_unsafe = false;
        opts.max_connections = max_connections;
        opts.settings = vec![
            (
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ),
            ("shared_buffers".into(), "512MB".into()),
        ];
        // BENCH_PGSS_TRACK=all profiles the statements inside functions too (Duroxide's
        // fetch and ack, our check's write) at some cost; the default counts top level.
        if let Ok(track) = std::env::var("BENCH_PGSS_TRACK") {
            opts.settings
                .push(("pg_stat_statements.track".into(), track));
        }
        // BENCH_PG_SETTINGS="name=value;name=value" for a profiling run (auto_explain, …).
        if let Ok(extra) = std::env::var("BENCH_PG_SETTINGS") {
            for kv in extra.split(';').filter(|kv| !kv.trim().is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    opts.settings.push((k.trim().into(), v.trim().into()));
                }
            }
        }
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
        ensure_database(&pg.url("postgres"), "bench").await?;
        let url = pg.url("bench");
        let pool = cms_pool(&url, 8).await?;
        migrate(&pool).await?;
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await;
        Ok(Env { pg, url, pool })
    }

    /// A probe target on this server (many instances share it).
    pub fn target(&self) -> String {
        format!(
            "postgres://toygres:bench-pw@127.0.0.1:{}/postgres",
            self.pg.port()
        )
    }

    /// A dedicated session that LISTENs on `channels`.
    pub async fn listen(&self, application: &str, channels: &[&str]) -> Result<PgSession> {
        let s = connect_session(&self.url, application, Duration::from_secs(5)).await?;
        let sql: String = channels.iter().map(|c| format!("LISTEN {c}; ")).collect();
        s.client.batch_execute(&sql).await?;
        Ok(s)
    }

    /// CPU seconds of every live process of the cluster; `None` if the postmaster cannot
    /// be read.
    pub fn pg_cpu(&self) -> Option<f64> {
        let pid_file = std::fs::read_to_string(self.pg.data_dir().join("postmaster.pid")).ok()?;
        let postmaster = pid_file.lines().next()?.trim().parse::<i32>().ok()?;
        // With its exited children's (backends, autovacuum workers: reaped by the
        // postmaster, their CPU time moves to its cutime/cstime).
        let mut total = cpu_seconds(postmaster)? + children_cpu_seconds(postmaster)?;
        for pid in pids().filter(|&pid| parent_of(pid) == Some(postmaster)) {
            // A backend that exited between listing and reading adds nothing.
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
        Some(total)
    }
}

/// Inserts one instance row and returns its id.
pub async fn insert_instance(
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

/// Inserts `n` instances `<prefix>-1` … `<prefix>-n` in one statement (one transaction).
pub async fn insert_many(
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

pub async fn delete_all(pool: &PgPool) -> Result<()> {
    sqlx::query("DELETE FROM toygres_cms.instances")
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows whose current actor Duroxide runs right now.
pub async fn running_current(pool: &PgPool) -> Result<i64> {
    running_current_in(pool, "toygres_actors_duroxide").await
}

/// Rows whose current actor (`instance_actor_orchestration_id`) runs in a Duroxide schema.
/// An actor between two executions (continue-as-new: the old one closed as
/// `ContinuedAsNew`, the next one queued) is running: counting only `Running` misses the
/// actors caught mid-turn at the instant of the count.
pub async fn running_current_in(pool: &PgPool, schema: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM toygres_cms.instances c
           JOIN {schema}.instances i ON i.instance_id = c.instance_actor_orchestration_id
           JOIN {schema}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status IN ('Running', 'ContinuedAsNew')"
    ))
    .fetch_one(pool)
    .await?)
}

/// Orchestrations (all incarnations) running in a Duroxide schema right now.
pub async fn running_any(pool: &PgPool, schema: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.instances i
           JOIN {schema}.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status = 'Running'"
    ))
    .fetch_one(pool)
    .await?)
}

/// Rows that have a `last_health_check`.
pub async fn healthy_count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instances WHERE health_status = 'healthy'",
    )
    .fetch_one(pool)
    .await?)
}

pub async fn checked_count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NOT NULL",
    )
    .fetch_one(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------
// CPU from /proc
// ---------------------------------------------------------------------------------------

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: split after the closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The pids of the processes alive now (an unreadable /proc lists none).
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Two fields of /proc/<pid>/stat (0-based after the command name) summed, in seconds.
fn stat_seconds(pid: i32, first: usize) -> Option<f64> {
    let f = stat_fields(pid)?;
    let a: f64 = f.get(first)?.parse().ok()?;
    let b: f64 = f.get(first + 1)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((a + b) / hz)
}

/// utime + stime of a live process, in seconds (exited children are not counted).
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    stat_seconds(pid, 11)
}

/// CPU seconds of `pid`'s children that exited and were waited for (cutime + cstime).
pub fn children_cpu_seconds(pid: i32) -> Option<f64> {
    stat_seconds(pid, 13)
}

/// CPU over a window, in % of one core (200 % = this 2-core machine). `None` where a
/// process could not be read at both ends of the window, or no service was measured.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub service_pct: Option<f64>,
    pub pg_pct: Option<f64>,
}

impl Cpu {
    pub fn total(&self) -> Option<f64> {
        Some(self.service_pct? + self.pg_pct?)
    }
}

/// PostgreSQL CPU including backends that exited meanwhile is not visible in /proc; we
/// sample it often enough by measuring over windows where backends live long (pools).
pub struct CpuWindow {
    service_pid: Option<i32>,
    service0: Option<f64>,
    pg0: Option<f64>,
    t0: Instant,
}

impl CpuWindow {
    pub fn start(env: &Env, service_pid: Option<i32>) -> Self {
        CpuWindow {
            service_pid,
            service0: service_pid.and_then(cpu_seconds),
            pg0: env.pg_cpu(),
            t0: Instant::now(),
        }
    }

    pub fn finish(&self, env: &Env) -> Cpu {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let svc = self
            .service_pid
            .and_then(cpu_seconds)
            .zip(self.service0)
            .map(|(now, then)| 100.0 * (now - then) / wall);
        // Backends that exited during the window count in the postmaster's children's time;
        // a backend that exited between listing and reading does not: a sum that went down
        // is not a measurement.
        let pg = env
            .pg_cpu()
            .zip(self.pg0)
            .filter(|(now, then)| now >= then)
            .map(|(now, then)| 100.0 * (now - then) / wall);
        Cpu {
            service_pct: svc,
            pg_pct: pg,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------------------

/// The real service binary, next to this one, run as a child process.
pub struct Service {
    child: Child,
    /// Its HTTP base address (`http://127.0.0.1:PORT`).
    pub http: String,
}

pub fn service_binary() -> Result<PathBuf> {
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
    /// Starts `toygres-actors run` with `flags` and waits until it leads.
    pub async fn start(url: &str, flags: &[&str]) -> Result<Service> {
        Self::start_until(url, flags, "\"leader\":true").await
    }

    /// Starts another replica: waits until it is ready, leader or not.
    pub async fn start_replica(url: &str, flags: &[&str]) -> Result<Service> {
        Self::start_until(url, flags, "\"status\":\"ready\"").await
    }

    async fn start_until(url: &str, flags: &[&str], ready: &str) -> Result<Service> {
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
            // BENCH_SERVICE_LOG: the service's log filter for a run that is read afterwards.
            .env(
                "TOYGRES_ACTORS_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
            if let Ok(r) = http_get(&format!("{}/readyz", svc.http)).await
                && r.contains(ready)
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The Prometheus text of `/metrics` (empty if it cannot be read).
    pub async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.http))
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
pub async fn http_get(url: &str) -> Result<String> {
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

// ---------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------

pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The nearest-rank percentile of sorted samples; `None` without samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

/// p50 / p99 / max of a set of samples (seconds), and how many there were.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Quantiles {
    pub fn of(samples: Vec<f64>) -> Quantiles {
        let s = sorted(samples);
        Quantiles {
            samples: s.len(),
            p50: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            max: s.last().copied(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------

pub fn header(title: &str) {
    report::line(&format!("\n### {title}\n"));
    report::line("| figure | value | baseline (same run) | ratio | target | met |");
    report::line("|---|---|---|---|---|---|");
}

/// The baseline column: nothing, a text, or a text plus the two figures for the ratio
/// (value ÷ baseline), which prints only when both were measured.
pub enum Baseline {
    None,
    Text(String),
    Ratio {
        text: String,
        value: Option<f64>,
        base: Option<f64>,
    },
}

pub fn row(figure: &str, value: String, baseline: Baseline, target: &str, met: Option<bool>) {
    let (b, ratio) = match baseline {
        Baseline::None => (DASH.to_string(), DASH.to_string()),
        Baseline::Text(text) => (text, DASH.to_string()),
        Baseline::Ratio { text, value, base } => {
            let p = if target.ends_with('×') { 2 } else { 1 }; // judged as a ratio: 2 places
            let ratio = match (value, base) {
                (Some(v), Some(b)) if b > 0.0 && v.is_finite() => format!("{:.p$}×", v / b),
                _ => DASH.to_string(),
            };
            (text, ratio)
        }
    };
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => DASH,
    };
    report::line(&format!(
        "| {figure} | {value} | {b} | {ratio} | {target} | {met} |"
    ));
}

/// `Some(v)` if `v` is a real number.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// Seconds as milliseconds; "–" if not measured.
pub fn ms(s: Option<f64>) -> String {
    match finite(s) {
        Some(s) if s.abs() < 0.01 => format!("{:.2} ms", s * 1000.0),
        Some(s) => format!("{:.1} ms", s * 1000.0),
        None => DASH.into(),
    }
}

/// Seconds with `decimals`, or milliseconds below 10 ms; "–" if not measured.
pub fn secs(s: Option<f64>, decimals: usize) -> String {
    match finite(s) {
        Some(v) if v.abs() < 0.01 => ms(Some(v)),
        Some(v) => format!("{v:.decimals$} s"),
        None => DASH.into(),
    }
}

/// A percentage with `decimals`; "–" if not measured.
pub fn pct(p: Option<f64>, decimals: usize) -> String {
    match finite(p) {
        Some(p) => format!("{p:.decimals$} %"),
        None => DASH.into(),
    }
}

/// A number with `decimals`; "–" if not measured.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    match finite(v) {
        Some(v) => format!("{v:.decimals$}"),
        None => DASH.into(),
    }
}

/// A target in seconds: whole seconds print without decimals.
pub fn secs_target(s: f64) -> String {
    if (s - s.round()).abs() < 1e-9 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}
