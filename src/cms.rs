//! The CMS: what we read from `toygres_cms.instances` and the one fenced write per health
//! check. The row is the truth; every decision re-reads it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config;
use crate::db::DbError;
use crate::identity::Term;
use crate::sql;

/// An instance as the reconciler and the operator surface see it. Never holds the
/// connection string (only whether there is one), so it can be logged and returned freely.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct InstanceRow {
    pub id: Uuid,
    pub k8s_name: String,
    pub dns_name: Option<String>,
    pub state: crate::instance::InstanceState,
    pub health_status: crate::instance::HealthStatus,
    /// `instance_actor_orchestration_id`: the current actor incarnation.
    pub actor_id: Option<String>,
    pub last_health_check: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Whether `COALESCE(dns_connection_string, ip_connection_string)` is set.
    pub has_target: bool,
}

/// What a health check reads before probing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckRow {
    pub state: String,
    pub actor_id: Option<String>,
    /// The probe target (a secret-bearing connection string: never log it).
    pub target: Option<String>,
    pub last_health_check: Option<DateTime<Utc>>,
}

pub async fn instance_by_id(pool: &PgPool, id: Uuid) -> Result<Option<InstanceRow>, DbError> {
    Ok(sqlx::query_as(sql::INSTANCE_BY_ID)
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// [`instance_by_id`] and what a first check would see of it ([`Seen`]: the state and the
/// probe target, which [`InstanceRow`] never holds).
pub async fn instance_and_seen_by_id(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(InstanceRow, Seen)>, DbError> {
    #[derive(sqlx::FromRow)]
    struct WithTarget {
        #[sqlx(flatten)]
        row: InstanceRow,
        target: Option<String>,
    }
    let found: Option<WithTarget> = sqlx::query_as(sql::INSTANCE_BY_ID_WITH_TARGET)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(found.map(|w| {
        let seen = Seen {
            state: w.row.state.as_str().to_string(),
            target: w.target,
        };
        (w.row, seen)
    }))
}

/// By k8s_name, or dns_name of a live instance.
pub async fn instance_by_name(pool: &PgPool, name: &str) -> Result<Option<InstanceRow>, DbError> {
    Ok(sqlx::query_as(sql::INSTANCE_BY_NAME)
        .bind(name)
        .fetch_optional(pool)
        .await?)
}

pub async fn instance_for_check(pool: &PgPool, id: Uuid) -> Result<Option<CheckRow>, DbError> {
    Ok(sqlx::query_as(sql::INSTANCE_FOR_CHECK)
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// One health check's result, as written to the CMS.
#[derive(Debug, Clone)]
pub struct HealthRecord<'a> {
    pub instance_id: Uuid,
    pub actor_id: &'a str,
    /// What the probe observed: healthy, unhealthy or unknown.
    pub observed: &'a str,
    /// Leave health_status as it is (a failure below the consecutive-failure threshold).
    pub keep_status: bool,
    pub postgres_version: Option<&'a str>,
    pub response_time_ms: Option<i32>,
    /// Already redacted.
    pub error: Option<&'a str>,
}

/// What the fenced write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Written; carries the previous health_status.
    Written { previous: String },
    /// This actor is no longer the current one (or the row is gone): nothing written.
    Superseded,
}

/// A version-1 actor's check: fenced by the actor id alone (under a probe lease:
/// [`record_check_seen`]).
pub async fn record_health(pool: &PgPool, rec: &HealthRecord<'_>) -> Result<Recorded, DbError> {
    let previous: Option<String> = sqlx::query_scalar(sql::RECORD_HEALTH)
        .bind(rec.instance_id)
        .bind(rec.actor_id)
        .bind(None::<String>)
        .bind(rec.observed)
        .bind(rec.keep_status)
        .bind(rec.postgres_version)
        .bind(rec.response_time_ms)
        .bind(rec.error)
        .fetch_one(pool)
        .await?;
    Ok(match previous {
        Some(previous) => Recorded::Written { previous },
        None => Recorded::Superseded,
    })
}

/// What a check under a probe lease was made against: the row's state and probe target.
/// The fenced write compares both and returns them as they are now, so the next check
/// probes without reading the row first ([`record_check_seen`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Seen {
    pub state: String,
    /// The probe target (a secret-bearing connection string: never log it).
    pub target: Option<String>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("state", &self.state)
            .field("has_target", &self.target.is_some())
            .finish()
    }
}

impl From<CheckRow> for Seen {
    fn from(row: CheckRow) -> Self {
        Seen {
            state: row.state,
            target: row.target,
        }
    }
}

/// What the write of a check under a probe lease found ([`record_check_seen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Written; the previous health_status, and the row as it is now.
    Written { previous: String, now: Seen },
    /// The row's state or target is not what the probe was made against: nothing written.
    Changed(Seen),
    /// The lease, holder, epoch, liveness or actor fence failed (or the row is gone):
    /// nothing written.
    Refused,
}

pub use crate::config::CheckCommit;

