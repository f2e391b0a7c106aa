//! The eager lease: a started (or changed) actor is leased to this replica and put on its
//! probe scheduler at once, instead of after Duroxide's dispatcher has run the actor's first
//! turn and lease activity. A start takes the lease in its own transaction, so the actor
//! skips that first renewal ([`ActorInput::leased_at_start`]); a state change right after it
//! is seen. (A lease's whole life: [`crate::lease`].)

use std::sync::Arc;
use std::time::Duration;

use super::{ActorControl, DuroError};
use crate::actor::ActorInput;
use crate::check::{ActorDeps, CheckInput, CheckOutcome, Pace};
use crate::cms::{InstanceRow, Seen};
use crate::lease::store::Claim;

/// Where a start's first check runs: inline on the priority lane (an explicit restart) or
/// on the replica's check scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstCheckOn {
    Inline,
    Scheduler,
}

/// The first probe of a single start, being prepared ([`ActorControl::prepare_first_probe`]).
pub(super) enum FirstProbe {
    /// Prepared from what the caller read with the row.
    Seen(Seen),
    /// Reading the row beside the start's transaction, then prepared.
    Reading(tokio::task::JoinHandle<Option<Seen>>),
}

impl FirstProbe {
    /// What the probe was prepared for, if known by now (a read beside the start's
    /// transaction has almost always finished by its commit: one statement beside several).
    /// Never waits: the first check reads the row itself otherwise.
    pub(super) async fn seen(self) -> Option<Seen> {
        match self {
            FirstProbe::Seen(seen) => Some(seen),
            FirstProbe::Reading(read) if read.is_finished() => read.await.ok().flatten(),
            FirstProbe::Reading(_) => None,
        }
    }
}

/// A single start's first check registered ahead of the turns ([`ActorControl::first_check_ahead`]).
pub(super) struct FirstCheckAhead(Option<(Arc<crate::first_checks::FirstChecks>, uuid::Uuid)>);

impl FirstCheckAhead {
    /// The start did not commit: no first check to wait for.
    pub(super) fn cancel(&self) {
        if let Some((checks, instance)) = &self.0 {
            checks.done(*instance);
        }
    }
}

/// How long an explicit restart's inline first check may take on the priority lane.
const FIRST_CHECK_WAIT: Duration = Duration::from_secs(1);

/// How a started or changed actor is put on this replica's scheduler.
#[derive(Debug, Clone, Copy)]
pub(super) enum Eager {
    /// Leased here, first check now (after the checks already due).
    Lease,
    /// Leased here, first check before every check already due (an explicit restart).
    LeaseFirst,
    /// Leased here even from a live holder, and checked now (a stale actor re-leased).
    CheckNow,
    /// Checked now where its lease is free or already here; a live holder keeps it and checks
    /// at its own interval (a state change: a hint anyone can forge never moves a lease).
    CheckNowIfFree,
}

impl ActorControl {
    /// How long an owner record lasts without a renewal.
    pub(super) fn owner_ttl(&self) -> Duration {
        self.settings.lease_renew * crate::lease::LEASE_OVERLAP
    }

    /// The scheduler entry of a started actor: its first check at once (without reading the
    /// row first when `seen` is what the start read).
    pub(super) fn first_lease(
        &self,
        input: &ActorInput,
        actor_id: &str,
        seen: Option<Seen>,
    ) -> crate::lease::Lease {
        crate::lease::Lease {
            instance_id: input.instance_id,
            actor_id: actor_id.to_string(),
            interval: self.settings.check_interval,
            first_in: Duration::ZERO,
            unhealthy_after: input.unhealthy_after,
            actor_states: input.actor_states.clone(),
            seen,
        }
    }

