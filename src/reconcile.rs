//! The reconciler: level-triggered, one instance at a time, idempotent.
//!
//! A notification only *names* an instance. [`Reconciler::reconcile_instance`] re-reads the
//! row and Duroxide's state, asks [`verdict::decide`] what is true and what would heal it,
//! and carries that out through [`ActorControl`]. Running it twice does nothing the second
//! time; running it on a stale or reordered hint does the right thing, because the hint is
//! never trusted.
//!
//! [`ReconcileQueue`] is the delivery around it (as in kube-rs' controller): requests for the
//! same instance coalesce while one is queued or running, different instances run
//! concurrently up to a bound, and a failed reconcile is retried with backoff without
//! holding up the others. [`Reconciler::full_reconcile`] classifies the whole fleet in two
//! queries and queues whatever needs healing; it runs at start-up, after every listener
//! reconnect and on the resync timer.
//!
//! Healing (restarting a stale, zombie or finished actor) is rate-limited per instance with
//! an exponential backoff, so a crash-looping actor is retried but never spins; an explicit
//! restart request bypasses it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::cms::{self, InstanceRow};
use crate::config;
use crate::duro::{self, ActorControl, ActorState, DuroError};
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action, Decision, Observed, Rules, Verdict};

/// Why a reconcile runs (logged, and stored with decisions).
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A `toygres_instances` notification; `at` is the trigger's clock (epoch seconds).
    Notification { op: String, at: Option<f64> },
    /// The periodic or (re)connect full reconcile.
    Resync,
    /// A restart asked for on `toygres_actor_control` or with `request_actor_restart()`.
    RestartRequest,
    /// `reconcile <name>` on the control channel.
    ControlReconcile,
    /// The HTTP API or the CLI.
    Operator(&'static str),
}

impl Trigger {
    fn label(&self) -> String {
        match self {
            Trigger::Notification { op, .. } => format!("notify:{op}"),
            Trigger::Resync => "resync".into(),
            Trigger::RestartRequest => "restart-request".into(),
            Trigger::ControlReconcile => "control:reconcile".into(),
            Trigger::Operator(who) => format!("operator:{who}"),
        }
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub instance_id: Uuid,
    pub k8s_name: String,
    pub verdict: Verdict,
    pub reason: String,
    /// The action label (start, restart, cancel, noop).
    pub action: &'static str,
    pub old_actor_id: Option<String>,
    pub new_actor_id: Option<String>,
    /// Set when the action was skipped (dry run, backoff) — with why.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct HealBackoff {
    attempts: u32,
    next_at: Instant,
    /// When we last healed: the backoff resets only once a check is written after it (a
    /// fresh incarnation counts as `ok` during its grace period before it has proved anything).
    healed_at: DateTime<Utc>,
}

/// Decides and acts for single instances and the whole fleet.
pub struct Reconciler {
    pub control: ActorControl,
    pub rules: Rules,
    /// This replica's name, stored with every decision.
    pub replica: String,
    /// Per-instance heal backoff (stale / zombie / finished → restart).
    backoff: Mutex<HashMap<Uuid, HealBackoff>>,
}

impl Reconciler {
    pub fn new(control: ActorControl, stale_after: Duration, replica: String) -> Self {
        let rules = Rules {
            actor_states: control.settings.actor_states.clone(),
            stale_after,
        };
        Self {
            control,
            rules,
            replica,
            backoff: Mutex::new(HashMap::new()),
        }
    }

    fn pool(&self) -> &PgPool {
        &self.control.pool
    }

    /// Observe one instance now: the row, its actor in Duroxide, other live incarnations.
    pub async fn observe(&self, row: InstanceRow) -> Result<Observed, DuroError> {
        let (actor, created) = match &row.actor_id {
            Some(id) => {
                let state = self.control.actor_state(id).await?;
                (Some(state), self.actor_created_at(id).await?)
            }
            None => (None, None),
        };
        // A row that names no actor has none of ours (a crash between swap and start leaves
        // the id on the row); strays of rows cleared by hand are found by the fleet-wide
        // resync. Skipping the lookup keeps a first start to three statements.
        let other_live = match &row.actor_id {
            None => Vec::new(),
            Some(current) => self
                .control
                .live_actors(row.id)
                .await?
                .into_iter()
                .filter(|a| a != current)
                .collect(),
        };
        Ok(Observed {
            row,
            actor,
            actor_created_at: created,
            other_live,
        })
    }

