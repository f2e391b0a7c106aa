//! Benchmarks against the limits, one command per figure (this file: arguments and
//! dispatch only):
//!
//!     cargo build --release --bins
//!     target/release/bench latency    # commit → first probe / first health row; idle CPU; poll trade-off
//!     target/release/bench idle       # 100 idle actors: machine-level CPU over PostgreSQL alone; vs polling
//!     target/release/bench burst      # 10,000 inserts in one transaction → all running and healthy; then deleted (pooled and direct targets)
//!     target/release/bench capacity   # N actors at 30 s: staleness p50/p99, CPU; the naive Duroxide loop as baseline
//!     target/release/bench recovery   # listener cut for 60 s while 1,000 rows change; stale → healed
//!     target/release/bench outage     # the database gone 6 min for 2 replicas: restarts, breaker, leases after
//!     target/release/bench retention  # a backlog of old health rows pruned as the service does: rows/s
//!     target/release/bench surfaces   # 50,000 instances: /metrics, /api/actors pages, `status` timed
//!     target/release/bench smoke      # every scenario at a tiny size (the test suite runs this)
//!     target/release/bench splice target/bench docs/benchmarks.md   # the doc's tables from `--out target/bench` runs
//!
//! Every scenario starts its own private PostgreSQL and the real `toygres-actors` binary (a
//! separate process, found next to this one), and prints Markdown table rows: figure, value,
//! the baseline measured in the same run, the ratio, and the target. A cell that was not
//! measured reads "–". Many instances share one probe target (the benchmark's own
//! PostgreSQL, or a local TCP recorder) — the rows say which. CPU is read from /proc
//! (utime+stime) for the service and for every PostgreSQL process of the cluster. With
//! `--out DIR` the tables and the figures are also written as files ([`report`]).
//!
//! The rooms: [`harness`] (what every scenario shares; [`measure`], the machine's busy time
//! and pg_stat_statements; [`report`], the tables as printed and written; [`door`] and
//! [`pooler`], the proxies some put in front of PostgreSQL; [`jobqueue`], the job queue
//! some scenarios measure beside the service), one module per scenario — [`latency`], [`idle`],
//! [`burst`], [`capacity`] (with its baseline, [`naive`]), [`recovery`], [`outage`],
//! [`retention`], [`surfaces`] — and [`smoke`] (all of them at a tiny size, plus a JSON summary for the
//! test suite); [`splice`] puts a run's tables into the doc.

mod burst;
mod capacity;
mod door;
mod floor;
mod harness;
mod idle;
mod jobqueue;
mod latency;
mod measure;
mod naive;
mod outage;
mod pooler;
mod recovery;
mod report;
mod retention;
mod smoke;
mod splice;
mod surfaces;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

// The library call of the dispatcher, in one place.
use toygres_actors::settings::parse_duration;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "toygres-actors benchmarks (see docs/benchmarks.md)"
)]
struct Args {
    /// Also write the run's tables (DIR/SCENARIO.md) and figures (DIR/SCENARIO.json), with
    /// the command and the machine, for docs/benchmarks.md.
    #[arg(long, global = true, value_name = "DIR")]
    out: Option<PathBuf>,
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
        /// The job-queue baseline (graphile-worker, installed with npm) beside the single
        /// inserts to a real server: any number runs it, 0 skips it.
        #[arg(long, default_value_t = jobqueue::CONCURRENCY)]
        job_queue_concurrency: usize,
    },
    /// N idle actors at default settings: machine-level CPU over PostgreSQL alone, and the
    /// same with duroxide-pg's own polling.
    Idle {
        #[arg(long, default_value_t = 100)]
        actors: usize,
        #[arg(long, default_value = "120s")]
        window: String,
        #[arg(long, default_value = "60s")]
        warmup: String,
        /// What the probes connect to: `pooled` (a PgBouncer in transaction mode in front of
        /// the bench's PostgreSQL; the probes keep their connections to it) or `direct` (the
        /// server itself: a backend per kept connection on this machine).
        #[arg(long, value_enum, default_value = "pooled")]
        targets: pooler::Targets,
    },
    /// N instances inserted in one transaction → all actors running and checked; then deleted.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// Extra flags for the service, e.g. "--orchestration-concurrency 8".
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        service_flags: String,
        /// What the instances probe: through a pooler (a fleet of servers), the one server
        /// directly (it forks a backend per probe), or both, one after the other.
        #[arg(long, value_enum, default_value = "both")]
        targets: burst::Targets,
        /// The jobs the job-queue baseline (graphile-worker, installed with npm) runs at once
        /// before the direct burst: 0 skips it.
        #[arg(long, default_value_t = jobqueue::CONCURRENCY)]
        job_queue_concurrency: usize,
    },
    /// N actors at an interval for a duration: staleness, CPU; naive loop as the baseline.
    Capacity {
        #[arg(long, default_value_t = 5000)]
        actors: usize,
        #[arg(long, default_value = "30s")]
        interval: String,
        /// At least the lease overlap (12 min at the default renewal), or it measures a
        /// transient.
        #[arg(long, default_value = "1800s")]
        duration: String,
        /// Actors for the naive-loop baseline (0 = skip it).
        #[arg(long, default_value_t = 1000)]
        baseline_actors: usize,
        /// Extra flags for the service, e.g. "--duroxide-async-commit".
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        service_flags: String,
        /// What the instances probe: `pooled` (a PgBouncer in transaction mode in front of
        /// the target cluster; the service keeps its default probe settings) or `direct` (a
        /// new connection per probe, the one target cluster forks a backend for each).
        #[arg(long, value_enum, default_value = "pooled")]
        targets: pooler::Targets,
    },
    /// Listener cut off while rows change; stale actor → healed.
    Recovery {
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        #[arg(long, default_value = "60s")]
        outage: String,
    },
    /// The database gone for both replicas longer than stale_after (the instances stay up):
    /// restarts, health resumed, the healing breaker, lease moves once it is back.
    Outage {
        #[arg(long, default_value_t = 1000)]
        instances: usize,
        #[arg(long, default_value = "360s")]
        outage: String,
        /// The service's timers scaled down (stale after 4 s), as the smoke run does.
        #[arg(long)]
        quick: bool,
    },
    /// A backlog of old health rows pruned as the service does: rows/s vs the target.
    Retention {
        #[arg(long, default_value_t = 2_000_000)]
        backlog: usize,
    },
    /// N instances checked, then /metrics, /api/actors (whole and paged) and `status` timed.
    Surfaces {
        #[arg(long, default_value_t = 50_000)]
        instances: usize,
        #[arg(long, default_value_t = 1000)]
        page: usize,
    },
    /// All scenarios at a tiny size (keeps the harness from rotting), then a JSON summary.
    Smoke,
    /// Regenerate a document's tables from a run's files: every `<!-- bench:NAME -->` block
    /// of DOC gets DIR/NAME.md (e.g. `bench splice target/bench docs/benchmarks.md`).
    Splice { dir: PathBuf, doc: PathBuf },
    /// (internal) run the naive Duroxide loop's workers against DATABASE_URL until killed.
    #[command(hide = true)]
    NaiveWorker { url: String, schema: String },
}

