//! The set-based reconcile of a storm: when many hints are queued at once (a burst of
//! inserts or deletes, the full reconcile after a reconnect or a restore), [`ReconcileQueue`]
//! hands them over in batches instead of one by one.
//!
//! Two queries observe the whole batch (every row with Duroxide's view of its actor,
//! `sql/fleet_of.sql`; every live incarnation, `sql/live_actors_of_instances.sql`);
//! [`verdict::decide`] runs on each instance exactly as on the per-instance path. Then:
//! - every first start, in one transaction
//!   ([`ActorControl::start_batch`](crate::duro::ActorControl::start_batch));
//! - every actor of a row that is gone, removed from Duroxide outright in one transaction
//!   ([`ActorControl::delete_batch`](crate::duro::ActorControl::delete_batch): no cancel
//!   turn to wait for, 10,000 at a time would need minutes of turns; the decision log
//!   keeps the record, action `delete`);
//! - every cancel (rows that call for no actor, strays), in one transaction
//!   ([`ActorControl::cancel_batch`](crate::duro::ActorControl::cancel_batch));
//! - every no-op, settled here.
//!
//! Everything else — restarts and heals (backoff, breaker, re-lease and rate limits live on
//! the per-instance path), a start of a named id, a state change that may need a check at
//! once, a row changed under us — goes back to the per-instance path, which reads it again.
//! So a batch is the common case done in bulk, never a second set of rules.
//!
//! [`ReconcileQueue`]: super::ReconcileQueue

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use uuid::Uuid;

use super::fleet::FleetRow;
use super::{HintKind, Reconciler, Trigger};
use crate::duro::{CancelActors, DuroError, NewStart};
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action};

/// Below this many queued hints the per-instance path runs (it is the quickest for one).
pub const BATCH_MIN: usize = 16;
/// At most this many instances in one batch (one transaction per kind of action).
pub const BATCH_MAX: usize = 500;

/// What a batch decided, before it carries it out.
#[derive(Default)]
struct Plan {
    starts: Vec<NewStart>,
    cancels: Vec<CancelActors>,
    /// Actors of rows that are gone: deleted from Duroxide outright.
    deletes: Vec<CancelActors>,
    /// For the per-instance path.
    single: Vec<Uuid>,
    /// Notification clocks of the starts (for the event → action histogram).
    clocks: HashMap<Uuid, f64>,
    /// The trigger whose fence the batch's writes carry (all of a batch's are plain hints,
    /// fenced alike).
    fence_trigger: Option<Trigger>,
}

impl Reconciler {
    /// Reconcile many instances at once. Returns the ids the batch did not settle, for the
    /// per-instance path. On an error the caller sends the whole batch there (every step is
    /// idempotent, so what was done already is a no-op the second time).
    pub async fn reconcile_batch(&self, jobs: &[(Uuid, Trigger)]) -> Result<Vec<Uuid>, DuroError> {
        let started = Instant::now();
        let plan = self.plan_batch(jobs).await?;
        let Some(trigger) = plan.fence_trigger.clone() else {
            return Ok(plan.single);
        };
        let fence = self.fence_for(&trigger)?;
        let mut single = plan.single;
        let cancelled = plan.cancels.len();
        let deleted = plan.deletes.len();
        if !plan.deletes.is_empty() {
            self.control
                .delete_batch(&plan.deletes, fence.as_ref(), &self.replica)
                .await
                .inspect_err(|_| metrics::reconcile_error())?;
            for d in &plan.deletes {
                self.forget_backoff(d.instance_id);
            }
            metrics::reconcile_batched("delete", deleted);
        }
        if !plan.cancels.is_empty() {
            self.control
                .cancel_batch(&plan.cancels, fence.as_ref(), &self.replica)
                .await
                .inspect_err(|_| metrics::reconcile_error())?;
            for c in &plan.cancels {
                self.forget_backoff(c.instance_id);
            }
            metrics::reconcile_batched("cancel", cancelled);
        }
        let done = self
            .control
            .start_batch(&plan.starts, fence.as_ref(), &self.replica)
            .await
            .inspect_err(|_| metrics::reconcile_error())?;
        let now_s = crate::clock::now_seconds();
        for (id, _) in &done {
            if let Some(at) = plan.clocks.get(id) {
                metrics::event_to_action(now_s - at);
            }
        }
        if !done.is_empty() {
            metrics::reconcile_batched("start", done.len());
        }
        if done.len() < plan.starts.len() {
            let ok: HashSet<Uuid> = done.iter().map(|(i, _)| *i).collect();
            single.extend(
                plan.starts
                    .iter()
                    .map(|s| s.row.id)
                    .filter(|i| !ok.contains(i)),
            );
        }
        metrics::reconcile_batch_done();
        tracing::info!(
            started = done.len(),
            cancelled,
            deleted,
            per_instance = single.len(),
            batch = jobs.len(),
            trigger = %trigger.label(),
            took_ms = started.elapsed().as_millis() as u64,
            "reconciled a batch"
        );
        Ok(single)
    }

