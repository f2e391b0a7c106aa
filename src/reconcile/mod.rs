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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::actor_state::ActorState;
use crate::cms::{self, InstanceRow};
use crate::config;
use crate::duro::{ActorControl, DuroError};
use crate::identity::Term;
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action, Observed, Rules, Verdict};

mod act;
mod batch;
mod breaker;
mod fleet;
mod inbox;
mod lane;
mod limits;
mod queue;

pub use crate::hint::HintKind;
pub use crate::verdict::Did;
pub use breaker::HealingBreaker;
pub use fleet::Fleet;
pub use inbox::ControlInbox;
pub use lane::PriorityLane;
use limits::HealBackoff;
pub use limits::RestartLimits;
pub use queue::ReconcileQueue;

/// Why a reconcile runs (logged, and stored with decisions).
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A `toygres_instances` notification; `at` is the trigger's clock (epoch seconds).
    Notification { op: HintKind, at: Option<f64> },
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

/// What a reconcile is asked for: what the row calls for, or a new incarnation besides
/// (honoured only while the row calls for an actor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Reconcile,
    Restart,
}

/// Whether a reconcile acts, or only says what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Act,
    DryRun,
}

/// What one reconcile did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub instance_id: Uuid,
    pub k8s_name: String,
    pub verdict: Verdict,
    pub reason: String,
    /// What was done (or, with `skipped`, would have been).
    pub action: Did,
    pub old_actor_id: Option<String>,
    pub new_actor_id: Option<String>,
    /// Set when the action was skipped (dry run, backoff) — with why.
    pub skipped: Option<String>,
}

