//! The whole fleet in two queries: every instance observed and decided at once, and the
//! full reconcile that queues (or carries out) whatever needs healing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Ask, Did, Mode, Outcome, ReconcileQueue, Reconciler, Trigger};
use crate::actor_state::ActorState;
use crate::cms::InstanceRow;
use crate::config;
use crate::duro::{self, DuroError};
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action, Decision, Observed, Verdict};

impl Reconciler {
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
        let mut legacy = self.legacy_actors().await;
        let now = crate::clock::now();
        let mut instances = Vec::with_capacity(rows.len());
        for r in rows {
            let live = live_by_instance.remove(&r.id).unwrap_or_default();
            let mut observed = r.into_observed(live);
            observed.legacy = legacy.remove(&Some(observed.row.id)).unwrap_or_default();
            let decision = verdict::decide(&observed, &self.rules, now);
            instances.push((observed, decision));
        }
        Ok(Fleet {
            observed_at: now,
            instances,
            deleted_with_live_actors: live_by_instance.into_iter().collect(),
        })
    }

    /// Every instance actor alive in toygres' store, by instance (counted in
    /// `toygres_actors_legacy_actors_running`). A store we cannot read is logged and read as
    /// empty: it must not stop the fleet's own reconcile.
    async fn legacy_actors(&self) -> crate::legacy::LegacyByInstance {
        let Some(legacy) = self.legacy() else {
            return Default::default();
        };
        match legacy.live(self.pool()).await {
            Ok(found) => {
                metrics::legacy_actors_running(found.values().map(Vec::len).sum());
                found
            }
            Err(e) => {
                tracing::warn!(schema = legacy.schema(), error = %e, "could not read the legacy store's instance actors");
                Default::default()
            }
        }
    }

    /// Every full pass checks our store for another runtime's work (as the start did): the
    /// gauge behind ToygresActorsForeignWork shows it before any dispatcher of ours meets it.
    async fn look_for_foreign_work(&self) {
        match crate::store::foreign_work(self.pool(), &self.control.schema).await {
            Ok(found) if !found.is_empty() => {
                tracing::error!(
                    schema = %self.control.schema,
                    found = %crate::store::foreign::describe(&found),
                    "our Duroxide store holds another runtime's work: give each runtime a schema of its own (--duroxide-schema)"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not check our Duroxide store for foreign work")
            }
        }
    }

    /// One full pass: classify everything; queue (or, with `direct`, carry out) whatever
    /// needs healing; honour durable restart requests. Returns what it found and did.
    pub async fn full_reconcile(
        &self,
        queue: Option<&ReconcileQueue>,
        mode: Mode,
    ) -> Result<Vec<Outcome>, DuroError> {
        let dry_run = mode == Mode::DryRun;
        self.look_for_foreign_work().await;
        let fleet = self.fleet().await?;
        let expected = fleet
            .instances
            .iter()
            .filter(|(o, _)| self.control.wants_actor(&o.row.state))
            .count();
        let stale = fleet
            .instances
            .iter()
            .filter(|(_, d)| d.verdict == Verdict::Stale)
            .count();
        if !dry_run {
            self.breaker.observe(stale, expected);
        }
        let mut outcomes = Vec::new();
        let mut queued = Vec::new();
        for (obs, decision) in fleet.instances {
            if decision.action == Action::Noop {
                self.settle_backoff(&obs.row, decision.verdict);
                continue;
            }
            match queue {
                Some(_) if !dry_run => {
                    queued.push(obs.row.id);
                    outcomes.push(Outcome {
                        instance_id: obs.row.id,
                        k8s_name: obs.row.k8s_name.clone(),
                        verdict: decision.verdict,
                        reason: decision.reason.clone(),
                        action: decision.action.did(),
                        old_actor_id: obs.row.actor_id.clone(),
                        new_actor_id: None,
                        skipped: Some("queued".into()),
                    });
                }
                _ => match self
                    .act(&obs, decision, &Trigger::Resync, Ask::Reconcile, mode)
                    .await
                {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        tracing::warn!(instance = %crate::redact::for_log(&obs.row.k8s_name, 255), error = %e, "heal failed")
                    }
                },
            }
        }
        for (id, _) in fleet.deleted_with_live_actors {
            match queue {
                Some(_) if !dry_run => queued.push(id),
                _ => match self.reconcile_deleted(id, &Trigger::Resync, mode).await {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        tracing::warn!(instance_id = %id, error = %e, "cancelling orphan failed")
                    }
                },
            }
        }
        if let Some(q) = queue
            && !dry_run
        {
            q.enqueue_many(queued, Trigger::Resync);
        }
        if !dry_run {
            let pending = self.pending_restart_requests().await?;
            for instance in pending {
                match queue {
                    Some(q) => q.enqueue(instance, Trigger::RestartRequest, Ask::Restart, None),
                    None => match self.honour_restart_request(instance).await {
                        Ok(o) => outcomes.push(o),
                        Err(e) => {
                            tracing::warn!(instance_id = %instance, error = %e, "restart request failed")
                        }
                    },
                }
            }
        }
        metrics::resync_done();
        Ok(outcomes)
    }

    /// A durable restart request: restart if one is still pending and the row calls for an
    /// actor, then mark the requests read before the restart handled with the outcome (one
    /// made meanwhile stays pending: the restart may have begun before it was asked for).
    pub async fn honour_restart_request(&self, instance: Uuid) -> Result<Outcome, DuroError> {
        // Read twice (the priority lane, the queue after a full reconcile) and run one after
        // the other: the second run finds the request handled and only reconciles.
        let _turn = self.honouring.take(instance).await;
        let read: Vec<i64> = sqlx::query_scalar(sql::RESTART_REQUEST_PENDING)
            .bind(instance)
            .fetch_all(self.pool())
            .await?;
        let ask = if read.is_empty() {
            Ask::Reconcile
        } else {
            Ask::Restart
        };
        let outcome = self
            .reconcile_instance(instance, &Trigger::RestartRequest, ask, Mode::Act)
            .await?;
        if ask == Ask::Reconcile {
            return Ok(outcome);
        }
        let text = match (&outcome.skipped, outcome.action) {
            (None, Did::Restart) => format!(
                "restarted: new actor {}",
                outcome.new_actor_id.as_deref().unwrap_or("?")
            ),
            _ => format!("not restarted: {}", outcome.reason),
        };
        sqlx::query(sql::FINISH_RESTART_REQUESTS)
            .bind(instance)
            .bind(&text)
            .bind(&read)
            .execute(self.pool())
            .await?;
        Ok(outcome)
    }

    /// Instances with durable restart requests not yet honoured (each once, oldest first).
    pub async fn pending_restart_requests(&self) -> Result<Vec<Uuid>, DuroError> {
        let pending: Vec<(i64, Uuid)> = sqlx::query_as(sql::PENDING_RESTART_REQUESTS)
            .fetch_all(self.pool())
            .await?;
        let mut seen = HashSet::new();
        Ok(pending
            .into_iter()
            .filter_map(|(_, i)| seen.insert(i).then_some(i))
            .collect())
    }
}

