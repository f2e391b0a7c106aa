//! The probe lease: which replica checks an instance, and which actor owns that.
//!
//! One row per instance in `toygres_actors.probe_leases` (`migrations/0003`, `0004`, `0007`):
//! the instance's current actor (the owner), the replica that holds the lease (name and
//! epoch), and until when the owner record lasts without a renewal. Its life, in order:
//!
//! 1. **Taken at start.** The fenced transaction that starts an actor leases it to the
//!    starting replica ([`store::for_actor`] with [`store::Claim::Take`], from [`crate::duro`]'s eager
//!    lease), and that replica checks it at once. The actor then skips its first renewal.
//! 2. **Checked by its holder.** The holder's [`CheckScheduler`] runs [`crate::check`] every
//!    interval; each check's one write is fenced on the actor id, the holder, its epoch and
//!    liveness, so probing never doubles when a lease moves.
//! 3. **Renewed by its actor.** Every [`DEFAULT_LEASE_RENEW`] the actor's activity
//!    ([`renewal::renew`]) records it as the owner again, only while the row names it; the
//!    holder keeps the lease. A renewal records ownership only: which replica probes follows
//!    replica liveness, not renewals.
//! 4. **Claimed, balanced and handed over by the replicas** ([`crate::replica`], one
//!    `replica_tick` statement each tick): a lapsed holder's leases go to the live replicas
//!    by fair share, a replica below its share takes a few from the most loaded one, and a
//!    stopping replica hands all of its own over.
//! 5. **Released** when its actor exits ([`store::release`]), or dropped with its row.
//!
//! The rooms: [`scheduler`] (the check scheduler), [`store`] (the lease table's statements),
//! [`renewal`] (the actor's renewal activity).

pub mod renewal;
pub mod scheduler;
pub mod store;

use std::time::Duration;

use uuid::Uuid;

pub use scheduler::CheckScheduler;
pub use store::LeaseHolder;

/// Default lease renewal period of v2 actors. A renewal records the owner and nothing else
/// depends on its rhythm: which replica probes follows replica heartbeats, staleness follows
/// the checks, a zombie is one with no timer queued, an orphan is cancelled by the
/// reconciler. So the period is set by cost alone: two Duroxide turns per renewal, at 50,000
/// actors 20 min is ~83 turns/s (4 min was the same at 10,000, and more of PostgreSQL's
/// time than the checks themselves).
pub const DEFAULT_LEASE_RENEW: Duration = Duration::from_secs(1200);

/// A lease outlives its renewal period this many times over, so one late or lost renewal
/// does not stop probing.
pub const LEASE_OVERLAP: u32 = 3;

/// When the next check of an instance last checked at `last` is due, from now: keep the
/// rhythm of earlier checks (made here or on another replica), at once if overdue.
pub fn first_due(last: Option<chrono::DateTime<chrono::Utc>>, interval: Duration) -> Duration {
    let since = last.map(crate::clock::age);
    match since {
        Some(age) if age < interval => interval - age,
        _ => Duration::ZERO,
    }
}

/// Between an eighth of `period` and all of it, fixed per instance id: spreads what instances
/// that started together do next (checks here, the actor's timers in [`crate::actor`]) over
/// nearly the whole period, as a fleet whose members arrived one by one would be.
pub fn jittered(instance_id: Uuid, period: Duration) -> Duration {
    let eighth = period / 8;
    let range_ms = (period - eighth).as_millis().max(1) as u64;
    let spread = (instance_id.as_u128() % range_ms as u128) as u64;
    eighth + Duration::from_millis(spread)
}

/// A probe lease this replica holds, as handed to the scheduler.
#[derive(Debug, Clone)]
pub struct Lease {
    pub instance_id: Uuid,
    pub actor_id: String,
    pub interval: Duration,
    /// When the first check of a new entry is due, from now.
    pub first_in: Duration,
    pub unhealthy_after: u32,
    pub actor_states: Vec<String>,
    /// The row's state and probe target as the actor's start read them: its first check
    /// probes without reading the row first (the write is fenced on them). `None`: read first.
    pub seen: Option<crate::cms::Seen>,
}