/// The name of a run's files under `--out`: the scenario, and what sets this run apart from
/// its default (e.g. `idle-direct`, `capacity-20000`, `capacity-10000-5400s`).
fn out_name(scenario: &Scenario) -> String {
    match scenario {
        Scenario::Latency { .. } => "latency".into(),
        Scenario::Idle { targets, .. } => match targets {
            pooler::Targets::Pooled => "idle".into(),
            pooler::Targets::Direct => "idle-direct".into(),
        },
        Scenario::Burst { targets, .. } => match targets {
            burst::Targets::Both => "burst".into(),
            burst::Targets::Pooled => "burst-pooled".into(),
            burst::Targets::Direct => "burst-direct".into(),
        },
        Scenario::Capacity {
            actors,
            duration,
            targets,
            ..
        } => {
            let mut name = format!("capacity-{actors}");
            if duration != "1800s" {
                name.push_str(&format!("-{duration}"));
            }
            if *targets == pooler::Targets::Direct {
                name.push_str("-direct");
            }
            name
        }
        Scenario::Recovery { .. } => "recovery".into(),
        Scenario::Outage { .. } => "outage".into(),
        Scenario::Retention { .. } => "retention".into(),
        Scenario::Surfaces { instances, .. } => format!("surfaces-{instances}"),
        Scenario::Smoke => "smoke".into(),
        Scenario::Splice { .. } => "splice".into(),
        Scenario::NaiveWorker { .. } => "naive-worker".into(),
    }
}

fn dur(s: &str) -> Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!(e))
}

/// A scenario's report as JSON, for `--out`.
fn json(report: impl serde::Serialize) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(report)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Scenario::Splice { dir, doc } = &args.scenario {
        return splice::run(dir, doc);
    }
    let name = out_name(&args.scenario);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = rt.block_on(async move {
        match args.scenario {
            Scenario::Splice { .. } => Ok(serde_json::Value::Null),
            Scenario::Latency {
                inserts,
                poll_intervals,
                idle_window,
                job_queue_concurrency,
            } => {
                let job_queue = match job_queue_concurrency {
                    0 => jobqueue::JobQueueBaseline::Skip,
                    _ => jobqueue::JobQueueBaseline::Run,
                };
                latency::run(inserts, &poll_intervals, dur(&idle_window)?, job_queue)
                    .await
                    .and_then(json)
            }
            Scenario::Idle {
                actors,
                window,
                warmup,
                targets,
            } => idle::run(actors, dur(&window)?, dur(&warmup)?, targets)
                .await
                .and_then(json),
            Scenario::Burst {
                instances,
                service_flags,
                targets,
                job_queue_concurrency,
            } => burst::run(instances, &service_flags, targets, job_queue_concurrency)
                .await
                .and_then(json),
            Scenario::Capacity {
                actors,
                interval,
                duration,
                baseline_actors,
                service_flags,
                targets,
            } => capacity::run(
                actors,
                dur(&interval)?,
                dur(&duration)?,
                baseline_actors,
                &service_flags,
                targets == pooler::Targets::Pooled,
            )
            .await
            .and_then(json),
            Scenario::Recovery { rows, outage } => {
                recovery::run(rows, dur(&outage)?).await.and_then(json)
            }
            Scenario::Outage {
                instances,
                outage,
                quick,
            } => outage::run(instances, dur(&outage)?, quick)
                .await
                .and_then(json),
            Scenario::Retention { backlog } => retention::run(backlog).await.and_then(json),
            Scenario::Surfaces { instances, page } => {
                surfaces::run(instances, page).await.and_then(json)
            }
            Scenario::Smoke => smoke::run().await.map(|()| serde_json::Value::Null),
            Scenario::NaiveWorker { url, schema } => naive::worker(&url, &schema)
                .await
                .map(|()| serde_json::Value::Null),
        }
    })?;
    match args.out {
        Some(dir) => report::write(&dir, &name, figures),
        None => Ok(()),
    }
}
