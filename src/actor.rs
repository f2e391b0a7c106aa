//! The instance actor: a detached, durable Duroxide orchestration per monitored instance.
//!
//! **Version 2 (current): the actor owns its instance's probe lease.** One iteration is one
//! short activity ([`crate::lease::renewal::renew`]) and one durable timer of `lease_renew_ms` (default 20 min): the
//! activity checks the row (fencing, below) and records this actor as the owner of the
//! instance's probe lease — conditional on the row naming it, and never taking the lease from
//! its holder (a dead holder's leases are claimed by the replica ticks). Which replica probes
//! follows replica liveness, not this renewal (see [`crate::replica`]): the holder's
//! in-process [`crate::lease::CheckScheduler`] runs the health check ([`health_check`]: read →
//! probe → one fenced write) every `interval_ms`. A health check thus costs one read and one
//! write instead of two Duroxide turns; the durable loop turns only once per renewal. The write is fenced on the actor id, the holder and its
//! epoch and liveness, so probing never doubles when a lease moves. After
//! `iterations_per_execution` renewals the actor continues as new. An incarnation the service
//! started took its lease in the start's own transaction (`leased_at_start`): its first
//! iteration begins with the timer, so a fresh actor costs one Duroxide turn until its second
//! renewal.
//!
//! **Version 1** (kept registered so actors started by it replay, and upgraded to v2 at
//! their next continue-as-new) ran the health check as its activity on every iteration:
//! simpler, but two Duroxide turns per check (see docs/benchmarks.md, Capacity).
//!
//! The orchestration is deterministic on replay: no wall clock, randomness or map iteration.
//! Everything that varies (time, the row, the probe) happens inside the activity. The first
//! timer of an actor is shortened by a jitter derived from the instance id, so a burst of
//! starts does not keep firing (v1) or renewing (v2) together forever.
//!
//! Fencing: the activity checks that the row still names this orchestration as
//! `instance_actor_orchestration_id` and that the state still calls for an actor; the write
//! itself is conditional on the same id. A superseded actor, or one whose row is gone,
//! exits without writing.

use std::sync::Arc;
use std::time::Duration;

use duroxide::{ActivityContext, OrchestrationContext};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::check::{ActorDeps, CheckInput, CheckOutcome, health_check};
use crate::lease::renewal::LeaseInput;
use crate::lease::{DEFAULT_LEASE_RENEW, LEASE_OVERLAP};

/// The actor's input, carried across continue-as-new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorInput {
    pub instance_id: Uuid,
    pub k8s_name: String,
    pub interval_ms: u64,
    pub iterations_per_execution: u32,
    pub unhealthy_after: u32,
    pub actor_states: Vec<String>,
    /// Failed probes in a row so far.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Executions completed before this one (0 for a fresh actor).
    #[serde(default)]
    pub executions: u64,
    /// v2: how often the actor renews its probe lease (default when absent: [`DEFAULT_LEASE_RENEW`]).
    #[serde(default)]
    pub lease_renew_ms: Option<u64>,
    /// The service ran this incarnation's first check itself, right after starting it
    /// ("eager first check", to avoid waiting for Duroxide's dispatcher poll): the first
    /// iteration then begins with the timer.
    #[serde(default)]
    pub eager_first_check: bool,
    /// v2: the transaction that started this incarnation also recorded it as the owner of
    /// its instance's probe lease (the service's eager lease), so the first iteration's
    /// renewal would only repeat that write: it begins with the timer instead. A burst of
    /// starts then costs one Duroxide turn per actor instead of two turns and an activity.
    /// Honoured by orchestration version 2.1.0 only; absent (false) in the inputs of older
    /// releases.
    #[serde(default)]
    pub leased_at_start: bool,
}

/// Version 2 (2.1.0): renew the probe lease, sleep, repeat; continue as new every few
/// renewals. An incarnation whose start took its lease begins with the timer.
pub async fn instance_actor_v2(
    ctx: OrchestrationContext,
    input: ActorInput,
) -> Result<String, String> {
    lease_loop(ctx, input, true).await
}

/// Version 2.0.0: the same loop, renewing first in every execution whatever the input says
/// (the behaviour its stored histories and the release before's replicas have).
pub async fn instance_actor_v2_0(
    ctx: OrchestrationContext,
    input: ActorInput,
) -> Result<String, String> {
    lease_loop(ctx, input, false).await
}

async fn lease_loop(
    ctx: OrchestrationContext,
    mut input: ActorInput,
    honour_leased_at_start: bool,
) -> Result<String, String> {
    let renew = Duration::from_millis(
        input
            .lease_renew_ms
            .unwrap_or(DEFAULT_LEASE_RENEW.as_millis() as u64)
            .max(1),
    );
    let iterations = input.iterations_per_execution.max(1);
    for i in 0..iterations {
        let leased_at_start =
            honour_leased_at_start && i == 0 && input.executions == 0 && input.leased_at_start;
        if !leased_at_start && let Some(reason) = renew_lease(&ctx, &input, renew).await {
            return Ok(reason);
        }
        // A fresh actor's second renewal comes after between an eighth of a period and a full
        // one, fixed per instance id: actors started together (a burst, an install on an existing
        // CMS, a restore) would otherwise renew in one wave every period, and a wave of
        // 10,000 renewals is 20,000 turns due at once. Replay-safe: Duroxide matches timers
        // by position, not duration, so actors already past this point replay unchanged.
        let wait = if i == 0 && input.executions == 0 {
            first_delay(input.instance_id, renew)
        } else {
            renew
        };
        ctx.schedule_timer(wait).await;
    }
    input.executions += 1;
    ctx.continue_as_new_typed(&input).await
}

