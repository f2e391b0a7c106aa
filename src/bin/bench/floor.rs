//! The floor of the job shape "a new connection per probe": `pgbench -C` (PostgreSQL's own
//! client, in C, nothing else running) connects, asks `sql/probe.sql` and disconnects, on
//! the same server in the same run. Neither the service nor the job queue can finish the same
//! probes sooner at the same concurrency: the rest of their figures is their own work (the
//! job's bookkeeping, the health write, the service's start, lease and Duroxide turn), the
//! floor is the machine's (a backend forked per probe).

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::harness::{Baseline, DASH, Env, ms, row, secs};

/// What `pgbench -C` measured at one concurrency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    /// Clients at once.
    pub clients: usize,
    /// Probes a second (connect, query, disconnect), all clients together.
    pub per_second: f64,
    /// One probe's mean time, its connect included (seconds).
    pub mean_s: f64,
}

impl Floor {
    /// The time `n` probes take at this rate.
    pub fn seconds_for(&self, n: usize) -> f64 {
        n as f64 / self.per_second
    }
}

/// `n` probes on new connections, `clients` at once, by `pgbench -C` against `env`'s server;
/// `None` (and why, printed) when pgbench is not installed beside the server or fails.
pub fn new_connections(env: &Env, n: usize, clients: usize) -> Option<Floor> {
    match run(env, n, clients.max(1)) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("no pgbench floor: {e:#}");
            None
        }
    }
}

fn run(env: &Env, n: usize, clients: usize) -> Result<Floor> {
    let pgbench = toygres_actors::embedded_pg::find_bindir()?.join("pgbench");
    if !pgbench.is_file() {
        bail!("{} not found", pgbench.display());
    }
    let script = std::env::temp_dir().join(format!("bench-floor-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!("{};\n", toygres_actors::sql::PROBE.trim_end()),
    )?;
    let out = Command::new(&pgbench)
        .args(["-h", "127.0.0.1", "-U", "toygres", "-n", "-C"])
        .args(["-p", &env.pg.port().to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-t", &n.div_ceil(clients).to_string()])
        .arg("-f")
        .arg(&script)
        .arg("postgres")
        .output()
        .context("run pgbench")?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
    };
    Ok(Floor {
        clients,
        per_second: field("tps = ").context("pgbench printed no tps")?,
        mean_s: field("latency average = ").context("pgbench printed no latency")? / 1e3,
    })
}

/// The burst's floor rows: `n` probes at each measured concurrency, against the job queue's
/// commit → all healthy (the same probes, plus its work).
pub fn burst_rows(n: usize, floors: &[Floor], jobqueue_s: Option<f64>) {
    for f in floors {
        let took = f.seconds_for(n);
        row(
            &format!(
                "{n} new connections, each asking the probe query, nothing else ({} at once; the floor: pgbench -C on the same server, {:.0} a second)",
                f.clients, f.per_second
            ),
            secs(Some(took), 2),
            Baseline::Ratio {
                text: secs(jobqueue_s, 2),
                value: Some(took),
                base: jobqueue_s,
            },
            DASH,
            None,
        );
    }
}

/// The single inserts' floor row: one probe on a new connection, nothing else.
pub fn latency_row(floor: Option<&Floor>) {
    row(
        "a new connection and the probe query, one at a time, nothing else (the floor: pgbench -C on the same server), mean",
        ms(floor.map(|f| f.mean_s)),
        Baseline::None,
        DASH,
        None,
    );
}