    async fn actor_created_at(&self, actor_id: &str) -> Result<Option<DateTime<Utc>>, DuroError> {
        Ok(sqlx::query_scalar(&sql::with_duroxide_schema(
            sql::ACTOR_CREATED_AT,
            &self.control.schema,
        ))
        .bind(actor_id)
        .fetch_optional(self.pool())
        .await?
        .flatten())
    }

    /// Reconcile one instance by id (the row may be gone). `force_restart` asks for a new
    /// incarnation even if the current one is fine — honoured only while the row calls for
    /// an actor.
    pub async fn reconcile_instance(
        &self,
        id: Uuid,
        trigger: &Trigger,
        force_restart: bool,
        dry_run: bool,
    ) -> Result<Outcome, DuroError> {
        let Some(row) = cms::instance_by_id(self.pool(), id).await? else {
            return self.reconcile_deleted(id, trigger, dry_run).await;
        };
        let observed = self.observe(row).await?;
        let mut decision = verdict::decide(&observed, &self.rules, Utc::now());
        if force_restart {
            if self.control.wants_actor(&observed.row.state) {
                decision.action = Action::Restart;
                decision.reason = format!("restart requested ({})", decision.reason);
            } else {
                decision.reason = format!(
                    "restart requested, but state `{}` calls for no actor ({})",
                    observed.row.state, decision.reason
                );
            }
        }
        self.act(&observed.row, decision, trigger, force_restart, dry_run)
            .await
    }

    /// The row is gone: cancel every live incarnation.
    async fn reconcile_deleted(
        &self,
        id: Uuid,
        trigger: &Trigger,
        dry_run: bool,
    ) -> Result<Outcome, DuroError> {
        let live = self.control.live_actors(id).await?;
        let name = format!("(deleted {id})");
        let mut outcome = Outcome {
            instance_id: id,
            k8s_name: name.clone(),
            verdict: if live.is_empty() {
                Verdict::Idle
            } else {
                Verdict::Orphan
            },
            reason: if live.is_empty() {
                "row deleted, no actor runs".into()
            } else {
                format!("row deleted, but {} runs", live.join(", "))
            },
            action: if live.is_empty() { "noop" } else { "cancel" },
            old_actor_id: live.first().cloned(),
            new_actor_id: None,
            skipped: None,
        };
        if live.is_empty() {
            metrics::reconcile_action("noop");
            return Ok(outcome);
        }
        if dry_run {
            outcome.skipped = Some("dry run".into());
            return Ok(outcome);
        }
        for a in &live {
            self.control.cancel(a, "instance row deleted").await?;
        }
        self.forget_backoff(id);
        metrics::reconcile_action("cancel");
        self.log_decision(
            id,
            &name,
            "cancel",
            &outcome.reason,
            live.first().map(String::as_str),
            None,
            trigger,
            None,
        )
        .await;
        tracing::info!(instance_id = %id, actors = ?live, trigger = %trigger.label(), "cancelled actors of a deleted instance");
        Ok(outcome)
    }

