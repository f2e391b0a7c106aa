//! The burst scenario: N instances inserted in one transaction → all actors running and all
//! with a first health row; then all deleted in one statement → all actors gone. The same
//! transaction's NOTIFYs to a plain LISTEN connection are the baseline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::floor::{self, Floor};
use crate::harness::{
    Baseline, Cpu, CpuWindow, DASH, Env, NEW_CONNECTION_PER_PROBE, Service, TURNS, delete_all,
    header, healthy_count, insert_instance, insert_many, metric, num, pct, row, running_any,
    running_current, secs,
};
use crate::jobqueue;
use crate::pooler::Pooler;

/// How long the scenario waits for each figure before it reports "not reached".
const PATIENCE: Duration = Duration::from_secs(600);
/// How often the scenario counts (a count over 10,000 actors costs PostgreSQL milliseconds:
/// polled every 50 ms it took a sizeable share of the 2-core machine it measures).
const POLL: Duration = Duration::from_millis(250);
/// The running count every this many polls (1 s).
const RUNNING_EVERY: u32 = 4;

/// What one burst measured (seconds after the commit; `None` = not reached).
#[derive(Debug, Serialize)]
pub struct Report {
    pub instances: usize,
    /// Commit → a plain LISTEN connection has all N notifications.
    pub notify_all_s: f64,
    /// Commit → the reconciler decided (and durably enqueued) all N starts: the decision
    /// log's last `start`. Separates the reconciler's speed from Duroxide's.
    pub all_started_s: Option<f64>,
    pub all_running_s: Option<f64>,
    /// Commit → every row `healthy` (its first check probed a real PostgreSQL).
    pub all_healthy_s: Option<f64>,
    /// Rows whose current actor ran, at the last look after the insert.
    pub actors_running: i64,
    /// Rows `healthy`, at the last look after the insert.
    pub actors_healthy: i64,
    /// What the probes hit: `pooled` (a PgBouncer in front of the bench's PostgreSQL, as
    /// a fleet of servers that fork their own backends) or `direct` (one server forks a
    /// backend per probe).
    pub targets: &'static str,
    /// A restart requested (`toygres_cms.request_actor_restart`) right after the insert's
    /// commit, of an instance that was there before: request → the row names a new actor and
    /// that actor's first check is written. Explicit requests must not wait behind a storm.
    pub restart_in_storm_s: Option<f64>,
    /// Commit of the DELETE → no actor runs.
    pub all_gone_s: Option<f64>,
    /// Actors still running at the last look after the DELETE.
    pub actors_left: i64,
    pub cpu_insert: Cpu,
    pub cpu_delete: Cpu,
    /// Orchestration turns acked per second, commit → all running (starts, first lease
    /// turns) and commit of the DELETE → all gone (cancels), from the service's counter.
    pub turns_insert_per_s: Option<f64>,
    pub turns_delete_per_s: Option<f64>,
    /// Direct targets only: the same insert with graphile-worker doing the same job instead
    /// of the service, on the same server before it ([`crate::jobqueue`]): commit → all N
    /// rows healthy (`None`: not run, or not reached).
    pub jobqueue_healthy_s: Option<f64>,
    /// The jobs graphile-worker ran at once (0: not run).
    pub jobqueue_concurrency: usize,
    /// Direct targets: the same probes by `pgbench -C`, nothing else ([`crate::floor`]).
    pub floors: Vec<Floor>,
}

/// What the burst's instances probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Targets {
    /// Through a PgBouncer in front of the bench's PostgreSQL (needs `pgbouncer`).
    Pooled,
    /// The bench's PostgreSQL itself: one server forks a backend for every probe.
    Direct,
    /// Pooled, then direct.
    Both,
}

/// Backends the pooler may open on the bench's PostgreSQL.
const POOLER_SERVER_CONNECTIONS: u32 = 50;

/// `job_queue`: the job-queue baseline's concurrency for direct targets (0: none).
pub async fn run(n: usize, flags: &str, targets: Targets, job_queue: usize) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    if matches!(targets, Targets::Pooled | Targets::Both) {
        reports.push(run_one(n, flags, Probes::Pooled, 0).await?);
    }
    if matches!(targets, Targets::Direct | Targets::Both) {
        reports.push(run_one(n, flags, Probes::Direct, job_queue).await?);
    }
    Ok(reports)
}

