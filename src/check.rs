//! One health check: probe the instance → one fenced write.
//!
//! This is the unit of work the replica's probe scheduler ([`crate::lease`]) runs on the
//! interval for every instance it holds the probe lease of ([`leased_check`]), and that a
//! version-1 actor ran as its activity ([`health_check`]). The [`fence`] every check (and
//! every lease renewal) passes: the row exists, still names this actor, and its state still
//! calls for one. The write repeats it atomically, so a check that raced a restart or a
//! lease move writes nothing. Under a lease the write also compares the state and target the
//! probe was made against and returns the row as it is now ([`cms::record_check_seen`]):
//! the next check probes without reading the row first, one statement per check.
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

pub use crate::check_writes::Pace;
use crate::cms::{self, Fenced, HealthRecord, Recorded};
use crate::metrics;
use crate::probe::Prober;

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
    /// Where checks under a probe lease send their writes (batched; `--check-commit` says
    /// how they commit).
    pub writes: crate::check_writes::CheckWrites,
    /// The single starts' first checks the store's orchestration fetches wait for: a check
    /// at [`Pace::Now`] ends its instance's ([`crate::first_checks`]).
    pub first_checks: Arc<crate::first_checks::FirstChecks>,
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

/// Why an actor must end: its row no longer calls for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorEnds {
    #[error("instance row deleted")]
    RowDeleted,
    #[error("superseded: current actor is {}", .0.as_deref().unwrap_or("none"))]
    Superseded(Option<String>),
    #[error("superseded while probing")]
    SupersededWhileProbing,
    #[error("superseded while renewing")]
    SupersededWhileRenewing,
    #[error("state `{0}` calls for no actor")]
    StateWithoutActor(String),
}

/// Why a check or a renewal could not run now (it runs again at its next turn).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("the row changed twice while probing; checking again next interval")]
    RowKeptChanging,
    #[error("no answer within {0:?}")]
    NoAnswer(std::time::Duration),
    #[error("the check panicked: {0}")]
    Panicked(#[from] crate::panics::Panicked),
}

/// The row as the fence found it.
pub(crate) enum RowFence {
    /// It still calls for this actor.
    Passed(cms::CheckRow),
    /// The actor must end.
    Ends(ActorEnds),
}

/// The fence every check and renewal passes first: the row exists, still names this actor,
/// and its state still calls for one.
pub(crate) fn fence(
    row: Option<cms::CheckRow>,
    actor_id: &str,
    actor_states: &[String],
) -> RowFence {
    let Some(row) = row else {
        return RowFence::Ends(ActorEnds::RowDeleted);
    };
    if row.actor_id.as_deref() != Some(actor_id) {
        return RowFence::Ends(ActorEnds::Superseded(row.actor_id));
    }
    if !actor_states.contains(&row.state) {
        return RowFence::Ends(ActorEnds::StateWithoutActor(row.state));
    }
    RowFence::Passed(row)
}

/// Read the row and pass it through [`fence`].
pub(crate) async fn read_fenced(
    pool: &PgPool,
    id: Uuid,
    actor_id: &str,
    actor_states: &[String],
) -> Result<RowFence, CheckError> {
    let row = cms::instance_for_check(pool, id).await?;
    Ok(fence(row, actor_id, actor_states))
}

/// What one probe observed, ready to be written.
struct Observation {
    observed: &'static str,
    failures: u32,
    version: Option<String>,
    response_ms: Option<u64>,
    /// Already redacted.
    error: Option<String>,
    /// Leave health_status as it is (a failure below the consecutive-failure threshold).
    keep_status: bool,
}

impl Observation {
    fn record<'a>(&'a self, id: uuid::Uuid, actor_id: &'a str) -> HealthRecord<'a> {
        HealthRecord {
            instance_id: id,
            actor_id,
            observed: self.observed,
            keep_status: self.keep_status,
            postgres_version: self.version.as_deref(),
            response_time_ms: self.response_ms.map(|ms| ms.min(i32::MAX as u64) as i32),
            error: self.error.as_deref(),
        }
    }

    fn outcome(&self) -> CheckOutcome {
        CheckOutcome::Checked {
            status: self.observed.to_string(),
            consecutive_failures: self.failures,
        }
    }

    fn log_change(&self, id: Uuid, actor_id: &str, previous: &str) {
        if previous != self.observed && !self.keep_status && crate::quiet::HEALTH_CHANGES.admit() {
            tracing::info!(instance_id = %id, actor_id, from = %previous, to = self.observed,
                error = self.error.as_deref().unwrap_or(""), "health changed");
        }
    }
}

