//! Acting on a decision ([`Reconciler::act`]): the bounds every restart passes (heal
//! backoff, the healing breaker, re-leasing a live actor first, the per-instance minimum
//! interval and the fleet-wide rate), then the start, restart or cancel through
//! [`crate::duro::ActorControl`], and the decision log.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Ask, Did, HintKind, Mode, Outcome, Reconciler, Trigger};
use crate::duro::{DuroError, Priority};
use crate::metrics;
use crate::sql;
use crate::verdict::{Action, Decision, Observed, Verdict};

/// Why an action was held back, and what the outcome then says was done.
struct HeldBack {
    did: Did,
    why: String,
}

impl Reconciler {
    /// Act on `decision` for the observed row: the bounds first ([`Reconciler::held_back`]),
    /// then the action itself ([`Reconciler::carry_out`]), then its report and decision log.
    pub(crate) async fn act(
        &self,
        obs: &Observed,
        decision: Decision,
        trigger: &Trigger,
        ask: Ask,
        mode: Mode,
    ) -> Result<Outcome, DuroError> {
        let row = &obs.row;
        let mut outcome = Outcome {
            instance_id: row.id,
            k8s_name: row.k8s_name.clone(),
            verdict: decision.verdict,
            reason: decision.reason.clone(),
            action: decision.action.did(),
            old_actor_id: row.actor_id.clone(),
            new_actor_id: row.actor_id.clone(),
            skipped: None,
        };
        if decision.action == Action::Noop {
            self.settle_backoff(row, decision.verdict);
            metrics::reconcile_action(Did::Noop.label());
            if mode == Mode::Act {
                self.check_if_changed(obs, trigger);
            }
            return Ok(outcome);
        }
        if mode == Mode::DryRun {
            outcome.skipped = Some("dry run".into());
            return Ok(outcome);
        }
        // Heals of an existing actor are rate-limited per instance; first starts and
        // explicit restarts are not.
        let is_heal = matches!(decision.action, Action::Restart) && ask == Ask::Reconcile;
        if let Some(held) = self
            .held_back(obs, &decision, trigger, ask, is_heal)
            .await?
        {
            outcome.action = held.did;
            outcome.skipped = Some(held.why);
            metrics::reconcile_action(Did::Noop.label());
            return Ok(outcome);
        }
        let started = Instant::now();
        let result = self.carry_out(obs, &decision, trigger, ask).await;
        if is_heal {
            self.note_heal(row.id);
        }
        let (old, new) = self
            .report(obs, &decision, trigger, ask, started, result)
            .await?;
        outcome.old_actor_id = old;
        outcome.new_actor_id = new;
        Ok(outcome)
    }

    /// A state change of a live actor's row may change what its probe sees (a connection
    /// string arrived with `running`): check it now, not next interval — only if the row
    /// really changed since its last check (a hint anyone can forge, the row is the truth:
    /// `updated_at` moves with every write of the row, and a check's own write leaves it
    /// before `last_health_check`), and never by taking a live holder's lease.
    fn check_if_changed(&self, obs: &Observed, trigger: &Trigger) {
        let row = &obs.row;
        if let Trigger::Notification {
            op: HintKind::State,
            ..
        } = trigger
            && row.has_target
            && row.last_health_check.is_none_or(|t| row.updated_at > t)
            && obs.actor.as_ref().is_some_and(|a| a.is_live())
            && let Some(actor_id) = &row.actor_id
            && self.term().is_some()
        {
            self.control.check_changed_now(row, actor_id);
        }
    }