    /// Before a single start's transaction: the first probe ([`crate::probe::Prober::prepare`])
    /// on the prober that will run the first check (`on`), run while the start commits,
    /// against the state and target the caller read with the row (`seen`) or, without
    /// them, read now beside the transaction. That is the first check's [`Seen`] (its write
    /// is fenced on it; a row that changed meanwhile is probed again); a state that calls
    /// for no actor prepares nothing and reads as `None`, so the check reads the row and ends
    /// there. `None` without an eager lease or a target.
    pub(super) fn prepare_first_probe(
        &self,
        row: &InstanceRow,
        on: FirstCheckOn,
        seen: Option<&Seen>,
    ) -> Option<FirstProbe> {
        let (deps, scheduler) = self.eager.as_ref()?;
        if !row.has_target {
            return None;
        }
        let prober = match on {
            FirstCheckOn::Inline => deps.prober.clone(),
            FirstCheckOn::Scheduler => scheduler.prober().clone(),
        };
        if let Some(seen) = seen {
            return prepare_seen(&prober, &self.settings.actor_states, row.id, seen.clone())
                .map(FirstProbe::Seen);
        }
        let (pool, id) = (deps.pool.clone(), row.id);
        let states = self.settings.actor_states.clone();
        Some(FirstProbe::Reading(tokio::spawn(async move {
            let row = crate::cms::instance_for_check(&pool, id).await.ok()??;
            prepare_seen(&prober, &states, id, Seen::from(row))
        })))
    }

    /// Before the commit of a single start leased here whose first probe is prepared
    /// (`probe`; `None` otherwise): its first check goes before this replica's Duroxide
    /// turns ([`crate::first_checks`]) — the actor's first turn, which the commit wakes,
    /// waits for it a moment. [`FirstCheckAhead::cancel`] if the commit fails.
    pub(super) fn first_check_ahead(
        &self,
        instance: uuid::Uuid,
        probe: Option<&FirstProbe>,
    ) -> FirstCheckAhead {
        let checks = self.store.first_checks();
        match probe {
            Some(_) => {
                checks.begin(instance);
                FirstCheckAhead(Some((checks.clone(), instance)))
            }
            None => FirstCheckAhead(None),
        }
    }

