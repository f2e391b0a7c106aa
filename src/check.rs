//! One health check: read the row → probe the instance → one fenced write.
//!
//! This is the unit of work the replica's probe scheduler ([`crate::lease`]) runs on the
//! interval for every instance it holds the probe lease of, and that a version-1 actor ran
//! as its activity. The [`fence`] every check (and every lease renewal) passes first: the
//! row exists, still names this actor, and its state still calls for one. The write itself
//! ([`cms::record_health`]) repeats the fence atomically, so a check that raced a restart or
//! a lease move writes nothing.
//!
//! An instance that answers is healthy only in the role the fleet expects: a primary, or —
//! with `--expect-standby` — a standby. In the other role it is `unhealthy`, with the reason
//! [`IN_RECOVERY`] or [`NOT_IN_RECOVERY`]; that counts as a failed probe (so
//! `--unhealthy-after` applies).

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cms::{self, HealthRecord, Recorded};
use crate::health::Prober;
use crate::metrics;

/// Input of one health check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckInput {
    pub instance_id: Uuid,
    pub actor_states: Vec<String>,
    pub consecutive_failures: u32,
    pub unhealthy_after: u32,
}

/// What a health check found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Recorded; the actor goes on.
    Checked {
        status: String,
        consecutive_failures: u32,
    },
    /// The actor must end (row gone, state wants no actor, superseded); nothing was written.
    Exit { reason: String },
    /// v2: the probe lease is held by this replica until the next renewal (and a bit).
    Leased { holder: String },
    /// Under a probe lease: the write was refused (the lease moved, the actor was
    /// superseded, or this replica's liveness lapsed). The replica stops probing the
    /// instance; the actor itself is not told to end.
    LeaseLost,
}

/// What the health check activity needs from the process.
pub struct ActorDeps {
    pub pool: PgPool,
    pub prober: Arc<Prober>,
    /// The fleet's instances are standbys (`--expect-standby`).
    pub expect_standby: bool,
}

/// The reason recorded for an instance found in recovery where a primary was expected.
pub const IN_RECOVERY: &str = "in recovery";
/// The reason recorded for a primary where a standby was expected (`--expect-standby`).
pub const NOT_IN_RECOVERY: &str = "not in recovery";

/// Why an instance that answered is unhealthy all the same: it is not in the role the fleet
/// expects. `None` when it is (or when the probe could not tell).
pub fn wrong_role(in_recovery: Option<bool>, expect_standby: bool) -> Option<&'static str> {
    match (in_recovery?, expect_standby) {
        (true, false) => Some(IN_RECOVERY),
        (false, true) => Some(NOT_IN_RECOVERY),
        _ => None,
    }
}

/// The fence every check and renewal passes first: the row exists, still names this actor,
/// and its state still calls for one. `Err` carries why the actor must end.
pub(crate) fn fence(
    row: Option<cms::CheckRow>,
    actor_id: &str,
    actor_states: &[String],
) -> Result<cms::CheckRow, String> {
    let Some(row) = row else {
        return Err("instance row deleted".into());
    };
    if row.actor_id.as_deref() != Some(actor_id) {
        return Err(format!(
            "superseded: current actor is {}",
            row.actor_id.as_deref().unwrap_or("none")
        ));
    }
    if !actor_states.contains(&row.state) {
        return Err(format!("state `{}` calls for no actor", row.state));
    }
    Ok(row)
}

/// The health check activity: read → probe → record.
pub async fn health_check(
    deps: &ActorDeps,
    actor_id: &str,
    holder: Option<(&str, i64)>,
    input: CheckInput,
) -> Result<CheckOutcome, String> {
    let id = input.instance_id;
    let row = cms::instance_for_check(&deps.pool, id)
        .await
        .map_err(|e| e.to_string())?;
    let exit = |reason: String| {
        deps.prober.forget(id);
        if crate::quiet::ACTOR_EXITS.admit() {
            tracing::info!(instance_id = %id, actor_id, reason = %reason, "actor exits");
        }
        Ok(CheckOutcome::Exit { reason })
    };
    let row = match fence(row, actor_id, &input.actor_states) {
        Ok(row) => row,
        Err(reason) => return exit(reason),
    };

    let started = Instant::now();
    let (observed, failures, version, response_ms, error) = match row.target.as_deref() {
        None => (
            "unknown",
            0,
            None,
            None,
            Some("no connection string yet".to_string()),
        ),
        Some(target) => {
            let r = deps.prober.probe(id, target).await;
            if let (true, Some(in_recovery)) = (r.ok, r.in_recovery) {
                metrics::probe_answered(in_recovery);
            }
            let role = wrong_role(r.in_recovery, deps.expect_standby);
            if let (true, Some(reason)) = (r.ok, role) {
                (
                    "unhealthy",
                    input.consecutive_failures.saturating_add(1),
                    r.version,
                    Some(r.response_time_ms),
                    Some(reason.to_string()),
                )
            } else if r.ok {
                ("healthy", 0, r.version, Some(r.response_time_ms), None)
            } else {
                let failures = input.consecutive_failures.saturating_add(1);
                (
                    "unhealthy",
                    failures,
                    None,
                    Some(r.response_time_ms),
                    r.error,
                )
            }
        }
    };
    metrics::record_health_check(observed, started.elapsed());
    // Below the threshold a failure is recorded in the history but the status stays.
    let keep_status = observed == "unhealthy" && failures < input.unhealthy_after.max(1);
    let recorded = cms::record_health(
        &deps.pool,
        &HealthRecord {
            instance_id: id,
            actor_id,
            holder,
            observed,
            keep_status,
            postgres_version: version.as_deref(),
            response_time_ms: response_ms.map(|ms| ms.min(i32::MAX as u64) as i32),
            error: error.as_deref(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    match recorded {
        // Under a probe lease a refused write may also mean the lease moved to another
        // replica or our heartbeat lapsed: this replica stops probing, the actor goes on.
        Recorded::Superseded if holder.is_some() => {
            tracing::debug!(instance_id = %id, actor_id, "write refused: probe lease moved, actor superseded, or our liveness lapsed");
            Ok(CheckOutcome::LeaseLost)
        }
        Recorded::Superseded => exit("superseded while probing".into()),
        Recorded::Written { previous } => {
            if previous != observed && !keep_status && crate::quiet::HEALTH_CHANGES.admit() {
                tracing::info!(instance_id = %id, actor_id, from = %previous, to = observed,
                    error = error.as_deref().unwrap_or(""), "health changed");
            }
            Ok(CheckOutcome::Checked {
                status: observed.to_string(),
                consecutive_failures: failures,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_role_is_healthy() {
        assert_eq!(wrong_role(Some(true), false), Some(IN_RECOVERY));
        assert_eq!(wrong_role(Some(false), false), None);
        assert_eq!(wrong_role(Some(true), true), None);
        assert_eq!(wrong_role(Some(false), true), Some(NOT_IN_RECOVERY));
        assert_eq!(wrong_role(None, false), None);
        assert_eq!(wrong_role(None, true), None);
    }
}
