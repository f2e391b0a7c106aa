//! What the capacity scenario reads from the databases: renewal lags, warm-up progress,
//! checks and staleness gaps.

use std::collections::HashMap;

use anyhow::Result;

use crate::harness::{Env, Quantiles};

/// Lags of the renewals that ran in `[from, to)` (the last renewal of each actor there); an
/// early renewal (a fresh actor's jittered second one, one right after a continue-as-new)
/// counts as 0 s late.
pub(super) async fn renewal_lags(env: &Env, from: f64, to: f64) -> Result<Vec<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT greatest(renewal_lag_seconds, 0) FROM toygres_actors.probe_leases
          WHERE renewal_lag_seconds IS NOT NULL
            AND renewed_at >= to_timestamp($1) AND renewed_at < to_timestamp($2)",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&env.pool)
    .await?)
}

/// Rows whose current actor is past its first execution.
pub(super) async fn continued_as_new(env: &Env, schema: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM toygres_cms.instances c
           JOIN {schema}.instances i ON i.instance_id = c.instance_actor_orchestration_id
          WHERE i.current_execution_id > 1"
    ))
    .fetch_one(&env.pool)
    .await?)
}

/// The decisions the service recorded inside the window, by action and trigger ("restart
/// (stale) 3, …"; empty: none). An actor younger than the window comes from one of them.
pub(super) async fn decisions_in(env: &Env, from: f64, to: f64) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT action || ' (' || trigger || ')', count(*) FROM toygres_actors.decisions
          WHERE decided_at >= to_timestamp($1) AND decided_at <= to_timestamp($2)
          GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&env.pool)
    .await?)
}

/// Checks inside the window, and the staleness gaps: every gap between consecutive checks
/// of one instance inside the window, plus the open gap from each instance's last check to
/// the window's end (a stuck actor counts).
pub(super) async fn gaps(env: &Env, from: f64, to: f64, n: usize) -> Result<(i64, Quantiles)> {
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
    Ok((checks, Quantiles::of(gaps)))
}