    /// Observe the batch in two queries and decide for each instance.
    async fn plan_batch(&self, jobs: &[(Uuid, Trigger)]) -> Result<Plan, DuroError> {
        let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
        let rows: Vec<FleetRow> = sqlx::query_as(&sql::with_duroxide_schema(
            sql::FLEET_OF,
            &self.control.schema,
        ))
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        let mut by_id: HashMap<Uuid, FleetRow> = rows.into_iter().map(|r| (r.id(), r)).collect();
        // Live incarnations decide only for rows that are gone, name an actor, or call for
        // none: a row that names no actor and calls for one is started whatever else runs
        // (as on the per-instance path), so a burst of inserts skips the lookup.
        let lookup: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| {
                by_id
                    .get(id)
                    .is_none_or(|r| r.actor_id().is_some() || !self.control.wants_actor(r.state()))
            })
            .collect();
        let mut live = if lookup.is_empty() {
            HashMap::new()
        } else {
            self.control.live_actors_of(&lookup).await?
        };
        let now = crate::clock::now();
        let mut plan = Plan::default();
        for (id, trigger) in jobs {
            let actors = live.remove(id).unwrap_or_default();
            let Some(row) = by_id.remove(id) else {
                // The row is gone: cancel whatever still runs for it.
                if actors.is_empty() {
                    if matches!(trigger, Trigger::Notification { .. }) {
                        // Neither a row nor an actor: a forged or stale hint.
                        metrics::notification_unknown();
                    }
                    metrics::reconcile_action("noop");
                    continue;
                }
                plan.fence_trigger.get_or_insert_with(|| trigger.clone());
                plan.deletes.push(CancelActors {
                    instance_id: *id,
                    name: format!("(deleted {id})"),
                    reason: format!(
                        "row deleted, but {} runs: removed from Duroxide",
                        actors.join(", ")
                    ),
                    actors,
                    keep: None,
                    trigger: trigger.label(),
                });
                continue;
            };
            let observed = row.into_observed(actors);
            let decision = verdict::decide(&observed, &self.rules, now);
            let row = observed.row;
            match decision.action {
                // A state change of a row with an actor may need a check at once.
                Action::Noop
                    if row.actor_id.is_some()
                        && matches!(
                            trigger,
                            Trigger::Notification {
                                op: HintKind::State,
                                ..
                            }
                        ) =>
                {
                    plan.single.push(*id)
                }
                Action::Noop => {
                    self.settle_backoff(&row, decision.verdict);
                    metrics::reconcile_action("noop");
                }
                Action::Start { named: None } if row.actor_id.is_none() => {
                    if let Trigger::Notification { at: Some(at), .. } = trigger {
                        plan.clocks.insert(*id, *at);
                    }
                    plan.fence_trigger.get_or_insert_with(|| trigger.clone());
                    plan.starts.push(NewStart {
                        row,
                        reason: decision.reason,
                        trigger: trigger.label(),
                    });
                }
                Action::Cancel { actor_ids } => {
                    plan.fence_trigger.get_or_insert_with(|| trigger.clone());
                    let keep = (self.control.wants_actor(&row.state))
                        .then(|| row.actor_id.clone())
                        .flatten();
                    plan.cancels.push(CancelActors {
                        instance_id: *id,
                        name: row.k8s_name,
                        actors: actor_ids,
                        reason: decision.reason,
                        keep,
                        trigger: trigger.label(),
                    });
                }
                _ => plan.single.push(*id),
            }
        }
        Ok(plan)
    }
}
