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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cms::{self, InstanceRow};
use crate::config;
use crate::duro::{ActorControl, DuroError};
use crate::identity::Term;
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action, Decision, Observed, Rules, Verdict};

mod batch;
mod breaker;
mod fleet;
mod inbox;
mod limits;
mod queue;

pub use breaker::HealingBreaker;
pub use fleet::Fleet;
pub use inbox::{Ask, ControlInbox};
use limits::HealBackoff;
pub use limits::RestartLimits;
pub use queue::ReconcileQueue;

/// Why a reconcile runs (logged, and stored with decisions).
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A `toygres_instances` notification; `at` is the trigger's clock (epoch seconds).
    Notification { op: String, at: Option<f64> },
    /// The periodic or (re)connect full reconcile.
    Resync,
    /// A durable restart request (`request_actor_restart()`): honoured once, then marked
    /// handled.
    RestartRequest,
    /// `restart <name>` on `toygres_actor_control` (no durable request behind it).
    ControlRestart,
    /// `reconcile <name>` on the control channel.
    ControlReconcile,
    /// The HTTP API or the CLI.
    Operator(&'static str),
}

impl Trigger {
    pub(crate) fn label(&self) -> String {
        match self {
            Trigger::Notification { op, .. } => format!("notify:{op}"),
            Trigger::Resync => "resync".into(),
            Trigger::RestartRequest => "restart-request".into(),
            Trigger::ControlRestart => "control:restart".into(),
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

/// Decides and acts for single instances and the whole fleet.
pub struct Reconciler {
    pub control: ActorControl,
    pub rules: Rules,
    /// This replica's name, stored with every decision.
    pub replica: String,
    /// Per-instance heal backoff (stale / zombie / finished → restart).
    backoff: Mutex<HashMap<Uuid, HealBackoff>>,
    /// In the service, what the reconciler does on its own (everything but operator
    /// requests) is fenced by the leader's term: `None` until elected (and after stepping
    /// down), so a replica that does not lead writes nothing. The CLI is not fenced.
    term: std::sync::RwLock<Option<Term>>,
    fenced: bool,
    /// Bounds on restarts (per instance and fleet-wide).
    pub limits: RestartLimits,
    /// Stops healing stale actors when too much of the fleet is stale at once.
    pub breaker: HealingBreaker,
    /// Stale instances whose live actor was re-leased here (instead of restarted), and when.
    released: Mutex<HashMap<Uuid, Instant>>,
}

impl Reconciler {
    pub fn new(control: ActorControl, stale_after: Duration, replica: String) -> Self {
        let interval = control.settings.check_interval;
        let rules = Rules {
            actor_states: control.settings.actor_states.clone(),
            stale_after,
        };
        Self {
            control,
            rules,
            replica,
            backoff: Mutex::new(HashMap::new()),
            term: std::sync::RwLock::new(None),
            fenced: false,
            limits: RestartLimits::new(
                config::DEFAULT_RESTART_MIN_INTERVAL,
                config::DEFAULT_RESTART_RATE,
            ),
            breaker: HealingBreaker::new(config::DEFAULT_HEAL_PAUSE_SHARE, interval),
            released: Mutex::new(HashMap::new()),
        }
    }

    /// The share of the fleet stale at once above which healing pauses.
    pub fn with_heal_pause_share(mut self, share: f64) -> Self {
        self.breaker = HealingBreaker::new(share, self.control.settings.check_interval);
        self
    }

    /// Restart bounds other than the defaults (the service's flags).
    pub fn with_restart_limits(mut self, min_interval: Duration, per_second: u32) -> Self {
        self.limits = RestartLimits::new(min_interval, per_second);
        self
    }

    /// Fence automatic actions with the leader's term (the service).
    pub fn fenced(mut self) -> Self {
        self.fenced = true;
        self
    }

    /// The term this replica leads in (set by the leader duties).
    pub fn set_term(&self, term: Option<Term>) {
        let leads = term.is_some();
        *self.term.write().unwrap_or_else(|p| p.into_inner()) = term;
        if !leads {
            self.breaker.stand_down();
        }
    }

    pub fn term(&self) -> Option<Term> {
        self.term.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fence for an action with this trigger: operator requests are explicit and go
    /// through on any replica; everything else needs the current term.
    pub(crate) fn fence_for(&self, trigger: &Trigger) -> Result<Option<Term>, DuroError> {
        if !self.fenced || matches!(trigger, Trigger::Operator(_)) {
            return Ok(None);
        }
        self.term().map(Some).ok_or(DuroError::NotLeader)
    }

    pub(crate) fn pool(&self) -> &PgPool {
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
        let t0 = Instant::now();
        let Some(row) = cms::instance_by_id(self.pool(), id).await? else {
            return self.reconcile_deleted(id, trigger, dry_run).await;
        };
        let read = t0.elapsed();
        let observed = self.observe(row).await?;
        let observe = t0.elapsed() - read;
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
        let outcome = self
            .act(&observed, decision, trigger, force_restart, dry_run)
            .await;
        if force_restart {
            tracing::debug!(instance_id = %id, read_ms = read.as_millis() as u64,
                observe_ms = observe.as_millis() as u64,
                act_ms = (t0.elapsed() - read - observe).as_millis() as u64, "explicit restart timing");
        }
        outcome
    }

    /// The row is gone: cancel every live incarnation.
    pub(crate) async fn reconcile_deleted(
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
            action: if live.is_empty() { "noop" } else { "delete" },
            old_actor_id: live.first().cloned(),
            new_actor_id: None,
            skipped: None,
        };
        if live.is_empty() {
            if matches!(trigger, Trigger::Notification { .. }) {
                // Neither a row nor an actor: a forged or stale hint, dropped after two index
                // lookups.
                metrics::notification_unknown();
            }
            metrics::reconcile_action("noop");
            return Ok(outcome);
        }
        if dry_run {
            outcome.skipped = Some("dry run".into());
            return Ok(outcome);
        }
        // Removed from Duroxide outright, as a storm of deletes is (reconcile/batch.rs): the
        // decision is recorded in the same transaction.
        let fence = self.fence_for(trigger)?;
        outcome.action = "delete";
        outcome.reason = format!("{}: removed from Duroxide", outcome.reason);
        let gone = crate::duro::CancelActors {
            instance_id: id,
            name,
            actors: live.clone(),
            reason: outcome.reason.clone(),
            keep: None,
            trigger: trigger.label(),
        };
        self.control
            .delete_batch(&[gone], fence.as_ref(), &self.replica)
            .await
            .inspect_err(|_| metrics::reconcile_error())?;
        self.forget_backoff(id);
        metrics::reconcile_action("delete");
        if crate::quiet::RECONCILED.admit() {
            tracing::info!(instance_id = %id, actors = ?live, trigger = %trigger.label(), "removed the actors of a deleted instance");
        }
        Ok(outcome)
    }

    pub(crate) async fn act(
        &self,
        obs: &Observed,
        decision: Decision,
        trigger: &Trigger,
        forced: bool,
        dry_run: bool,
    ) -> Result<Outcome, DuroError> {
        let row = &obs.row;
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
            // A state change of a live actor's row may change what its probe sees (a
            // connection string arrived with `running`): check it now, not next interval.
            if let Trigger::Notification { op, .. } = trigger
                && op == "state"
                && !dry_run
                && row.has_target
                && obs.actor.as_ref().is_some_and(|a| a.is_live())
                && let Some(actor_id) = &row.actor_id
                && self.term().is_some()
            {
                self.control.check_now(row, actor_id);
            }
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
            tracing::debug!(instance = %crate::redact::for_log(&row.k8s_name, 255), verdict = %decision.verdict, "heal skipped: backoff");
            metrics::reconcile_action("noop");
            return Ok(outcome);
        }
        // Stale, not asked for: when much of the fleet is stale at once the cause is not the
        // actors — alert (the breaker's gauge) instead of restarting them. And a stale actor
        // that is alive is first re-leased here and checked at once; only if that does not
        // help within one stale period is it restarted.
        if decision.verdict == Verdict::Stale && !forced {
            if self.breaker.holds() {
                outcome.skipped = Some(
                    "healing paused: too much of the fleet is stale at once (or was, less than a check interval ago)"
                        .into(),
                );
                metrics::reconcile_action("noop");
                return Ok(outcome);
            }
            let live = obs.actor.as_ref().is_some_and(|a| a.is_live());
            if live
                && self.term().is_some()
                && let Some(actor_id) = &row.actor_id
            {
                let recently = {
                    let mut map = self.released.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    map.retain(|_, t| now.duration_since(*t) < self.rules.stale_after * 2);
                    let recent = map
                        .get(&row.id)
                        .is_some_and(|t| now.duration_since(*t) < self.rules.stale_after);
                    if !recent {
                        map.insert(row.id, now);
                    }
                    recent
                };
                if !recently {
                    self.control.check_now(row, actor_id);
                    outcome.action = "re-lease";
                    outcome.skipped = Some("the live actor was re-leased to this replica and checked at once; a restart follows only if it stays stale".into());
                    metrics::reconcile_action("noop");
                    self.log_decision(
                        row.id,
                        &row.k8s_name,
                        "re-lease",
                        &decision.reason,
                        row.actor_id.as_deref(),
                        row.actor_id.as_deref(),
                        trigger,
                        None,
                    )
                    .await;
                    return Ok(outcome);
                }
            }
        }
        // Every restart, asked for or healing, is bound: per instance (a live actor younger
        // than the minimum interval is not replaced; read from Duroxide, so it holds across
        // replicas and the CLI) and fleet-wide (a token bucket).
        if matches!(decision.action, Action::Restart) {
            let live = obs.actor.as_ref().is_some_and(|a| a.is_live());
            // A live actor Duroxide has not created yet (its start is queued) is brand new.
            let age = match obs.actor_created_at {
                Some(t) => (Utc::now() - t).to_std().unwrap_or_default(),
                None => Duration::ZERO,
            };
            if live && age < self.limits.min_interval {
                metrics::restart_limited("instance");
                let wait = self.limits.min_interval - age;
                if forced {
                    return Err(DuroError::RateLimited(wait));
                }
                outcome.skipped = Some(format!(
                    "restart held back: the actor is {}s old (minimum interval {}s)",
                    age.as_secs(),
                    self.limits.min_interval.as_secs()
                ));
                metrics::reconcile_action("noop");
                return Ok(outcome);
            }
            if let Err(wait) = self.limits.take_token() {
                metrics::restart_limited("fleet");
                if forced {
                    return Err(DuroError::RateLimited(wait));
                }
                outcome.skipped = Some("restart held back: fleet-wide restart rate".into());
                metrics::reconcile_action("noop");
                return Ok(outcome);
            }
        }
        let started = Instant::now();
        let fence = self.fence_for(trigger)?;
        let fence = fence.as_ref();
        // Starts and restarts record their decision in their own transaction.
        let record = crate::duro::Record {
            action: decision.action.label(),
            reason: &decision.reason,
            trigger: trigger.label(),
            replica: &self.replica,
        };
        let recorded = !matches!(decision.action, Action::Cancel { .. });
        let result = match &decision.action {
            Action::Noop => unreachable!("handled above"),
            Action::Start { named: Some(id) } => self
                .control
                .start_named(row, id, fence, Some(&record))
                .await
                .map(|_| (row.actor_id.clone(), Some(id.clone()))),
            Action::Start { named: None } | Action::Restart => {
                let reason = format!("{}: {}", decision.verdict, decision.reason);
                let explicit = forced || matches!(trigger, Trigger::Operator(_));
                self.control
                    .replace_with(row, &reason, fence, explicit, Some(&record))
                    .await
                    .map(|t| (t.old_actor_id, t.new_actor_id))
            }
            Action::Cancel { actor_ids } => {
                let mut r = Ok(());
                for a in actor_ids {
                    if let Err(e) = self.control.cancel(a, &decision.reason, fence).await {
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
                let explicit = forced || matches!(trigger, Trigger::Operator(_));
                if explicit || crate::quiet::RECONCILED.admit() {
                    tracing::info!(
                    instance = %crate::redact::for_log(&row.k8s_name, 255), instance_id = %row.id, verdict = %decision.verdict,
                    action = decision.action.label(), reason = %decision.reason,
                    old_actor = old.as_deref().unwrap_or(""), new_actor = new.as_deref().unwrap_or(""),
                    trigger = %trigger.label(), took_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                    );
                }
                if !recorded {
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
                }
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
}
