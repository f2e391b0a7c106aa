//! Acting on a decision ([`Reconciler::act`]): the bounds every restart passes (heal
//! backoff, the healing breaker, re-leasing a live actor first, the per-instance minimum
//! interval and the fleet-wide rate), then the start, restart or cancel through
//! [`crate::duro::ActorControl`], and the decision log.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{HintKind, Outcome, Reconciler, Trigger};
use crate::duro::DuroError;
use crate::metrics;
use crate::sql;
use crate::verdict::{Action, Decision, Observed, Verdict};

impl Reconciler {
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
            // connection string arrived with `running`): check it now, not next interval —
            // only if the row really changed since its last check (a hint anyone can forge,
            // the row is the truth: `updated_at` moves with every write of the row, and a
            // check's own write leaves it before `last_health_check`), and never by taking a
            // live holder's lease.
            if let Trigger::Notification {
                op: HintKind::State,
                ..
            } = trigger
                && !dry_run
                && row.has_target
                && row.last_health_check.is_none_or(|t| row.updated_at > t)
                && obs.actor.as_ref().is_some_and(|a| a.is_live())
                && let Some(actor_id) = &row.actor_id
                && self.term().is_some()
            {
                self.control.check_changed_now(row, actor_id);
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
                Some(t) => crate::clock::age(t),
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
        }
        // Adoption starts ours at the fleet-wide restart rate (a store's worth of legacy
        // actors is re-created at that pace, never all at once).
        if matches!(
            decision.action,
            Action::Restart | Action::Adopt { start: true, .. }
        ) && let Err(wait) = self.limits.take_token()
        {
            metrics::restart_limited("fleet");
            // An adoption is retried when the bucket allows (a legacy actor keeps writing
            // until then), not left to the next resync.
            if forced || matches!(decision.action, Action::Adopt { .. }) {
                return Err(DuroError::RateLimited(wait));
            }
            outcome.skipped = Some("restart held back: fleet-wide restart rate".into());
            metrics::reconcile_action("noop");
            return Ok(outcome);
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
        let recorded = !matches!(
            decision.action,
            Action::Cancel { .. } | Action::Adopt { start: false, .. }
        );
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
            Action::Adopt { start, .. } => self.adopt(obs, &decision, *start, fence, &record).await,
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
                    let now = crate::clock::now_seconds();
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

    /// Adopt the instance's legacy actors: ours started first when `start` (the row's id
    /// swapped from the legacy one, the decision in the same fenced transaction), then each
    /// legacy actor retired through the legacy store's client. A crash in between leaves a
    /// legacy actor beside ours, which the next observation retires.
    async fn adopt(
        &self,
        obs: &Observed,
        decision: &Decision,
        start: bool,
        fence: Option<&crate::identity::Term>,
        record: &crate::duro::Record<'_>,
    ) -> Result<(Option<String>, Option<String>), DuroError> {
        let row = &obs.row;
        let Some(legacy) = self.legacy() else {
            return Err(DuroError::Provider("legacy store not configured".into()));
        };
        let (old, new) = if start {
            let reason = format!("{}: {}", decision.verdict, decision.reason);
            let t = self
                .control
                .replace_with(row, &reason, fence, false, Some(record))
                .await?;
            // Our own incarnation the legacy id displaced on the row (ours started on the
            // insert, then toygres wrote its id) goes with it.
            for stray in &obs.other_live {
                self.control.cancel(stray, &reason, fence).await?;
            }
            (t.old_actor_id, t.new_actor_id)
        } else {
            // Only while our term lasts (no start's transaction checked it).
            drop(self.control.begin(fence).await?);
            (
                obs.legacy.first().map(|l| l.actor_id.clone()),
                row.actor_id.clone(),
            )
        };
        for actor in &obs.legacy {
            legacy.retire(actor, "adopted by toygres-actors").await?;
            tracing::info!(
                instance = %crate::redact::for_log(&row.k8s_name, 255), instance_id = %row.id,
                legacy_actor = %actor.actor_id, schema = legacy.schema(), kind = ?actor.kind,
                actor = new.as_deref().unwrap_or(""), "legacy actor adopted"
            );
        }
        Ok((old, new))
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
        // Fenced as the action was: a replica that lost its term records nothing.
        let Ok(fence) = self.fence_for(trigger) else {
            return;
        };
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
            .bind(fence.as_ref().map(|t| t.name.as_str()))
            .bind(fence.as_ref().map(|t| t.epoch))
            .bind(fence.as_ref().map(|t| t.term))
            .execute(self.pool())
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record the decision");
        }
    }
}