    async fn act(
        &self,
        row: &InstanceRow,
        decision: Decision,
        trigger: &Trigger,
        forced: bool,
        dry_run: bool,
    ) -> Result<Outcome, DuroError> {
        let mut outcome = Outcome {
            instance_id: row.id,
            k8s_name: row.k8s_name.clone(),
            verdict: decision.verdict,
            reason: decision.reason.clone(),
            action: decision.action.label(),
            old_actor_id: row.actor_id.clone(),
            new_actor_id: row.actor_id.clone(),
            skipped: None,
        };
        if decision.action == Action::Noop {
            self.settle_backoff(row, decision.verdict);
            metrics::reconcile_action("noop");
            return Ok(outcome);
        }
        if dry_run {
            outcome.skipped = Some("dry run".into());
            return Ok(outcome);
        }
        // Heals of an existing actor are rate-limited per instance; first starts and
        // explicit restarts are not.
        let is_heal = matches!(decision.action, Action::Restart) && !forced;
        if is_heal && let Some(wait) = self.backoff_remaining(row.id) {
            outcome.skipped = Some(format!(
                "heal backoff: next attempt in {}s",
                wait.as_secs().max(1)
            ));
            tracing::debug!(instance = %row.k8s_name, verdict = %decision.verdict, "heal skipped: backoff");
            metrics::reconcile_action("noop");
            return Ok(outcome);
        }
        let started = Instant::now();
        let result = match &decision.action {
            Action::Noop => unreachable!("handled above"),
            Action::Start { named: Some(id) } => self
                .control
                .start_named(row, id)
                .await
                .map(|_| (row.actor_id.clone(), Some(id.clone()))),
            Action::Start { named: None } | Action::Restart => {
                let reason = format!("{}: {}", decision.verdict, decision.reason);
                self.control
                    .replace(row, &reason)
                    .await
                    .map(|t| (t.old_actor_id, t.new_actor_id))
            }
            Action::Cancel { actor_ids } => {
                let mut r = Ok(());
                for a in actor_ids {
                    if let Err(e) = self.control.cancel(a, &decision.reason).await {
                        r = Err(e);
                        break;
                    }
                }
                r.map(|_| (actor_ids.first().cloned(), row.actor_id.clone()))
            }
        };
        if is_heal {
            self.note_heal(row.id);
        }
        match result {
            Ok((old, new)) => {
                outcome.old_actor_id = old.clone();
                outcome.new_actor_id = new.clone();
                metrics::reconcile_action(decision.action.label());
                if let Trigger::Notification { at: Some(at), .. } = trigger {
                    let now = Utc::now().timestamp_micros() as f64 / 1e6;
                    metrics::event_to_action(now - at);
                }
                tracing::info!(
                    instance = %row.k8s_name, instance_id = %row.id, verdict = %decision.verdict,
                    action = decision.action.label(), reason = %decision.reason,
                    old_actor = old.as_deref().unwrap_or(""), new_actor = new.as_deref().unwrap_or(""),
                    trigger = %trigger.label(), took_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                self.log_decision(
                    row.id,
                    &row.k8s_name,
                    decision.action.label(),
                    &decision.reason,
                    old.as_deref(),
                    new.as_deref(),
                    trigger,
                    None,
                )
                .await;
                Ok(outcome)
            }
            Err(e) => {
                metrics::reconcile_error();
                self.log_decision(
                    row.id,
                    &row.k8s_name,
                    decision.action.label(),
                    &decision.reason,
                    row.actor_id.as_deref(),
                    None,
                    trigger,
                    Some(&e.to_string()),
                )
                .await;
                Err(e)
            }
        }
    }

    fn backoff_remaining(&self, id: Uuid) -> Option<Duration> {
        let map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.get(&id)?;
        let now = Instant::now();
        (b.next_at > now).then(|| b.next_at - now)
    }

    fn note_heal(&self, id: Uuid) {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(id).or_insert(HealBackoff {
            attempts: 0,
            next_at: Instant::now(),
            healed_at: Utc::now(),
        });
        entry.healed_at = Utc::now();
        entry.attempts = entry.attempts.saturating_add(1);
        let factor = 2u32.saturating_pow(entry.attempts.saturating_sub(1).min(16));
        let delay = config::HEAL_BACKOFF_MIN
            .saturating_mul(factor)
            .min(config::HEAL_BACKOFF_MAX);
        entry.next_at = Instant::now() + delay;
    }

    /// Reset an instance's heal backoff once it has proved healthy again: idle, or a health
    /// check written after the last heal.
    fn settle_backoff(&self, row: &InstanceRow, verdict: Verdict) {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get(&row.id) else { return };
        let proved = match verdict {
            Verdict::Idle => true,
            Verdict::Ok | Verdict::Unhealthy => {
                row.last_health_check.is_some_and(|t| t > b.healed_at)
            }
            _ => false,
        };
        if proved {
            map.remove(&row.id);
        }
    }

    fn forget_backoff(&self, id: Uuid) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    #[allow(clippy::too_many_arguments)]
    async fn log_decision(
        &self,
        id: Uuid,
        name: &str,
        action: &str,
        reason: &str,
        old: Option<&str>,
        new: Option<&str>,
        trigger: &Trigger,
        error: Option<&str>,
    ) {
        let r = sqlx::query(sql::INSERT_DECISION)
            .bind(id)
            .bind(name)
            .bind(action)
            .bind(reason)
            .bind(old)
            .bind(new)
            .bind(trigger.label())
            .bind(&self.replica)
            .bind(error.map(crate::redact::redact_error))
            .execute(self.pool())
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record the decision");
        }
    }