    /// The bounds every restart passes, in order: the heal backoff, the healing breaker,
    /// re-leasing a live stale actor first, the per-instance minimum interval and the
    /// fleet-wide rate. `Some` when the action waits (an explicit restart or an adoption
    /// held back by a rate is an error instead: [`DuroError::RateLimited`], retried).
    async fn held_back(
        &self,
        obs: &Observed,
        decision: &Decision,
        trigger: &Trigger,
        ask: Ask,
        is_heal: bool,
    ) -> Result<Option<HeldBack>, DuroError> {
        let row = &obs.row;
        let noop = |why: String| {
            Ok(Some(HeldBack {
                did: Did::Noop,
                why,
            }))
        };
        if is_heal && let Some(wait) = self.backoff_remaining(row.id) {
            tracing::debug!(instance = %crate::redact::for_log(&row.k8s_name, 255), verdict = %decision.verdict, "heal skipped: backoff");
            return noop(format!(
                "heal backoff: next attempt in {}s",
                wait.as_secs().max(1)
            ));
        }
        // Stale, not asked for: when much of the fleet is stale at once the cause is not the
        // actors — alert (the breaker's gauge) instead of restarting them. And a stale actor
        // that is alive is first re-leased here and checked at once; only if that does not
        // help within one stale period is it restarted.
        if decision.verdict == Verdict::Stale && ask == Ask::Reconcile {
            if self.breaker.holds() {
                return noop("healing paused: too much of the fleet is stale at once (or was, less than a check interval ago)".into());
            }
            if let Some(held) = self.re_lease(obs, decision, trigger).await {
                return Ok(Some(held));
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
                if ask == Ask::Restart {
                    return Err(DuroError::RateLimited(self.limits.min_interval - age));
                }
                return noop(format!(
                    "restart held back: the actor is {}s old (minimum interval {}s)",
                    age.as_secs(),
                    self.limits.min_interval.as_secs()
                ));
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
            if ask == Ask::Restart || matches!(decision.action, Action::Adopt { .. }) {
                return Err(DuroError::RateLimited(wait));
            }
            return noop("restart held back: fleet-wide restart rate".into());
        }
        Ok(None)
    }

    /// A stale actor that is alive: lease it to this replica and check it at once, once per
    /// stale period; `None` when it was re-leased less than a stale period ago (a restart
    /// follows) or cannot be (not live, not leading).
    async fn re_lease(
        &self,
        obs: &Observed,
        decision: &Decision,
        trigger: &Trigger,
    ) -> Option<HeldBack> {
        let row = &obs.row;
        let live = obs.actor.as_ref().is_some_and(|a| a.is_live());
        let actor_id = row.actor_id.as_ref()?;
        if !live || self.term().is_none() {
            return None;
        }
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
        if recently {
            return None;
        }
        self.control.check_now(row, actor_id);
        let same = (row.actor_id.as_deref(), row.actor_id.as_deref());
        let entry = DecisionEntry {
            did: Did::ReLease,
            ..DecisionEntry::of(row, decision, same)
        };
        self.log_decision(trigger, entry).await;
        Some(HeldBack {
            did: Did::ReLease,
            why: "the live actor was re-leased to this replica and checked at once; a restart follows only if it stays stale".into(),
        })
    }

    /// The start, restart, adoption or cancel itself, fenced by the leader's term (not for
    /// operator requests); the old and new actor ids.
    async fn carry_out(
        &self,
        obs: &Observed,
        decision: &Decision,
        trigger: &Trigger,
        ask: Ask,
    ) -> Result<(Option<String>, Option<String>), DuroError> {
        let row = &obs.row;
        let fence = self.fence_for(trigger)?;
        let fence = fence.as_ref();
        // Starts and restarts record their decision in their own transaction.
        let record = crate::duro::Record {
            action: decision.action.did(),
            reason: &decision.reason,
            trigger: trigger.label(),
            replica: &self.replica,
        };
        let priority = if ask == Ask::Restart || matches!(trigger, Trigger::Operator(_)) {
            Priority::Explicit
        } else {
            Priority::Background
        };
        match &decision.action {
            Action::Noop => Ok((row.actor_id.clone(), row.actor_id.clone())),
            Action::Start { named: Some(id) } => self
                .control
                .start_named(row, id, fence, Some(&record), obs.seen.as_ref())
                .await
                .map(|_| (row.actor_id.clone(), Some(id.clone()))),
            Action::Start { named: None } | Action::Restart => {
                let reason = format!("{}: {}", decision.verdict, decision.reason);
                self.control
                    .replace_with(
                        row,
                        &reason,
                        fence,
                        priority,
                        Some(&record),
                        obs.seen.as_ref(),
                    )
                    .await
                    .map(|t| (t.old_actor_id, t.new_actor_id))
            }
            Action::Adopt { start, .. } => self.adopt(obs, decision, *start, fence, &record).await,
            Action::Cancel { actor_ids } => {
                for a in actor_ids {
                    self.control.cancel(a, &decision.reason, fence).await?;
                }
                Ok((actor_ids.first().cloned(), row.actor_id.clone()))
            }
        }
    }

    /// Count, log and record what [`Reconciler::carry_out`] did (the decisions its own
    /// transaction did not record: cancels, adoptions without a start, failures).
    async fn report(
        &self,
        obs: &Observed,
        decision: &Decision,
        trigger: &Trigger,
        ask: Ask,
        started: Instant,
        result: Result<(Option<String>, Option<String>), DuroError>,
    ) -> Result<(Option<String>, Option<String>), DuroError> {
        let row = &obs.row;
        let did = decision.action.did();
        let (old, new) = match result {
            Ok(ids) => ids,
            Err(e) => {
                metrics::reconcile_error();
                let error = e.to_string();
                let entry = DecisionEntry::of(row, decision, (row.actor_id.as_deref(), None));
                self.log_decision(
                    trigger,
                    DecisionEntry {
                        error: Some(&error),
                        ..entry
                    },
                )
                .await;
                return Err(e);
            }
        };
        metrics::reconcile_action(did.label());
        if let Trigger::Notification { at: Some(at), .. } = trigger {
            metrics::event_to_action(crate::clock::now_seconds() - at);
        }
        let explicit = ask == Ask::Restart || matches!(trigger, Trigger::Operator(_));
        if explicit || crate::quiet::RECONCILED.admit() {
            tracing::info!(
                instance = %crate::redact::for_log(&row.k8s_name, 255), instance_id = %row.id, verdict = %decision.verdict,
                action = did.label(), reason = %decision.reason,
                old_actor = old.as_deref().unwrap_or(""), new_actor = new.as_deref().unwrap_or(""),
                trigger = %trigger.label(), took_ms = started.elapsed().as_millis() as u64,
                "reconciled"
            );
        }
        let recorded = !matches!(
            decision.action,
            Action::Cancel { .. } | Action::Adopt { start: false, .. }
        );
        if !recorded {
            let entry = DecisionEntry::of(row, decision, (old.as_deref(), new.as_deref()));
            self.log_decision(trigger, entry).await;
        }
        Ok((old, new))
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
                .replace_with(
                    row,
                    &reason,
                    fence,
                    Priority::Background,
                    Some(record),
                    obs.seen.as_ref(),
                )
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

    /// Record a decision in `toygres_actors.decisions`, fenced as its action was.
    async fn log_decision(&self, trigger: &Trigger, entry: DecisionEntry<'_>) {
        // Fenced as the action was: a replica that lost its term records nothing.
        let Ok(fence) = self.fence_for(trigger) else {
            return;
        };
        let r = sqlx::query(sql::INSERT_DECISION)
            .bind(entry.id)
            .bind(entry.name)
            .bind(entry.did.label())
            .bind(entry.reason)
            .bind(entry.old)
            .bind(entry.new)
            .bind(trigger.label())
            .bind(&self.replica)
            .bind(entry.error.map(crate::redact::redact_error))
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

/// One row of the decision log.
struct DecisionEntry<'a> {
    id: Uuid,
    name: &'a str,
    did: Did,
    reason: &'a str,
    old: Option<&'a str>,
    new: Option<&'a str>,
    error: Option<&'a str>,
}

impl<'a> DecisionEntry<'a> {
    /// The entry of `decision` for `row`, with the actor ids before and after.
    fn of(
        row: &'a crate::cms::InstanceRow,
        decision: &'a Decision,
        (old, new): (Option<&'a str>, Option<&'a str>),
    ) -> Self {
        DecisionEntry {
            id: row.id,
            name: &row.k8s_name,
            did: decision.action.did(),
            reason: &decision.reason,
            old,
            new,
            error: None,
        }
    }
}