/// Probe `target` (none yet: `unknown`) and judge the answer.
async fn observe(deps: &ActorDeps, input: &CheckInput, target: Option<&str>) -> Observation {
    let id = input.instance_id;
    let started = Instant::now();
    let (observed, failures, version, response_ms, error) = match target {
        None => (
            "unknown",
            0,
            None,
            None,
            Some("no connection string yet".to_string()),
        ),
        Some(target) => {
            crate::failpoint::hit(crate::failpoint::Point::CheckProbe);
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
    Observation {
        observed,
        failures,
        version,
        response_ms,
        error,
        keep_status,
    }
}

/// The actor (or this replica's probing) must end: nothing is written.
fn exit(deps: &ActorDeps, id: Uuid, actor_id: &str, reason: ActorEnds) -> CheckOutcome {
    deps.prober.forget(id);
    if crate::quiet::ACTOR_EXITS.admit() {
        tracing::info!(instance_id = %id, actor_id, reason = %reason, "actor exits");
    }
    CheckOutcome::Exit {
        reason: reason.to_string(),
    }
}

/// The health check activity of a version-1 actor: read → probe → record, fenced on the
/// actor id alone.
pub async fn health_check(
    deps: &ActorDeps,
    actor_id: &str,
    input: CheckInput,
) -> Result<CheckOutcome, CheckError> {
    let id = input.instance_id;
    let row = match read_fenced(&deps.pool, id, actor_id, &input.actor_states).await? {
        RowFence::Passed(row) => row,
        RowFence::Ends(reason) => return Ok(exit(deps, id, actor_id, reason)),
    };
    let obs = observe(deps, &input, row.target.as_deref()).await;
    let recorded = cms::record_health(&deps.pool, &obs.record(id, actor_id)).await?;
    match recorded {
        Recorded::Superseded => Ok(exit(deps, id, actor_id, ActorEnds::SupersededWhileProbing)),
        Recorded::Written { previous } => {
            obs.log_change(id, actor_id, &previous);
            Ok(obs.outcome())
        }
    }
}

/// A check under a probe lease, made by the replica that holds it: probe → one write fenced
/// on actor id, holder, epoch, the holder's liveness, and the state and target the probe
/// was made against. `known` is what the previous check's write returned; without it (a
/// new entry, a state change, an error) the row is read first. Returns the outcome and
/// what the next check may probe without reading. A write that finds the row changed
/// probes again at once against the row as it is (once; a row that changes again waits
/// for the next interval, read afresh).
pub async fn leased_check(
    deps: &ActorDeps,
    actor_id: &str,
    holder: (&str, i64),
    input: CheckInput,
    known: Option<cms::Seen>,
    pace: Pace,
) -> Result<(CheckOutcome, Option<cms::Seen>), CheckError> {
    let id = input.instance_id;
    // However it ends, a first check no longer holds the turns.
    let _first = (pace == Pace::Now).then(|| deps.first_checks.done_on_drop(id));
    let mut seen = match known {
        Some(seen) => seen,
        None => match read_fenced(&deps.pool, id, actor_id, &input.actor_states).await? {
            RowFence::Passed(row) => row.into(),
            RowFence::Ends(reason) => return Ok((exit(deps, id, actor_id, reason), None)),
        },
    };
    for _ in 0..2 {
        let obs = observe(deps, &input, seen.target.as_deref()).await;
        crate::failpoint::hit(crate::failpoint::Point::CheckBeforeWrite);
        let fenced = deps
            .writes
            .write(&obs.record(id, actor_id), holder, &seen, pace)
            .await?;
        match fenced {
            Fenced::Written { previous, now } => {
                obs.log_change(id, actor_id, &previous);
                return Ok((obs.outcome(), Some(now)));
            }
            Fenced::Changed(now) => {
                if !input.actor_states.contains(&now.state) {
                    let reason = ActorEnds::StateWithoutActor(now.state);
                    return Ok((exit(deps, id, actor_id, reason), None));
                }
                tracing::debug!(instance_id = %id, actor_id, state = %now.state,
                    "the row changed under the probe: probing again");
                seen = now;
            }
            // The lease moved to another replica, our heartbeat lapsed, the actor was
            // superseded or the row is gone: this replica stops probing, the actor goes on.
            Fenced::Refused => {
                deps.prober.forget(id);
                metrics::leases_moved("lost", 1);
                tracing::debug!(instance_id = %id, actor_id, "write refused: probe lease moved, actor superseded, row gone, or our liveness lapsed");
                return Ok((CheckOutcome::LeaseLost, None));
            }
        }
    }
    Err(CheckError::RowKeptChanging)
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