    /// Every instance with its observation and decision, from two queries (fleet + live
    /// actors), plus synthetic entries for live actors whose row is gone.
    pub async fn fleet(&self) -> Result<Fleet, DuroError> {
        let schema = &self.control.schema;
        let rows: Vec<FleetRow> = sqlx::query_as(&sql::with_duroxide_schema(sql::FLEET, schema))
            .fetch_all(self.pool())
            .await?;
        let live: Vec<String> =
            sqlx::query_scalar(&sql::with_duroxide_schema(sql::LIVE_ACTORS, schema))
                .bind(config::ACTOR_ORCHESTRATION)
                .fetch_all(self.pool())
                .await?;
        let mut live_by_instance: HashMap<Uuid, Vec<String>> = HashMap::new();
        for a in live {
            if let Some(id) = duro::instance_of_actor(&a) {
                live_by_instance.entry(id).or_default().push(a);
            }
        }
        let now = Utc::now();
        let mut instances = Vec::with_capacity(rows.len());
        for r in rows {
            let live = live_by_instance.remove(&r.id).unwrap_or_default();
            let observed = r.into_observed(live);
            let decision = verdict::decide(&observed, &self.rules, now);
            instances.push((observed, decision));
        }
        Ok(Fleet {
            instances,
            deleted_with_live_actors: live_by_instance.into_iter().collect(),
        })
    }

    /// One full pass: classify everything; queue (or, with `direct`, carry out) whatever
    /// needs healing; honour durable restart requests. Returns what it found and did.
    pub async fn full_reconcile(
        &self,
        queue: Option<&ReconcileQueue>,
        dry_run: bool,
    ) -> Result<Vec<Outcome>, DuroError> {
        let fleet = self.fleet().await?;
        let mut outcomes = Vec::new();
        for (obs, decision) in fleet.instances {
            if decision.action == Action::Noop {
                self.settle_backoff(&obs.row, decision.verdict);
                continue;
            }
            match queue {
                Some(q) if !dry_run => {
                    q.enqueue(obs.row.id, Trigger::Resync, false, None);
                    outcomes.push(Outcome {
                        instance_id: obs.row.id,
                        k8s_name: obs.row.k8s_name.clone(),
                        verdict: decision.verdict,
                        reason: decision.reason.clone(),
                        action: decision.action.label(),
                        old_actor_id: obs.row.actor_id.clone(),
                        new_actor_id: None,
                        skipped: Some("queued".into()),
                    });
                }
                _ => match self
                    .act(&obs.row, decision, &Trigger::Resync, false, dry_run)
                    .await
                {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        tracing::warn!(instance = %obs.row.k8s_name, error = %e, "heal failed")
                    }
                },
            }
        }
        for (id, _) in fleet.deleted_with_live_actors {
            match queue {
                Some(q) if !dry_run => q.enqueue(id, Trigger::Resync, false, None),
                _ => match self.reconcile_deleted(id, &Trigger::Resync, dry_run).await {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        tracing::warn!(instance_id = %id, error = %e, "cancelling orphan failed")
                    }
                },
            }
        }
        if !dry_run {
            let pending: Vec<(i64, Uuid)> = sqlx::query_as(sql::PENDING_RESTART_REQUESTS)
                .fetch_all(self.pool())
                .await?;
            let mut seen = HashSet::new();
            for (_, instance) in pending {
                if seen.insert(instance) {
                    match queue {
                        Some(q) => q.enqueue(instance, Trigger::RestartRequest, true, None),
                        None => match self.honour_restart_request(instance).await {
                            Ok(o) => outcomes.push(o),
                            Err(e) => {
                                tracing::warn!(instance_id = %instance, error = %e, "restart request failed")
                            }
                        },
                    }
                }
            }
        }
        metrics::resync_done();
        Ok(outcomes)
    }

    /// A restart request (durable or raw NOTIFY): restart if the row calls for an actor,
    /// then mark the instance's pending requests handled with the outcome.
    pub async fn honour_restart_request(&self, instance: Uuid) -> Result<Outcome, DuroError> {
        let outcome = self
            .reconcile_instance(instance, &Trigger::RestartRequest, true, false)
            .await?;
        let text = match (&outcome.skipped, outcome.action) {
            (None, "restart") => format!(
                "restarted: new actor {}",
                outcome.new_actor_id.as_deref().unwrap_or("?")
            ),
            _ => format!("not restarted: {}", outcome.reason),
        };
        sqlx::query(sql::FINISH_RESTART_REQUESTS)
            .bind(instance)
            .bind(&text)
            .execute(self.pool())
            .await?;
        Ok(outcome)
    }
}