/// Decides and acts for single instances and the whole fleet.
pub struct Reconciler {
    pub(crate) control: ActorControl,
    pub rules: Rules,
    /// This replica's name, stored with every decision.
    pub replica: String,
    /// Per-instance heal backoff (stale / zombie / finished → restart).
    backoff: Arc<Mutex<HashMap<Uuid, HealBackoff>>>,
    /// In the service, what the reconciler does on its own (everything but operator
    /// requests) is fenced by the leader's term: `None` until elected (and after stepping
    /// down), so a replica that does not lead writes nothing. The CLI is not fenced.
    term: Arc<std::sync::RwLock<Option<Term>>>,
    fenced: bool,
    /// Bounds on restarts (per instance and fleet-wide).
    pub limits: Arc<RestartLimits>,
    /// Stops healing stale actors when too much of the fleet is stale at once.
    pub breaker: Arc<HealingBreaker>,
    /// Stale instances whose live actor was re-leased here (instead of restarted), and when.
    released: Arc<Mutex<HashMap<Uuid, Instant>>>,
    /// Restart requests being honoured (the queue's and the priority lane's runs of one
    /// request take turns: the second finds it handled).
    honouring: Arc<fleet::InstanceTurns>,
    /// toygres' own store, whose instance actors are adopted (`None`: adoption off).
    legacy: Option<Arc<crate::legacy::Legacy>>,
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
            backoff: Arc::default(),
            term: Arc::default(),
            fenced: false,
            limits: Arc::new(RestartLimits::new(
                config::DEFAULT_RESTART_MIN_INTERVAL,
                config::DEFAULT_RESTART_RATE,
            )),
            breaker: Arc::new(HealingBreaker::new(
                config::DEFAULT_HEAL_PAUSE_SHARE,
                interval,
            )),
            released: Arc::default(),
            honouring: Arc::default(),
            legacy: None,
        }
    }

    /// This reconciler acting through other connections (the priority lane's): term,
    /// limits, breaker and backoff are shared with it.
    pub(crate) fn sibling(&self, control: ActorControl) -> Self {
        Self {
            control,
            rules: self.rules.clone(),
            replica: self.replica.clone(),
            backoff: self.backoff.clone(),
            term: self.term.clone(),
            fenced: self.fenced,
            limits: self.limits.clone(),
            breaker: self.breaker.clone(),
            released: self.released.clone(),
            honouring: self.honouring.clone(),
            legacy: self.legacy.clone(),
        }
    }

    /// Adopt the instance actors of toygres' own store (`--legacy-duroxide-schema`).
    pub fn with_legacy(mut self, legacy: Option<Arc<crate::legacy::Legacy>>) -> Self {
        self.legacy = legacy;
        self
    }

    pub(crate) fn legacy(&self) -> Option<&Arc<crate::legacy::Legacy>> {
        self.legacy.as_ref()
    }

    /// The share of the fleet stale at once above which healing pauses.
    pub fn with_heal_pause_share(mut self, share: f64) -> Self {
        self.breaker = Arc::new(HealingBreaker::new(
            share,
            self.control.settings.check_interval,
        ));
        self
    }

    /// Restart bounds other than the defaults (the service's flags).
    pub fn with_restart_limits(mut self, min_interval: Duration, per_second: u32) -> Self {
        self.limits = Arc::new(RestartLimits::new(min_interval, per_second));
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
        if matches!(trigger, Trigger::Operator(_)) {
            return Ok(None);
        }
        self.duty_fence()
    }

    /// The fence for the leader's own writes (actions, pruning): the current term when
    /// fenced, `None` when not (tests, tools).
    pub(crate) fn duty_fence(&self) -> Result<Option<Term>, DuroError> {
        if !self.fenced {
            return Ok(None);
        }
        self.term().map(Some).ok_or(DuroError::NotLeader)
    }

    /// The CMS pool.
    pub fn pool(&self) -> &PgPool {
        &self.control.pool
    }

    /// The schema of our Duroxide store.
    pub fn store_schema(&self) -> &str {
        &self.control.schema
    }

    /// Whether `state` calls for an actor (`--actor-states`).
    pub fn wants_actor(&self, state: &crate::instance::InstanceState) -> bool {
        self.control.wants_actor(state)
    }

    /// Cancel every live incarnation of the row's instance (an operator's `cancel`).
    pub async fn cancel_all(
        &self,
        row: &InstanceRow,
        reason: &str,
    ) -> Result<crate::duro::Transition, DuroError> {
        self.control.cancel_all(row, reason).await
    }

    /// Observe one instance now: the row, its actor in Duroxide, other live incarnations.
    pub async fn observe(&self, row: InstanceRow) -> Result<Observed, DuroError> {
        self.observe_seen(row, None).await
    }

    /// [`Reconciler::observe`], with what a first check would see of the row (read with it).
    async fn observe_seen(
        &self,
        row: InstanceRow,
        seen: Option<crate::cms::Seen>,
    ) -> Result<Observed, DuroError> {
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
        // An id Duroxide does not know here may be an instance actor in toygres' store (its
        // create flow and restart API write `actor-<k8s_name>` on the row).
        let legacy = match (&self.legacy, &row.actor_id, &actor) {
            (Some(legacy), Some(id), Some(ActorState::Absent)) => {
                let ids = [
                    id.clone(),
                    format!("{}{}", config::ACTOR_ID_PREFIX, row.k8s_name),
                ];
                legacy.live_named(self.pool(), &ids).await?
            }
            _ => Vec::new(),
        };
        Ok(Observed {
            row,
            actor,
            actor_created_at: created,
            other_live,
            legacy,
            seen,
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

    /// Reconcile one instance by id (the row may be gone). [`Ask::Restart`] asks for a new
    /// incarnation even if the current one is fine — honoured only while the row calls for
    /// an actor.
    pub async fn reconcile_instance(
        &self,
        id: Uuid,
        trigger: &Trigger,
        ask: Ask,
        mode: Mode,
    ) -> Result<Outcome, DuroError> {
        let t0 = Instant::now();
        let Some((row, seen)) = cms::instance_and_seen_by_id(self.pool(), id).await? else {
            return self.reconcile_deleted(id, trigger, mode).await;
        };
        let read = t0.elapsed();
        let observed = self.observe_seen(row, Some(seen)).await?;
        let observe = t0.elapsed() - read;
        let mut decision = verdict::decide(&observed, &self.rules, crate::clock::now());
        if ask == Ask::Restart && !matches!(decision.action, Action::Adopt { start: true, .. }) {
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
        let outcome = self.act(&observed, decision, trigger, ask, mode).await;
        if ask == Ask::Restart {
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
        mode: Mode,
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
            action: if live.is_empty() {
                Did::Noop
            } else {
                Did::Delete
            },
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
        if mode == Mode::DryRun {
            outcome.skipped = Some("dry run".into());
            return Ok(outcome);
        }
        // Removed from Duroxide outright, as a storm of deletes is (reconcile/batch.rs): the
        // decision is recorded in the same transaction.
        let fence = self.fence_for(trigger)?;
        outcome.action = Did::Delete;
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
}