async fn run_one(n: usize, flags: &str, probes: Probes, job_queue: usize) -> Result<Report> {
    let env = Env::start().await?;
    let pooler = match probes {
        Probes::Pooled => Some(Pooler::start(
            env.pg.port(),
            POOLER_SERVER_CONNECTIONS,
            false,
        )?),
        Probes::Direct => None,
    };
    let notify_all_s = notify_baseline(&env, n).await?;
    let floors: Vec<Floor> = match probes {
        // At the service's concurrency (the job queue's too), and at two (this machine's best).
        Probes::Direct => [direct_probes_at_once()?, 2]
            .into_iter()
            .filter_map(|clients| floor::new_connections(&env, n, clients))
            .collect(),
        Probes::Pooled => Vec::new(),
    };
    let jobqueue_healthy_s = match job_queue {
        0 => None,
        concurrency => jobqueue::burst(&env, n, concurrency, PATIENCE).await?,
    };
    let svc = start_service(&env, flags).await?;
    let w = CpuWindow::start(&env, Some(svc.pid()));
    let target = pooler.as_ref().map_or_else(|| env.target(), Pooler::target);
    let canary = insert_instance(&env.pool, "canary", "running", Some(&target)).await?;
    let before = wait_for_actor(&env, canary).await?;
    let inserted = insert_burst(&env, &svc, n, &target, Canary { id: canary, before }, w).await?;
    let deleted = delete_burst(&env, &svc).await?;
    drop(svc);
    drop(pooler);

    let report = Report {
        instances: n,
        notify_all_s,
        all_started_s: inserted.counted.all_started_s,
        all_running_s: inserted.counted.all_running_s,
        all_healthy_s: inserted.counted.all_healthy_s,
        actors_running: inserted.counted.actors_running,
        actors_healthy: inserted.counted.actors_healthy,
        targets: match probes {
            Probes::Pooled => "pooled",
            Probes::Direct => "direct",
        },
        restart_in_storm_s: inserted.restart_in_storm_s,
        all_gone_s: deleted.all_gone_s,
        actors_left: deleted.actors_left,
        cpu_insert: inserted.cpu,
        cpu_delete: deleted.cpu,
        turns_insert_per_s: inserted.turns_per_s,
        turns_delete_per_s: deleted.turns_per_s,
        jobqueue_healthy_s,
        jobqueue_concurrency: job_queue,
        floors,
    };
    report.print();
    crate::measure::print_top("insert burst, pg_stat_statements", &inserted.top);
    Ok(report)
}

/// The `--probe-concurrency` [`NEW_CONNECTION_PER_PROBE`] gives the service.
fn direct_probes_at_once() -> Result<usize> {
    let [.., flag, value] = NEW_CONNECTION_PER_PROBE;
    anyhow::ensure!(
        flag == "--probe-concurrency",
        "{flag} where --probe-concurrency was"
    );
    Ok(value.parse()?)
}

/// What one run's instances probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probes {
    /// A PgBouncer in front of the bench's PostgreSQL.
    Pooled,
    /// The bench's PostgreSQL itself.
    Direct,
}

/// The service under test, its statement counts from zero.
async fn start_service(env: &Env, flags: &str) -> Result<Service> {
    // The canary's restart must not be held back by the per-instance minimum interval (its
    // actor is seconds old): that limit is not what is measured here.
    let mut all = vec!["--check-interval", "30s", "--restart-min-interval", "0s"];
    all.extend(NEW_CONNECTION_PER_PROBE);
    all.extend(flags.split_whitespace());
    let svc = Service::start(&env.url, &all).await?;
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&env.pool)
        .await;
    Ok(svc)
}

/// The instance there before the burst, whose restart is requested amid it, and its actor.
struct Canary {
    id: uuid::Uuid,
    before: String,
}

/// A statement and how long it took to commit: figures count from its commit.
struct Committed {
    began: Instant,
    took: Duration,
}

impl Committed {
    /// Time since the commit.
    fn since(&self) -> Duration {
        self.began.elapsed() - self.took
    }
}

/// What the insert burst measured.
struct Inserted {
    counted: Counted,
    restart_in_storm_s: Option<f64>,
    cpu: Cpu,
    top: Vec<(String, i64, f64)>,
    turns_per_s: Option<f64>,
}