/// The whole fleet as observed and decided.
pub struct Fleet {
    pub instances: Vec<(Observed, Decision)>,
    /// Live actors whose CMS row no longer exists (by instance id).
    pub deleted_with_live_actors: Vec<(Uuid, Vec<String>)>,
}

/// One row of `sql/fleet.sql`.
#[derive(Debug, sqlx::FromRow)]
struct FleetRow {
    id: Uuid,
    k8s_name: String,
    dns_name: Option<String>,
    state: String,
    health_status: String,
    actor_id: Option<String>,
    last_health_check: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    has_target: bool,
    actor_status: Option<String>,
    actor_created_at: Option<DateTime<Utc>>,
    actor_pending: bool,
    actor_last_progress: Option<DateTime<Utc>>,
    actor_has_work: bool,
    actor_execution_id: Option<i64>,
}

impl FleetRow {
    fn into_observed(self, live: Vec<String>) -> Observed {
        let actor =
            self.actor_id
                .as_ref()
                .map(|_| match (&self.actor_status, self.actor_pending) {
                    (None, true) => ActorState::Pending,
                    (None, false) => ActorState::Absent,
                    (Some(s), _) if s == "Running" => ActorState::Running {
                        last_progress: self.actor_last_progress.unwrap_or_else(Utc::now),
                        has_work: self.actor_has_work,
                        execution_id: self.actor_execution_id.unwrap_or(1),
                    },
                    (Some(s), _) => ActorState::Finished { status: s.clone() },
                });
        let other_live = live
            .into_iter()
            .filter(|a| Some(a) != self.actor_id.as_ref())
            .collect();
        Observed {
            row: InstanceRow {
                id: self.id,
                k8s_name: self.k8s_name,
                dns_name: self.dns_name,
                state: self.state,
                health_status: self.health_status,
                actor_id: self.actor_id,
                last_health_check: self.last_health_check,
                created_at: self.created_at,
                updated_at: self.updated_at,
                has_target: self.has_target,
            },
            actor,
            actor_created_at: self.actor_created_at,
            other_live,
        }
    }
}

/// One queued request.
#[derive(Debug, Clone)]
struct Job {
    trigger: Trigger,
    force_restart: bool,
    /// Retries so far (errors).
    attempt: u32,
    /// The earliest notification clock merged into this job (for the latency histogram).
    _first_at: Option<f64>,
}

#[derive(Default)]
struct QueueState {
    pending: HashMap<Uuid, Job>,
    order: VecDeque<Uuid>,
    inflight: HashSet<Uuid>,
}

/// Coalescing, bounded-parallel delivery of per-instance reconciles.
pub struct ReconcileQueue {
    state: Mutex<QueueState>,
    wake: Notify,
    /// Signalled whenever the queue becomes empty with nothing in flight (tests, benches).
    idle: Notify,
}

