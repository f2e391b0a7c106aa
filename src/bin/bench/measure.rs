//! Measurements the scenarios share: the machine's busy time (/proc/stat) and what the bench
//! database executed (pg_stat_statements), with its top list as a Markdown table.

use crate::harness::Env;
use crate::report;

/// Busy time of the whole machine so far, in seconds of one core (/proc/stat's first line:
/// user + nice + system + irq + softirq + steal, in USER_HZ = 100 ticks a second).
pub fn machine_busy() -> Option<f64> {
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

/// Statements executed in the bench database since the reset, and the top 8 by time;
/// `None` and an empty list without pg_stat_statements.
pub async fn profile(env: &Env) -> (Option<f64>, Vec<(String, i64, f64)>) {
    let rows = if std::env::var_os("BENCH_PGSS_TRACK").is_some() {
        30
    } else {
        8
    };
    profile_by(env, "total_exec_time", rows).await
}

/// As [`profile`], the top `limit` by `order` (a pg_stat_statements column).
pub async fn profile_by(
    env: &Env,
    order: &str,
    limit: u32,
) -> (Option<f64>, Vec<(String, i64, f64)>) {
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::int8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap_or(None);
    let top: Vec<(String, i64, f64)> = sqlx::query_as(&format!(
        "SELECT query, calls, total_exec_time FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
          ORDER BY {order} DESC LIMIT {limit}",
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap_or_default();
    (total.map(|t| t as f64), top)
}

/// A `pg_stat_statements` top list as a Markdown table.
pub fn print_top(title: &str, top: &[(String, i64, f64)]) {
    report::line(&format!("\nTop statements ({title}):\n"));
    if top.is_empty() {
        report::line("(pg_stat_statements not available)");
        return;
    }
    report::line("| calls | total ms | statement |");
    report::line("|---|---|---|");
    for (q, calls, total) in top {
        let q: String = q
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(90)
            .collect();
        report::line(&format!(
            "| {calls} | {total:.0} | `{}` |",
            q.replace('|', "\\|")
        ));
    }
}