/// One renewal of the actor's probe lease: `Some(reason)` when the actor is to exit.
async fn renew_lease(
    ctx: &OrchestrationContext,
    input: &ActorInput,
    renew: Duration,
) -> Option<String> {
    let lease = LeaseInput {
        instance_id: input.instance_id,
        actor_states: input.actor_states.clone(),
        interval_ms: input.interval_ms,
        lease_ms: (renew * LEASE_OVERLAP).as_millis() as u64,
        unhealthy_after: input.unhealthy_after,
    };
    match ctx
        .schedule_activity_typed::<LeaseInput, CheckOutcome>(crate::config::ACTIVITY_LEASE, &lease)
        .await
    {
        Ok(CheckOutcome::Exit { reason }) => {
            ctx.trace_info(format!("actor for {} exits: {reason}", input.k8s_name));
            return Some(reason);
        }
        Ok(_) => {}
        // Could not renew now (e.g. the CMS was unreachable): the lease outlives one miss.
        Err(e) => ctx.trace_warn(format!("lease renewal of {} failed: {e}", input.k8s_name)),
    }
    None
}

/// The first timer: between an eighth of an interval and a full one, fixed per instance id.
pub fn first_delay(instance_id: Uuid, interval: Duration) -> Duration {
    crate::lease::jittered(instance_id, interval)
}

/// The orchestration body.
pub async fn instance_actor(
    ctx: OrchestrationContext,
    mut input: ActorInput,
) -> Result<String, String> {
    let interval = Duration::from_millis(input.interval_ms.max(1));
    let iterations = input.iterations_per_execution.max(1);
    for i in 0..iterations {
        let skip_check = i == 0 && input.executions == 0 && input.eager_first_check;
        if skip_check {
            ctx.schedule_timer(first_delay(input.instance_id, interval))
                .await;
            continue;
        }
        let check = CheckInput {
            instance_id: input.instance_id,
            actor_states: input.actor_states.clone(),
            consecutive_failures: input.consecutive_failures,
            unhealthy_after: input.unhealthy_after,
        };
        match ctx
            .schedule_activity_typed::<CheckInput, CheckOutcome>(
                crate::config::ACTIVITY_HEALTH_CHECK,
                &check,
            )
            .await
        {
            Ok(CheckOutcome::Exit { reason }) => {
                ctx.trace_info(format!("actor for {} exits: {reason}", input.k8s_name));
                return Ok(reason);
            }
            Ok(CheckOutcome::Checked {
                consecutive_failures,
                ..
            }) => input.consecutive_failures = consecutive_failures,
            Ok(CheckOutcome::Leased { .. }) | Ok(CheckOutcome::LeaseLost) => {}
            // The check could not run (e.g. the CMS was unreachable): try again next tick.
            Err(e) => ctx.trace_warn(format!(
                "health check of {} failed to run: {e}",
                input.k8s_name
            )),
        }
        let delay = if input.executions == 0 && i == 0 && !input.eager_first_check {
            first_delay(input.instance_id, interval)
        } else {
            interval
        };
        ctx.schedule_timer(delay).await;
    }
    input.executions += 1;
    ctx.continue_as_new_typed(&input).await
}

/// Every version of the actor orchestration, as registered with Duroxide: the current one
/// for new starts, the older ones so that their stored actors replay.
pub fn register_orchestrations(
    builder: duroxide::runtime::registry::OrchestrationRegistryBuilder,
) -> duroxide::runtime::registry::OrchestrationRegistryBuilder {
    use crate::config::{ACTOR_ORCHESTRATION, ACTOR_VERSION, ACTOR_VERSION_V1, ACTOR_VERSION_V2_0};
    builder
        .register_versioned_typed(ACTOR_ORCHESTRATION, ACTOR_VERSION_V1, instance_actor)
        .register_versioned_typed(ACTOR_ORCHESTRATION, ACTOR_VERSION_V2_0, instance_actor_v2_0)
        .register_versioned_typed(ACTOR_ORCHESTRATION, ACTOR_VERSION, instance_actor_v2)
}

/// The activities as registered with Duroxide.
pub fn register_activities(
    builder: duroxide::runtime::registry::ActivityRegistryBuilder,
    deps: Arc<ActorDeps>,
    scheduler: Arc<crate::lease::CheckScheduler>,
) -> duroxide::runtime::registry::ActivityRegistryBuilder {
    let check_deps = deps.clone();
    builder
        .register_typed(
            crate::config::ACTIVITY_HEALTH_CHECK,
            move |ctx: ActivityContext, input: CheckInput| {
                let deps = check_deps.clone();
                // Duroxide carries an activity's error as text.
                async move {
                    health_check(&deps, ctx.instance_id(), input)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .register_typed(
            crate::config::ACTIVITY_LEASE,
            move |ctx: ActivityContext, input: LeaseInput| {
                let deps = deps.clone();
                let scheduler = scheduler.clone();
                async move {
                    crate::lease::renewal::renew(&deps, &scheduler, ctx.instance_id(), input)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delay_is_within_an_eighth_to_a_full_interval_and_stable() {
        let interval = Duration::from_secs(30);
        for _ in 0..100 {
            let id = Uuid::new_v4();
            let d = first_delay(id, interval);
            assert!(d >= interval / 8 && d < interval, "{d:?}");
            assert_eq!(d, first_delay(id, interval));
        }
    }

    #[test]
    fn outcomes_round_trip_as_json() {
        let o = CheckOutcome::Exit { reason: "x".into() };
        let s = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<CheckOutcome>(&s).unwrap(), o);
    }
}