impl Default for ReconcileQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconcileQueue {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            idle: Notify::new(),
        }
    }

    /// Ask for a reconcile of `id`. Merges with a queued request for the same instance
    /// (a restart request wins; the notification clock kept is the earliest).
    pub fn enqueue(&self, id: Uuid, trigger: Trigger, force_restart: bool, at: Option<f64>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.pending.get_mut(&id) {
            Some(job) => {
                job.force_restart |= force_restart;
                if force_restart {
                    job.trigger = trigger;
                }
            }
            None => {
                st.pending.insert(
                    id,
                    Job {
                        trigger,
                        force_restart,
                        attempt: 0,
                        _first_at: at,
                    },
                );
                st.order.push_back(id);
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Requests queued or running.
    pub fn len(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.len() + st.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until nothing is queued or running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn take_next(&self) -> Option<(Uuid, Job)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = st.order.len();
        for _ in 0..n {
            let id = st.order.pop_front()?;
            if st.inflight.contains(&id) {
                // Still running: keep it queued behind; it runs again after.
                st.order.push_back(id);
                continue;
            }
            if let Some(job) = st.pending.remove(&id) {
                st.inflight.insert(id);
                return Some((id, job));
            }
        }
        None
    }

    fn done(&self, id: Uuid) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.inflight.remove(&id);
        let empty = st.pending.is_empty() && st.inflight.is_empty();
        drop(st);
        self.wake.notify_one();
        if empty {
            self.idle.notify_waiters();
        }
    }

    /// Run the queue until `stop` fires: up to `parallelism` reconciles at once.
    pub async fn run(
        self: Arc<Self>,
        reconciler: Arc<Reconciler>,
        parallelism: usize,
        stop: tokio_util_cancel::Token,
    ) {
        let permits = Arc::new(Semaphore::new(parallelism.max(1)));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let next = loop {
                let notified = self.wake.notified();
                if let Some(job) = self.take_next() {
                    break Some(job);
                }
                tokio::select! {
                    _ = notified => {}
                    _ = stop.cancelled() => break None,
                }
            };
            let Some((id, job)) = next else {
                return;
            };
            let queue = self.clone();
            let reconciler = reconciler.clone();
            tokio::spawn(async move {
                let result = if job.trigger == Trigger::RestartRequest {
                    reconciler.honour_restart_request(id).await
                } else {
                    reconciler
                        .reconcile_instance(id, &job.trigger, job.force_restart, false)
                        .await
                };
                drop(permit);
                if let Err(e) = result {
                    let attempt = job.attempt + 1;
                    let delay = retry_delay(attempt);
                    tracing::warn!(instance_id = %id, attempt, retry_in_ms = delay.as_millis() as u64,
                        error = %e, "reconcile failed; will retry");
                    let q = queue.clone();
                    queue.done(id);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let mut st = q.state.lock().unwrap_or_else(|p| p.into_inner());
                        if let std::collections::hash_map::Entry::Vacant(e) = st.pending.entry(id) {
                            e.insert(Job { attempt, ..job });
                            st.order.push_back(id);
                        }
                        drop(st);
                        q.wake.notify_one();
                    });
                } else {
                    queue.done(id);
                }
            });
        }
    }
}

/// Retry delay of a failed reconcile: 100 ms doubling to 30 s.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(12)))
        .min(Duration::from_secs(30))
}

/// A tiny cancellation token (a watch channel), so the crate needs no tokio-util.
pub mod tokio_util_cancel {
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Token {
        rx: watch::Receiver<bool>,
    }

    pub struct Source {
        tx: watch::Sender<bool>,
    }

    pub fn new() -> (Source, Token) {
        let (tx, rx) = watch::channel(false);
        (Source { tx }, Token { rx })
    }

    impl Source {
        pub fn cancel(&self) {
            let _ = self.tx.send(true);
        }
        pub fn token(&self) -> Token {
            Token {
                rx: self.tx.subscribe(),
            }
        }
    }

    impl Token {
        pub fn is_cancelled(&self) -> bool {
            *self.rx.borrow()
        }
        pub async fn cancelled(&self) {
            let mut rx = self.rx.clone();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn queue_coalesces_requests_for_one_instance() {
        let q = ReconcileQueue::new();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        q.enqueue(a, Trigger::Resync, false, None);
        q.enqueue(b, Trigger::Resync, false, None);
        q.enqueue(a, Trigger::RestartRequest, true, None);
        assert_eq!(q.len(), 2);
        let (first, job) = q.take_next().unwrap();
        assert_eq!(first, a);
        assert!(job.force_restart);
        assert_eq!(job.trigger, Trigger::RestartRequest);
        // `a` is in flight: a new request for it queues, but `b` goes first.
        q.enqueue(a, Trigger::Resync, false, None);
        let (second, _) = q.take_next().unwrap();
        assert_eq!(second, b);
        assert!(q.take_next().is_none(), "a is still in flight");
        q.done(a);
        let (third, _) = q.take_next().unwrap();
        assert_eq!(third, a);
    }
}
