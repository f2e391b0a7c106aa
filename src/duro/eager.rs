//! The eager lease: a started (or changed) actor is leased to this replica and put on its
//! probe scheduler at once, instead of after Duroxide's dispatcher has run the actor's first
//! turn and lease activity (which only confirm or move the lease).

use std::time::Duration;

use super::ActorControl;
use crate::actor::{self, ActorInput};
use crate::cms::InstanceRow;

/// How a started or changed actor is put on this replica's scheduler.
#[derive(Debug, Clone, Copy)]
pub(super) enum Eager {
    /// Leased here, first check now (after the checks already due).
    Lease,
    /// Leased here, first check before every check already due (an explicit restart).
    LeaseFirst,
    /// Leased here even from a live holder, and checked now (a state change).
    CheckNow,
}

impl ActorControl {
    /// How long an owner record lasts without a renewal.
    pub(super) fn owner_ttl(&self) -> Duration {
        self.settings.lease_renew * actor::LEASE_OVERLAP
    }

    /// The scheduler entry of a started actor: its first check at once.
    pub(super) fn first_lease(&self, input: &ActorInput, actor_id: &str) -> crate::lease::Lease {
        crate::lease::Lease {
            instance_id: input.instance_id,
            actor_id: actor_id.to_string(),
            interval: self.settings.check_interval,
            first_in: Duration::ZERO,
            unhealthy_after: input.unhealthy_after,
            actor_states: input.actor_states.clone(),
        }
    }

    /// The started actor is leased to this replica at once and checked right away, instead
    /// of after Duroxide's dispatcher has run its first turn (which confirms the owner).
    pub(super) fn lease_eagerly(&self, input: &ActorInput, actor_id: &str) {
        self.lease_here_and_check(input, actor_id, Eager::Lease);
    }

    /// A state change that changes what a probe would see (e.g. toygres' create flow:
    /// `creating` without a connection string → `running` with one): this replica takes the
    /// instance's probe lease and checks it at once, instead of the holder waiting out the
    /// interval (the balancer evens the fleet out again).
    pub fn check_now(&self, row: &InstanceRow, actor_id: &str) {
        let input = self.input_for(row);
        self.lease_here_and_check(&input, actor_id, Eager::CheckNow);
    }

    pub(super) fn lease_here_and_check(&self, input: &ActorInput, actor_id: &str, how: Eager) {
        let Some((deps, scheduler)) = &self.eager else {
            return;
        };
        let (deps, scheduler) = (deps.clone(), scheduler.clone());
        let actor_id = actor_id.to_string();
        let owner_ttl = self.owner_ttl();
        let lease = self.first_lease(input, &actor_id);
        tokio::spawn(async move {
            let me = (scheduler.id().name(), scheduler.id().epoch());
            match crate::cms::lease_for_actor(
                &deps.pool,
                lease.instance_id,
                &actor_id,
                me,
                owner_ttl,
                true,
            )
            .await
            {
                Ok(Some(h)) if h.name == me.0 && h.epoch == me.1 => match how {
                    Eager::Lease => scheduler.lease(lease),
                    Eager::LeaseFirst => scheduler.lease_first(lease),
                    Eager::CheckNow => scheduler.check_now(lease),
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(actor_id, error = %e, "eager lease failed; the actor leases on its first turn")
                }
            }
        });
    }
}
