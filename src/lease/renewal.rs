//! The actor's lease renewal, the activity its durable loop runs every renewal period
//! ([`crate::actor`]): fenced on the row naming the actor, it records the actor as the
//! lease's owner and hands the instance to this replica's scheduler when the lease is ours.
//! An actor the row no longer calls for exits here, releasing its lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CheckScheduler, LEASE_OVERLAP, store};
use crate::check::{ActorDeps, ActorEnds, CheckError, CheckOutcome, RowFence, read_fenced};

/// Input of one lease renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInput {
    pub instance_id: Uuid,
    pub actor_states: Vec<String>,
    pub interval_ms: u64,
    pub lease_ms: u64,
    pub unhealthy_after: u32,
}

/// The lease renewal activity: fence on the row, record this actor as the owner of the
/// instance's probe lease (its holder keeps it; a missing one is created for this replica),
/// and hand the instance to this replica's scheduler when it is ours.
pub async fn renew(
    deps: &ActorDeps,
    scheduler: &CheckScheduler,
    actor_id: &str,
    input: LeaseInput,
) -> Result<CheckOutcome, CheckError> {
    let id = input.instance_id;
    let row = match read_fenced(&deps.pool, id, actor_id, &input.actor_states).await? {
        RowFence::Passed(row) => row,
        RowFence::Ends(reason) => return actor_exits(deps, scheduler, id, actor_id, reason).await,
    };
    let me = (scheduler.id().name(), scheduler.id().epoch());
    let owner_ttl = Duration::from_millis(input.lease_ms);
    let renew_every = owner_ttl / LEASE_OVERLAP;
    let (holder, lag) = store::renew(&deps.pool, id, actor_id, me, owner_ttl, renew_every).await?;
    if let Some(lag) = lag {
        // Early (a fresh actor's jittered second renewal, right after a continue-as-new) is
        // not late.
        crate::metrics::lease_renewal_lag(lag.max(0.0));
    }
    let Some(holder) = holder else {
        return actor_exits(
            deps,
            scheduler,
            id,
            actor_id,
            ActorEnds::SupersededWhileRenewing,
        )
        .await;
    };
    if holder.is(me) {
        let interval = Duration::from_millis(input.interval_ms.max(1));
        scheduler.lease(super::Lease {
            instance_id: id,
            actor_id: actor_id.to_string(),
            interval,
            first_in: super::first_due(row.last_health_check, interval),
            unhealthy_after: input.unhealthy_after,
            actor_states: input.actor_states,
            seen: None,
        });
    }
    Ok(CheckOutcome::Leased {
        holder: holder.name,
    })
}

async fn actor_exits(
    deps: &ActorDeps,
    scheduler: &CheckScheduler,
    id: Uuid,
    actor_id: &str,
    reason: ActorEnds,
) -> Result<CheckOutcome, CheckError> {
    scheduler.release(id, actor_id);
    deps.prober.forget(id);
    if let Err(e) = store::release(&deps.pool, id, actor_id).await {
        tracing::debug!(instance_id = %id, actor_id, error = %e, "could not drop the lease row");
    }
    if crate::quiet::ACTOR_EXITS.admit() {
        tracing::info!(instance_id = %id, actor_id, reason = %reason, "actor exits");
    }
    Ok(CheckOutcome::Exit {
        reason: reason.to_string(),
    })
}
