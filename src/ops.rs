//! Operator operations, shared by the HTTP API and the CLI (one implementation of the
//! logic, two front ends): list with verdicts, one actor's status, explain, start, restart,
//! cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::cms::{self, InstanceRow};
use crate::duro::{ActorState, DuroError};
use crate::reconcile::{Ask, Did, Fleet, Mode, Reconciler, Trigger};
use crate::sql;
use crate::verdict::{self, Verdict};

/// Why an operation could not be done; each maps to an HTTP status and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no instance named `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DuroError> for OpsError {
    fn from(e: DuroError) -> Self {
        match e {
            DuroError::Conflict { .. } | DuroError::NotWanted(_) | DuroError::RateLimited(_) => {
                OpsError::Conflict(e.to_string())
            }
            other => OpsError::Internal(crate::redact::redact_error(&other.to_string())),
        }
    }
}

impl From<crate::db::DbError> for OpsError {
    fn from(e: crate::db::DbError) -> Self {
        OpsError::Internal(crate::redact::redact_error(&e.to_string()))
    }
}

impl From<sqlx::Error> for OpsError {
    fn from(e: sqlx::Error) -> Self {
        OpsError::Internal(crate::redact::redact_error(&e.to_string()))
    }
}

/// Reject names no instance can have, before touching the database.
pub fn validate_name(name: &str) -> Result<(), OpsError> {
    if name.trim().is_empty() {
        return Err(OpsError::BadRequest("instance name is empty".into()));
    }
    if name.chars().count() > 255 {
        return Err(OpsError::BadRequest(
            "instance name is longer than 255 characters".into(),
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(OpsError::BadRequest(
            "instance name contains control characters".into(),
        ));
    }
    Ok(())
}

/// One instance as `status` and `/api/actors` show it. No connection strings.
#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    pub k8s_name: String,
    pub instance_id: Uuid,
    pub state: crate::instance::InstanceState,
    pub health_status: crate::instance::HealthStatus,
    pub actor_id: Option<String>,
    /// running, pending, finished:<status>, absent, none.
    pub actor_status: String,
    pub last_health_check: Option<DateTime<Utc>>,
    pub last_check_age_seconds: Option<i64>,
    pub verdict: Verdict,
    pub reason: String,
}

fn actor_status_text(actor: Option<&ActorState>) -> String {
    match actor {
        None => "none".into(),
        Some(ActorState::Absent) => "absent".into(),
        Some(ActorState::Pending) => "pending".into(),
        Some(ActorState::Running { .. }) => "running".into(),
        Some(ActorState::Finished { status }) => format!("finished:{}", status.to_lowercase()),
    }
}

fn view(obs: &verdict::Observed, d: &verdict::Decision, now: DateTime<Utc>) -> ActorView {
    ActorView {
        k8s_name: obs.row.k8s_name.clone(),
        instance_id: obs.row.id,
        state: obs.row.state.clone(),
        health_status: obs.row.health_status.clone(),
        actor_id: obs.row.actor_id.clone(),
        actor_status: actor_status_text(obs.actor.as_ref()),
        last_health_check: obs.row.last_health_check,
        last_check_age_seconds: obs.row.last_health_check.map(|t| (now - t).num_seconds()),
        verdict: d.verdict,
        reason: d.reason.clone(),
    }
}

/// Every instance with its verdict (optionally only one verdict), read from the database
/// now (the CLI's `status`; the API serves the poller's snapshot, [`crate::snapshot`]).
pub async fn list(
    reconciler: &Reconciler,
    only: Option<Verdict>,
) -> Result<Vec<ActorView>, OpsError> {
    let fleet = reconciler.fleet().await?;
    let mut out = views(&fleet);
    if let Some(v) = only {
        out.retain(|a| a.verdict == v);
    }
    Ok(out)
}

/// The fleet as `status` and `/api/actors` show it, ages as of the moment it was observed.
pub fn views(fleet: &Fleet) -> Vec<ActorView> {
    let now = fleet.observed_at;
    let mut out: Vec<ActorView> = fleet
        .instances
        .iter()
        .map(|(o, d)| view(o, d, now))
        .collect();
    out.extend(
        fleet
            .deleted_with_live_actors
            .iter()
            .map(|(id, actors)| ActorView {
                k8s_name: format!("(deleted {id})"),
                instance_id: *id,
                state: "deleted".into(),
                health_status: "unknown".into(),
                actor_id: actors.first().cloned(),
                actor_status: "running".into(),
                last_health_check: None,
                last_check_age_seconds: None,
                verdict: Verdict::Orphan,
                reason: format!("row deleted, but {} runs", actors.join(", ")),
            }),
    );
    out
}

async fn find(reconciler: &Reconciler, name: &str) -> Result<InstanceRow, OpsError> {
    validate_name(name)?;
    cms::instance_by_name(reconciler.pool(), name)
        .await?
        .ok_or_else(|| OpsError::NotFound(name.to_string()))
}

/// One instance's actor: status, verdict, current actor id, last check.
pub async fn status(reconciler: &Reconciler, name: &str) -> Result<ActorView, OpsError> {
    let row = find(reconciler, name).await?;
    let obs = reconciler.observe(row).await?;
    let now = crate::clock::now();
    let d = verdict::decide(&obs, &reconciler.rules, now);
    Ok(view(&obs, &d, now))
}

/// The result of start / restart / cancel.
#[derive(Debug, Clone, Serialize)]
pub struct ActionResult {
    pub k8s_name: String,
    pub action: Did,
    pub changed: bool,
    pub old_actor_id: Option<String>,
    pub new_actor_id: Option<String>,
    pub message: String,
    /// Set when the outcome will not last (e.g. cancel of an instance the CMS still wants
    /// monitored: the reconciler starts a new actor at its next pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Start an actor if none is live (idempotent).
pub async fn start(
    reconciler: &Reconciler,
    name: &str,
    who: &'static str,
) -> Result<ActionResult, OpsError> {
    let row = find(reconciler, name).await?;
    if !reconciler.wants_actor(&row.state) {
        return Err(OpsError::Conflict(format!(
            "state `{}` calls for no actor; change the row, not the actor",
            row.state
        )));
    }
    let obs = reconciler.observe(row.clone()).await?;
    if obs.actor.as_ref().is_some_and(ActorState::is_live) {
        return Ok(ActionResult {
            k8s_name: row.k8s_name,
            action: Did::Start,
            changed: false,
            old_actor_id: row.actor_id.clone(),
            new_actor_id: row.actor_id,
            message: "an actor is already running".into(),
            warning: None,
        });
    }
    let outcome = reconciler
        .reconcile_instance(row.id, &Trigger::Operator(who), Ask::Restart, Mode::Act)
        .await?;
    Ok(ActionResult {
        k8s_name: outcome.k8s_name,
        action: Did::Start,
        changed: true,
        old_actor_id: outcome.old_actor_id,
        new_actor_id: outcome.new_actor_id,
        message: "actor started".into(),
        warning: None,
    })
}

/// A new incarnation (new id, old one cancelled).
pub async fn restart(
    reconciler: &Reconciler,
    name: &str,
    who: &'static str,
) -> Result<ActionResult, OpsError> {
    let row = find(reconciler, name).await?;
    if !reconciler.wants_actor(&row.state) {
        return Err(OpsError::Conflict(format!(
            "state `{}` calls for no actor; a restart cannot bring one about",
            row.state
        )));
    }
    let outcome = reconciler
        .reconcile_instance(row.id, &Trigger::Operator(who), Ask::Restart, Mode::Act)
        .await?;
    Ok(ActionResult {
        k8s_name: outcome.k8s_name,
        action: Did::Restart,
        changed: true,
        old_actor_id: outcome.old_actor_id,
        new_actor_id: outcome.new_actor_id.clone(),
        message: format!(
            "restarted: new actor {}",
            outcome.new_actor_id.as_deref().unwrap_or("?")
        ),
        warning: None,
    })
}

/// Cancel every live incarnation. If the row still calls for an actor, the reconciler will
/// start a new one at its next pass (the row is the truth) — the result says so.
pub async fn cancel(
    reconciler: &Reconciler,
    name: &str,
    who: &'static str,
) -> Result<ActionResult, OpsError> {
    let row = find(reconciler, name).await?;
    let reason = format!("cancelled by operator ({who})");
    // `changed` says whether a live actor was cancelled: the row keeps naming its last
    // actor after a cancel, so its id alone does not tell.
    let obs = reconciler.observe(row.clone()).await?;
    let was_live =
        obs.actor.as_ref().is_some_and(ActorState::is_live) || !obs.other_live.is_empty();
    let t = reconciler.cancel_all(&row, &reason).await?;
    let warning = reconciler.wants_actor(&row.state).then(|| {
        format!(
            "the CMS row still calls for an actor (state `{}`): the reconciler will start a new one at its \
             next pass unless the row changes",
            row.state
        )
    });
    sqlx::query(sql::INSERT_DECISION)
        .bind(row.id)
        .bind(&row.k8s_name)
        .bind("cancel")
        .bind(&reason)
        .bind(t.old_actor_id.as_deref())
        .bind(None::<String>)
        .bind(format!("operator:{who}"))
        .bind(&reconciler.replica)
        .bind(None::<String>)
        // An operator's request: not fenced by a term.
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .execute(reconciler.pool())
        .await?;
    Ok(ActionResult {
        k8s_name: row.k8s_name,
        action: Did::Cancel,
        changed: was_live,
        old_actor_id: t.old_actor_id,
        new_actor_id: None,
        message: if was_live {
            "actor cancelled".into()
        } else {
            "no live actor to cancel".into()
        },
        warning,
    })
}

/// Everything `explain` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub instance: InstanceRow,
    pub actor: Option<ActorState>,
    pub actor_executions: Option<i64>,
    pub actor_history_events: Option<i64>,
    pub other_live_actors: Vec<String>,
    /// Instance actors of this instance alive in toygres' own store (to be adopted).
    pub legacy_actors: Vec<String>,
    pub verdict: Verdict,
    pub reason: String,
    pub would_do: &'static str,
    pub recent_checks: Vec<CheckView>,
    pub recent_decisions: Vec<DecisionView>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CheckView {
    pub checked_at: DateTime<Utc>,
    pub status: String,
    pub response_time_ms: Option<i32>,
    pub postgres_version: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DecisionView {
    pub decided_at: DateTime<Utc>,
    pub action: String,
    pub reason: String,
    pub old_actor_id: Option<String>,
    pub new_actor_id: Option<String>,
    pub trigger: String,
    pub replica: String,
    pub error: Option<String>,
}

pub async fn explain(reconciler: &Reconciler, name: &str) -> Result<Explanation, OpsError> {
    let row = find(reconciler, name).await?;
    let obs = reconciler.observe(row.clone()).await?;
    let d = verdict::decide(&obs, &reconciler.rules, crate::clock::now());
    let pool = reconciler.pool();
    let (executions, events) = match &row.actor_id {
        Some(id) => {
            let r: (Option<i64>, Option<i64>) = sqlx::query_as(&sql::with_duroxide_schema(
                sql::ACTOR_HISTORY_SUMMARY,
                reconciler.store_schema(),
            ))
            .bind(id)
            .fetch_one(pool)
            .await?;
            r
        }
        None => (None, None),
    };
    let recent_checks: Vec<CheckView> = sqlx::query_as(sql::RECENT_CHECKS)
        .bind(row.id)
        .fetch_all(pool)
        .await?;
    let recent_decisions: Vec<DecisionView> = sqlx::query_as(sql::RECENT_DECISIONS)
        .bind(row.id)
        .fetch_all(pool)
        .await?;
    Ok(Explanation {
        instance: row,
        actor: obs.actor.clone(),
        actor_executions: executions,
        actor_history_events: events,
        other_live_actors: obs.other_live.clone(),
        legacy_actors: obs.legacy.iter().map(|l| l.actor_id.clone()).collect(),
        verdict: d.verdict,
        reason: d.reason,
        would_do: d.action.label(),
        recent_checks,
        recent_decisions,
    })
}

fn age_text(secs: Option<i64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3600),
    }
}

/// `status` as a table.
pub fn render_table(list: &[ActorView]) -> String {
    let mut out = format!(
        "{:<32} {:<9} {:<56} {:<13} {:>7} {:<9} {}\n",
        "NAME", "STATE", "ACTOR", "ACTOR STATUS", "CHECKED", "HEALTH", "VERDICT"
    );
    for a in list {
        out.push_str(&format!(
            "{:<32} {:<9} {:<56} {:<13} {:>7} {:<9} {}\n",
            a.k8s_name.chars().take(32).collect::<String>(),
            a.state,
            a.actor_id.as_deref().unwrap_or("-"),
            a.actor_status,
            age_text(a.last_check_age_seconds),
            a.health_status,
            a.verdict
        ));
    }
    let mut counts: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| (v, list.iter().filter(|a| a.verdict == *v).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{n} {v}"))
        .collect();
    if counts.is_empty() {
        counts.push("no instances".into());
    }
    out.push_str(&format!(
        "{} instance(s): {}\n",
        list.len(),
        counts.join(", ")
    ));
    out
}

/// `explain` as text.
pub fn render_explanation(e: &Explanation) -> String {
    let r = &e.instance;
    let mut out = String::new();
    out.push_str(&format!("instance   {} ({})\n", r.k8s_name, r.id));
    out.push_str(&format!(
        "row        state={} health={} last_check={} target={}\n",
        r.state,
        r.health_status,
        r.last_health_check
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into()),
        if r.has_target { "set" } else { "none yet" }
    ));
    out.push_str(&format!(
        "actor      {}\n",
        r.actor_id.as_deref().unwrap_or("(none)")
    ));
    out.push_str(&format!(
        "duroxide   {}\n",
        match &e.actor {
            None => "no actor id on the row".to_string(),
            Some(ActorState::Absent) => "unknown to Duroxide".to_string(),
            Some(ActorState::Pending) => "start queued".to_string(),
            Some(ActorState::Running {
                last_progress,
                has_work,
                execution_id,
            }) => format!(
                "Running, execution {execution_id}, last progress {}, work queued: {has_work}",
                last_progress.to_rfc3339()
            ),
            Some(ActorState::Finished { status }) => format!("finished: {status}"),
        }
    ));
    if let (Some(x), Some(h)) = (e.actor_executions, e.actor_history_events) {
        out.push_str(&format!("history    {x} execution(s), {h} event(s) kept\n"));
    }
    if !e.other_live_actors.is_empty() {
        out.push_str(&format!("also live  {}\n", e.other_live_actors.join(", ")));
    }
    if !e.legacy_actors.is_empty() {
        out.push_str(&format!(
            "legacy     {} (toygres' own store)\n",
            e.legacy_actors.join(", ")
        ));
    }
    out.push_str(&format!("verdict    {} — {}\n", e.verdict, e.reason));
    out.push_str(&format!(
        "next       the reconciler would: {}\n",
        e.would_do
    ));
    out.push_str("recent health checks:\n");
    if e.recent_checks.is_empty() {
        out.push_str("  (none)\n");
    }
    for c in &e.recent_checks {
        out.push_str(&format!(
            "  {}  {:<9} {:>5} ms  {}{}\n",
            c.checked_at.to_rfc3339(),
            c.status,
            c.response_time_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            c.postgres_version.as_deref().unwrap_or(""),
            c.error_message
                .as_deref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        ));
    }
    out.push_str("recent decisions:\n");
    if e.recent_decisions.is_empty() {
        out.push_str("  (none)\n");
    }
    for d in &e.recent_decisions {
        out.push_str(&format!(
            "  {}  {:<8} by {} ({}) {} → {}  {}{}\n",
            d.decided_at.to_rfc3339(),
            d.action,
            d.replica,
            d.trigger,
            d.old_actor_id.as_deref().unwrap_or("-"),
            d.new_actor_id.as_deref().unwrap_or("-"),
            d.reason,
            d.error
                .as_deref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// The replicas table `status` prints under the instances.
pub fn render_replicas(replicas: &[crate::replica::ReplicaRow]) -> String {
    let mut out = String::from("\nreplicas:\n");
    if replicas.is_empty() {
        out.push_str("  (none registered)\n");
        return out;
    }
    out.push_str(&format!(
        "  {:<28} {:>20} {:>9} {:>8} {:<8} {}\n",
        "NAME", "EPOCH", "HEARTBEAT", "LEASES", "STATE", "LEADER"
    ));
    for r in replicas {
        let state = if r.draining {
            "draining"
        } else if r.live {
            "live"
        } else {
            "gone"
        };
        let leader = match (r.leader, r.term) {
            (true, Some(t)) => format!("yes (term {t})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {:<28} {:>20} {:>8.1}s {:>8} {:<8} {}\n",
            r.name, r.epoch, r.heartbeat_age_seconds, r.leases, state, leader
        ));
    }
    out
}