    /// The eager lease of a started actor, inside the transaction that starts it: the row
    /// naming the actor and the actor's lease commit together, and the first check waits
    /// for one commit, not two. `true`: this replica holds the lease (call
    /// [`ActorControl::schedule_first_check`] once the transaction has committed).
    pub(super) async fn lease_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        input: &ActorInput,
        actor_id: &str,
    ) -> Result<bool, DuroError> {
        let Some((_, scheduler)) = &self.eager else {
            return Ok(false);
        };
        let me = (scheduler.id().name(), scheduler.id().epoch());
        let holder = crate::lease::store::for_actor(
            &mut **tx,
            input.instance_id,
            actor_id,
            me,
            self.owner_ttl(),
            Claim::Take,
        )
        .await?;
        Ok(holder.is_some_and(|h| h.is(me)))
    }

    /// After the commit of a start leased here ([`ActorControl::lease_in`]): the actor's
    /// first check on this replica's scheduler.
    pub(super) fn schedule_first_check(
        &self,
        input: &ActorInput,
        actor_id: &str,
        how: Eager,
        seen: Option<Seen>,
    ) {
        if let Some((_, scheduler)) = &self.eager {
            schedule(scheduler, self.first_lease(input, actor_id, seen), how);
        }
    }

    /// After `actor_id` of `instance` is removed from Duroxide: this replica stops checking it
    /// now, instead of at its next check, which would probe a target whose row may be gone
    /// and then have its write refused (the entry and its probe connection are dropped).
    pub(super) fn stop_checking(&self, instance: uuid::Uuid, actor_id: &str) {
        if let Some((_, scheduler)) = &self.eager
            && scheduler.release(instance, actor_id)
        {
            scheduler.prober().forget(instance);
        }
    }

    /// The same control on the priority lane's connections, with the lane's own checks
    /// (`deps`): an explicit restart's first check runs inline on the lane, then the
    /// scheduler takes the lease over for the checks after it.
    pub fn for_lane(&self, pool: sqlx::PgPool, deps: Arc<ActorDeps>) -> Self {
        let mut lane = self.clone();
        lane.pool = pool;
        if let Some((_, scheduler)) = &self.eager {
            lane.eager = Some((deps, scheduler.clone()));
            lane.first_check_inline = true;
        }
        lane
    }

    /// The first check of an actor started here, leased to this replica, run now by the
    /// caller (the priority lane): neither the scheduler's queue of due checks nor its probe
    /// slots stand in front of it. The scheduler then checks it on its rhythm; a check that
    /// could not run goes to the front of the scheduler's queue instead.
    pub(super) async fn first_check_here(
        &self,
        input: &ActorInput,
        actor_id: &str,
        seen: Option<Seen>,
    ) {
        let Some((deps, scheduler)) = &self.eager else {
            return;
        };
        let lease = self.first_lease(input, actor_id, seen.clone());
        let holder = (scheduler.id().name(), scheduler.id().epoch());
        let check = CheckInput {
            instance_id: input.instance_id,
            actor_states: input.actor_states.clone(),
            consecutive_failures: 0,
            unhealthy_after: input.unhealthy_after,
        };
        // A slow or unreachable target must not hold the lane (and the request's turn): past
        // FIRST_CHECK_WAIT the scheduler runs the check instead, first.
        // A panic in it is an error like any other (counted): the scheduler runs it again.
        let checked = tokio::time::timeout(
            FIRST_CHECK_WAIT,
            crate::panics::caught(
                "check",
                crate::check::leased_check(deps, actor_id, holder, check, seen, Pace::Now),
            ),
        )
        .await
        .unwrap_or(Ok(Err(crate::check::CheckError::NoAnswer(
            FIRST_CHECK_WAIT,
        ))))
        .unwrap_or_else(|panic| Err(panic.into()));
        match checked {
            Ok((
                CheckOutcome::Checked {
                    consecutive_failures,
                    ..
                },
                seen,
            )) => scheduler.lease_checked(lease, consecutive_failures, seen),
            // The lease moved, the row changed to a state without an actor, or the actor was
            // superseded meanwhile: nothing of ours to schedule.
            Ok((CheckOutcome::LeaseLost | CheckOutcome::Exit { .. }, _)) => {}
            Ok((CheckOutcome::Leased { .. }, _)) => scheduler.lease_first(lease),
            Err(e) => {
                tracing::debug!(actor_id, error = %e, "the lane's first check could not run; the scheduler runs it first");
                scheduler.lease_first(lease);
            }
        }
    }

    /// A state change that changes what a probe would see (e.g. toygres' create flow:
    /// `creating` without a connection string → `running` with one): this replica takes the
    /// instance's probe lease and checks it at once, instead of the holder waiting out the
    /// interval (the balancer evens the fleet out again).
    pub fn check_now(&self, row: &InstanceRow, actor_id: &str) {
        let input = self.input_for(row);
        self.lease_here_and_check(&input, actor_id, Eager::CheckNow);
    }

    /// After a state change of the row: check at once if the lease is free or held here; a
    /// live holder elsewhere is left alone (it checks at its interval).
    pub fn check_changed_now(&self, row: &InstanceRow, actor_id: &str) {
        let input = self.input_for(row);
        self.lease_here_and_check(&input, actor_id, Eager::CheckNowIfFree);
    }

    pub(super) fn lease_here_and_check(&self, input: &ActorInput, actor_id: &str, how: Eager) {
        let Some((deps, scheduler)) = &self.eager else {
            return;
        };
        let (deps, scheduler) = (deps.clone(), scheduler.clone());
        let actor_id = actor_id.to_string();
        let owner_ttl = self.owner_ttl();
        let lease = self.first_lease(input, &actor_id, None);
        let claim = match how {
            Eager::CheckNowIfFree => Claim::KeepHolder,
            Eager::Lease | Eager::LeaseFirst | Eager::CheckNow => Claim::Take,
        };
        tokio::spawn(async move {
            let me = (scheduler.id().name(), scheduler.id().epoch());
            match crate::lease::store::for_actor(
                &deps.pool,
                lease.instance_id,
                &actor_id,
                me,
                owner_ttl,
                claim,
            )
            .await
            {
                Ok(Some(h)) if h.is(me) => schedule(&scheduler, lease, how),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(actor_id, error = %e, "eager lease failed; the actor leases on its first turn")
                }
            }
        });
    }
}

/// `seen` of instance `id`, with its first probe prepared, if its state calls for an actor
/// (`states`); `None` otherwise (nothing prepared: the first check reads the row and ends).
fn prepare_seen(
    prober: &Arc<crate::probe::Prober>,
    states: &[String],
    id: uuid::Uuid,
    seen: Seen,
) -> Option<Seen> {
    if !states.contains(&seen.state) {
        return None;
    }
    if let Some(target) = &seen.target {
        prober.prepare(id, target);
    }
    Some(seen)
}

fn schedule(scheduler: &crate::lease::CheckScheduler, lease: crate::lease::Lease, how: Eager) {
    match how {
        Eager::Lease => scheduler.lease(lease),
        Eager::LeaseFirst => scheduler.lease_first(lease),
        Eager::CheckNow | Eager::CheckNowIfFree => scheduler.check_now(lease),
    }
}