/// The whole fleet as observed and decided.
pub struct Fleet {
    /// The database's time at which the verdicts were decided.
    pub observed_at: DateTime<Utc>,
    pub instances: Vec<(Observed, Decision)>,
    /// Live actors whose CMS row no longer exists (by instance id).
    pub deleted_with_live_actors: Vec<(Uuid, Vec<String>)>,
}

/// One row of `sql/fleet.sql`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct FleetRow {
    id: Uuid,
    k8s_name: String,
    dns_name: Option<String>,
    state: crate::instance::InstanceState,
    health_status: crate::instance::HealthStatus,
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
    pub(super) fn id(&self) -> Uuid {
        self.id
    }

    pub(super) fn actor_id(&self) -> Option<&str> {
        self.actor_id.as_deref()
    }

    pub(super) fn state(&self) -> &crate::instance::InstanceState {
        &self.state
    }

    pub(super) fn into_observed(self, live: Vec<String>) -> Observed {
        let actor =
            self.actor_id
                .as_ref()
                .map(|_| match (&self.actor_status, self.actor_pending) {
                    (None, true) => ActorState::Pending,
                    (None, false) => ActorState::Absent,
                    (Some(s), _) if crate::actor_state::runs(s) => ActorState::Running {
                        last_progress: self.actor_last_progress.unwrap_or_else(crate::clock::now),
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
            legacy: Vec::new(),
            seen: None,
        }
    }
}

/// Instances with a restart request being honoured in this process: a second run for the
/// same instance waits its turn (runs for other instances do not).
#[derive(Default)]
pub(super) struct InstanceTurns {
    busy: std::sync::Mutex<HashSet<Uuid>>,
    freed: tokio::sync::Notify,
}

impl InstanceTurns {
    async fn take(self: &Arc<Self>, id: Uuid) -> Turn {
        loop {
            // Registered before the look, so a release in between is not missed.
            let freed = self.freed.notified();
            if self.lock().insert(id) {
                return Turn {
                    turns: self.clone(),
                    id,
                };
            }
            freed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One instance's turn; released on drop (a panic or a cancelled future included).
struct Turn {
    turns: Arc<InstanceTurns>,
    id: Uuid,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.lock().remove(&self.id);
        self.turns.freed.notify_waiters();
    }
}