/// N instances inserted in one transaction, the canary's restart requested right after the
/// commit; counted until all run and are healthy. `w` measures CPU from before the canary.
async fn insert_burst(
    env: &Env,
    svc: &Service,
    n: usize,
    target: &str,
    canary: Canary,
    w: CpuWindow,
) -> Result<Inserted> {
    let turns0 = metric(&svc.metrics().await, TURNS);
    let began = Instant::now();
    insert_many(&env.pool, "burst", n, "running", Some(target)).await?;
    let commit = Committed {
        began,
        took: began.elapsed(),
    };
    let restart = request_canary_restart(env.pool.clone(), canary.id, canary.before);
    let counted = count_until_all_healthy(env, n, &commit).await?;
    let (restart_in_storm_s, request_s) = restart.await??;
    print_restart_path(&env.pool, canary.id, request_s).await;
    let cpu = w.finish(env);
    let (_, top) = crate::measure::profile(env).await;
    let turns1 = metric(&svc.metrics().await, TURNS);
    let turns_per_s = turns1
        .zip(turns0)
        .map(|(b, a)| (b - a) / commit.since().as_secs_f64());
    Ok(Inserted {
        counted,
        restart_in_storm_s,
        cpu,
        top,
        turns_per_s,
    })
}

/// The canary's restart, requested now and watched by a task of its own every 20 ms (the
/// counts poll every 250 ms): request → done in seconds (`None`: not within [`PATIENCE`]),
/// and how long the request's own statement took.
fn request_canary_restart(
    pool: sqlx::PgPool,
    canary: uuid::Uuid,
    before: String,
) -> tokio::task::JoinHandle<Result<(Option<f64>, f64)>> {
    tokio::spawn(async move {
        let asked = Instant::now();
        sqlx::query("SELECT toygres_cms.request_actor_restart('canary')")
            .execute(&pool)
            .await?;
        let request = asked.elapsed().as_secs_f64();
        // How long the database takes to answer this (outside) process meanwhile: the
        // round trip of a client that is not the saturated service.
        let mut trips = Vec::new();
        while asked.elapsed() < PATIENCE {
            let q = Instant::now();
            let done = restarted(&pool, canary, &before).await?;
            trips.push(q.elapsed().as_secs_f64() * 1000.0);
            if done {
                print_round_trips(&mut trips);
                return anyhow::Ok((Some(asked.elapsed().as_secs_f64()), request));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((None, request))
    })
}

/// The insert's counts: seconds after the commit until all started, ran and were healthy.
struct Counted {
    all_started_s: Option<f64>,
    all_running_s: Option<f64>,
    all_healthy_s: Option<f64>,
    actors_running: i64,
    actors_healthy: i64,
}

/// Count every [`POLL`] until all N run and are healthy, or [`PATIENCE`] is out.
async fn count_until_all_healthy(env: &Env, n: usize, commit: &Committed) -> Result<Counted> {
    let mut c = Counted {
        all_started_s: None,
        all_running_s: None,
        all_healthy_s: None,
        actors_running: 0,
        actors_healthy: 0,
    };
    let deadline = Instant::now() + PATIENCE;
    let mut round = 0u32;
    while (c.all_running_s.is_none() || c.all_healthy_s.is_none()) && Instant::now() < deadline {
        round += 1;
        if c.all_started_s.is_none() {
            let started: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_actors.decisions WHERE action = 'start'",
            )
            .fetch_one(&env.pool)
            .await?;
            if started as usize >= n {
                c.all_started_s = Some(commit.since().as_secs_f64());
            }
        }
        // The running count joins Duroxide's tables (~40 ms at 10,000 on a busy machine):
        // once a second, or the observer loads what it measures (the figure's resolution).
        if c.all_running_s.is_none() && round.is_multiple_of(RUNNING_EVERY) {
            // Less the canary (there before the burst; its restart's new actor may not have
            // run its first turn yet, and then it is not counted).
            c.actors_running = (running_current(&env.pool).await? - 1).max(0);
            if c.actors_running as usize >= n {
                c.all_running_s = Some(commit.since().as_secs_f64());
            }
        }
        if c.all_healthy_s.is_none() {
            c.actors_healthy = (healthy_count(&env.pool).await? - 1).max(0);
            if c.actors_healthy as usize >= n {
                c.all_healthy_s = Some(commit.since().as_secs_f64());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(c)
}

/// What the delete burst measured.
struct Deleted {
    all_gone_s: Option<f64>,
    actors_left: i64,
    cpu: Cpu,
    turns_per_s: Option<f64>,
}

/// Every instance deleted in one statement; counted until no actor runs.
async fn delete_burst(env: &Env, svc: &Service) -> Result<Deleted> {
    let w = CpuWindow::start(env, Some(svc.pid()));
    let turns0 = metric(&svc.metrics().await, TURNS);
    let began = Instant::now();
    delete_all(&env.pool).await?;
    let commit = Committed {
        began,
        took: began.elapsed(),
    };
    let mut all_gone_s = None;
    let mut actors_left = -1;
    let deadline = Instant::now() + PATIENCE;
    while all_gone_s.is_none() && Instant::now() < deadline {
        actors_left = running_any(&env.pool, "toygres_actors_duroxide").await?;
        if actors_left == 0 {
            all_gone_s = Some(commit.since().as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu = w.finish(env);
    let turns_per_s = metric(&svc.metrics().await, TURNS)
        .zip(turns0)
        .map(|(b, a)| (b - a) / commit.since().as_secs_f64());
    Ok(Deleted {
        all_gone_s,
        actors_left,
        cpu,
        turns_per_s,
    })
}

/// Where the canary's restart spent its time: how long the request's own statement took
/// (its commit included), then from the database's own timestamps (ms after the request's
/// transaction began): decided (the swap's transaction), leased to a replica, request marked
/// handled.
async fn print_restart_path(pool: &sqlx::PgPool, canary: uuid::Uuid, request_s: f64) {
    type Path = (f64, f64, Option<f64>);
    let row: Result<Option<Path>, _> = sqlx::query_as(
        "SELECT extract(epoch FROM d.decided_at - r.requested_at)::float8 * 1000,
                extract(epoch FROM l.assigned_at - r.requested_at)::float8 * 1000,
                extract(epoch FROM r.handled_at - r.requested_at)::float8 * 1000
           FROM toygres_cms.actor_restart_requests r
           JOIN toygres_cms.instances c ON c.id = r.instance_id
           JOIN toygres_actors.probe_leases l ON l.instance_id = c.id
           JOIN LATERAL (SELECT decided_at FROM toygres_actors.decisions
                          WHERE instance_id = c.id AND action = 'restart'
                          ORDER BY decided_at DESC LIMIT 1) d ON true
          WHERE r.instance_id = $1
          ORDER BY r.requested_at DESC LIMIT 1",
    )
    .bind(canary)
    .fetch_optional(pool)
    .await;
    if let Ok(Some((decided, leased, handled))) = row {
        println!(
            "restart amid the storm: the request's statement took {:.0} ms; ms after the request's \
             start: decided {decided:.0}, leased {leased:.0}, request handled {}",
            request_s * 1000.0,
            handled.map_or("–".to_string(), |h| format!("{h:.0}"))
        );
    }
}

/// The canary's actor, once it has one and is healthy.
async fn wait_for_actor(env: &Env, id: uuid::Uuid) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "SELECT instance_actor_orchestration_id, health_status::text FROM toygres_cms.instances WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&env.pool)
        .await?;
        if let Some((Some(actor), health)) = row
            && health == "healthy"
        {
            return Ok(actor);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the canary got no healthy actor in 60 s"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The bench's own polls while the restart was awaited (ms): what a round trip to the
/// database costs a client outside the service during the storm.
fn print_round_trips(trips: &mut [f64]) {
    if trips.is_empty() {
        return;
    }
    trips.sort_by(f64::total_cmp);
    let at = |q: f64| trips[((trips.len() - 1) as f64 * q).round() as usize];
    println!(
        "restart amid the storm: the bench's own query meanwhile (outside the service): {} polls, p50 {:.1} ms, max {:.1} ms",
        trips.len(),
        at(0.5),
        at(1.0)
    );
}

/// Whether the row names another actor than `before` and that actor's first check is
/// written: a check after the new actor's lease was assigned to this replica.
async fn restarted(pool: &sqlx::PgPool, id: uuid::Uuid, before: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM toygres_cms.instances c
                         JOIN toygres_actors.probe_leases l
                           ON l.instance_id = c.id AND l.actor_id = c.instance_actor_orchestration_id
                        WHERE c.id = $1 AND c.instance_actor_orchestration_id <> $2
                          AND c.last_health_check > l.assigned_at)",
    )
    .bind(id)
    .bind(before)
    .fetch_one(pool)
    .await?)
}

/// The same transaction's notifications to a plain LISTEN connection: commit → all
/// delivered, in seconds (rows in state `stopped`, deleted afterwards).
async fn notify_baseline(env: &Env, n: usize) -> Result<f64> {
    let mut s = env.listen("bench-listen", &["toygres_instances"]).await?;
    let t0 = Instant::now();
    insert_many(&env.pool, "base", n, "stopped", None).await?;
    let commit = t0.elapsed();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), s.notifications.recv())
            .await?
            .context("closed")?;
    }
    let all = t0.elapsed() - commit;
    delete_all(&env.pool).await?;
    Ok(all.as_secs_f64())
}

impl Report {
    fn print(&self) {
        let n = self.instances;
        header(&match self.targets {
            "pooled" => format!(
                "Burst — {n} instances in one transaction (probes through a PgBouncer in front of the benchmark's PostgreSQL)"
            ),
            _ => format!(
                "Burst — {n} instances in one transaction (all probe the benchmark's own PostgreSQL: a backend forked per probe)"
            ),
        });
        let base = self.notify_all_s;
        let reached = |s: Option<f64>, what: String| {
            s.map(|s| secs(Some(s), 2))
                .unwrap_or(format!("not reached in {} s ({what})", PATIENCE.as_secs()))
        };
        let vs_notify = |s: Option<f64>| match s {
            Some(_) => Baseline::Ratio {
                text: secs(Some(base), 2),
                value: s,
                base: Some(base),
            },
            None => Baseline::Text(format!("{} (all NOTIFYs delivered)", secs(Some(base), 2))),
        };
        let within = |s: Option<f64>, limit: f64| Some(s.is_some_and(|s| s <= limit));
        row(
            &format!("commit → all {n} starts decided and enqueued (decision log)"),
            reached(self.all_started_s, "decision log".into()),
            vs_notify(self.all_started_s),
            DASH,
            None,
        );
        row(
            &format!("commit → all {n} actors running"),
            reached(
                self.all_running_s,
                format!("{} running", self.actors_running),
            ),
            vs_notify(self.all_running_s),
            "≤ 60 s",
            within(self.all_running_s, 60.0),
        );
        row(
            &format!("commit → all {n} healthy (first check probed a real PostgreSQL)"),
            reached(
                self.all_healthy_s,
                format!("{} healthy", self.actors_healthy),
            ),
            vs_notify(self.all_healthy_s),
            "≤ 10 s",
            within(self.all_healthy_s, 10.0),
        );
        floor::burst_rows(n, &self.floors, self.jobqueue_healthy_s);
        if self.targets == "direct" && self.jobqueue_concurrency > 0 {
            row(
                &format!(
                    "commit → all {n} healthy (baseline: {} doing the same job, {} at once, before the service)",
                    jobqueue::NAME,
                    self.jobqueue_concurrency
                ),
                reached(
                    self.all_healthy_s,
                    format!("{} healthy", self.actors_healthy),
                ),
                Baseline::Ratio {
                    text: secs(self.jobqueue_healthy_s, 2),
                    value: self.all_healthy_s,
                    base: self.jobqueue_healthy_s,
                },
                "≤ 0.8×",
                self.all_healthy_s
                    .zip(self.jobqueue_healthy_s)
                    .map(|(v, b)| v <= 0.8 * b),
            );
        }
        row(
            &format!(
                "restart requested right after the commit → done (new actor checked), amid the {n}"
            ),
            reached(self.restart_in_storm_s, "canary".into()),
            Baseline::None,
            "≤ 1 s",
            within(self.restart_in_storm_s, 1.0),
        );
        row(
            &format!("commit of DELETE → all {n} actors gone"),
            reached(self.all_gone_s, format!("{} left", self.actors_left)),
            vs_notify(self.all_gone_s),
            "≤ 10 s",
            within(self.all_gone_s, 10.0),
        );
        row(
            // The target is the insert burst's: the DELETE removes actors from Duroxide
            // outright, so its window holds only the turns already in flight.
            "Duroxide orchestration turns acked per second during insert burst (target) / delete burst",
            format!(
                "{} / {}",
                num(self.turns_insert_per_s, 0),
                num(self.turns_delete_per_s, 0)
            ),
            Baseline::None,
            "≥ 300",
            Some(self.turns_insert_per_s.is_some_and(|t| t >= 300.0)),
        );
        row(
            "CPU during insert burst / delete burst (service + PostgreSQL, % of one core)",
            format!(
                "{} / {}",
                pct(self.cpu_insert.total(), 0),
                pct(self.cpu_delete.total(), 0)
            ),
            Baseline::None,
            DASH,
            None,
        );
    }
}