/// The one statement of a check under a probe lease (`migrations/0008`): fenced on actor
/// id, holder, epoch and the holder's liveness, and on the state and target in `seen`.
/// `commit` says whether the write waits for the WAL flush (`sql/record_check_seen.sql`).
pub async fn record_check_seen(
    pool: &PgPool,
    rec: &HealthRecord<'_>,
    holder: (&str, i64),
    seen: &Seen,
    commit: CheckCommit,
) -> Result<Fenced, DbError> {
    type Row = (
        Option<bool>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (written, previous, state, target, _async): Row = sqlx::query_as(sql::RECORD_CHECK_SEEN)
        .bind(rec.instance_id)
        .bind(rec.actor_id)
        .bind(holder.0)
        .bind(holder.1)
        .bind(&seen.state)
        .bind(seen.target.as_deref())
        .bind(rec.observed)
        .bind(rec.keep_status)
        .bind(rec.postgres_version)
        .bind(rec.response_time_ms)
        .bind(rec.error)
        .bind(commit == CheckCommit::Async)
        .fetch_one(pool)
        .await?;
    Ok(fenced_from(written, previous, state, target))
}

/// A check write's answer from the columns both check statements return (`written`,
/// `previous_status`, `row_state`, `row_target`).
pub fn fenced_from(
    written: Option<bool>,
    previous: Option<String>,
    state: Option<String>,
    target: Option<String>,
) -> Fenced {
    match (written, previous, state, target) {
        (Some(written), previous, Some(state), target) => {
            let now = Seen { state, target };
            if written {
                Fenced::Written {
                    previous: previous.unwrap_or_default(),
                    now,
                }
            } else {
                Fenced::Changed(now)
            }
        }
        _ => Fenced::Refused,
    }
}

/// Compare-and-swap `instance_actor_orchestration_id` from `expected` to `new` (`None`
/// clears it). A non-`None` `new` is only written while the state calls for an actor.
/// Returns whether the swap happened.
pub async fn swap_actor_id(
    pool: &PgPool,
    id: Uuid,
    expected: Option<&str>,
    new: Option<&str>,
    actor_states: &[String],
) -> Result<bool, DbError> {
    let row: Option<Uuid> = sqlx::query_scalar(sql::SWAP_ACTOR_ID)
        .bind(id)
        .bind(expected)
        .bind(new)
        .bind(actor_states)
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

/// Delete health history older than `retention`, batch after batch ([`config::PRUNE_BATCH`]
/// rows each, so no long lock) until none is left or `budget` is spent; returns rows
/// deleted. One batch per pruning period could not keep up with a large fleet (10,000
/// instances at 30 s write 28.8 M rows a day). With a `fence` (the leader's term) each batch
/// asserts the term before it scans: a leader that lost its term mid-pass deletes nothing
/// more (the batch fails with `TA001`).
pub async fn prune_health_history(
    pool: &PgPool,
    retention: std::time::Duration,
    budget: std::time::Duration,
    fence: Option<&Term>,
) -> Result<u64, DbError> {
    let started = std::time::Instant::now();
    let mut total = 0;
    loop {
        let batch = std::time::Instant::now();
        let query = sqlx::query(sql::PRUNE_HEALTH_HISTORY)
            .bind(retention.as_secs_f64())
            .bind(config::PRUNE_BATCH);
        let n = bind_fence(query, fence)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < config::PRUNE_BATCH as u64 || started.elapsed() >= budget {
            return Ok(total);
        }
        // Deleting at most PRUNE_DUTY of the time leaves the checks their CPU and WAL; the
        // pause never runs past the budget.
        let left = budget.saturating_sub(started.elapsed());
        tokio::time::sleep(prune_pause(batch.elapsed()).min(left)).await;
    }
}

/// Delete decisions older than `retention` (one batch of at most 10,000), fenced by the
/// leader's term as [`prune_health_history`] is; returns rows deleted.
pub async fn prune_decisions(
    pool: &PgPool,
    retention: std::time::Duration,
    fence: Option<&Term>,
) -> Result<u64, DbError> {
    let query = sqlx::query(sql::PRUNE_DECISIONS).bind(retention.as_secs_f64());
    Ok(bind_fence(query, fence)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Delete the rows of replicas whose heartbeat expired more than `grace` ago and that hold
/// no probe lease (one batch of at most 10,000), fenced as [`prune_decisions`]; returns rows
/// deleted.
pub async fn prune_replicas(
    pool: &PgPool,
    grace: std::time::Duration,
    fence: Option<&Term>,
) -> Result<u64, DbError> {
    let query = sqlx::query(sql::PRUNE_REPLICAS).bind(grace.as_secs_f64());
    Ok(bind_fence(query, fence)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Delete restart requests handled more than `retention` ago (one batch of at most 10,000),
/// fenced as [`prune_decisions`]; returns rows deleted.
pub async fn prune_restart_requests(
    pool: &PgPool,
    retention: std::time::Duration,
    fence: Option<&Term>,
) -> Result<u64, DbError> {
    let query = sqlx::query(sql::PRUNE_RESTART_REQUESTS).bind(retention.as_secs_f64());
    Ok(bind_fence(query, fence)
        .execute(pool)
        .await?
        .rows_affected())
}

/// A pruning statement's last three parameters: the term's name, epoch and number, or NULLs
/// for an unfenced pass (the SQL then skips `toygres_actors.assert_term`).
fn bind_fence<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    fence: Option<&'q Term>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(fence.map(|t| t.name.as_str()))
        .bind(fence.map(|t| t.epoch))
        .bind(fence.map(|t| t.term))
}

/// The pause after a full batch of the pruner that took `took`: the pruner deletes at most
/// [`config::PRUNE_DUTY`] of the time.
pub fn prune_pause(took: std::time::Duration) -> std::time::Duration {
    took.mul_f64((1.0 - config::PRUNE_DUTY) / config::PRUNE_DUTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pruner_deletes_at_most_its_duty_of_the_time() {
        let took = Duration::from_millis(6);
        let pause = prune_pause(took);
        let duty = took.as_secs_f64() / (took + pause).as_secs_f64();
        assert!((duty - config::PRUNE_DUTY).abs() < 1e-9, "duty {duty}");
        assert_eq!(prune_pause(Duration::ZERO), Duration::ZERO);
    }
}
