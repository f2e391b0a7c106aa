//! The probe scheduler: health checks on the interval, in-process, for every instance whose
//! actor leased it to this replica (see [`crate::actor`], version 2).
//!
//! An entry lives as long as its lease: the actor's renewal (every few minutes) extends it;
//! without renewals it expires after [`crate::actor::LEASE_OVERLAP`] renewal periods and the
//! instance is dropped. Each due entry runs [`crate::check::health_check`] — the same read →
//! probe → fenced write as a v1 iteration, fenced additionally on this replica holding the
//! lease. A check that finds the actor superseded, the row gone, the state no longer calling
//! for an actor, or the lease taken by another replica drops the entry at once.
//!
//! Timing: entries sit in a min-heap by due time; a check's next due time is its previous due
//! time plus the interval (no drift), or now if it ran late. Checks run concurrently up to a
//! bound; a slow probe delays only its own instance.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::check::{self, ActorDeps, CheckInput, CheckOutcome};
use tokio_util::sync::CancellationToken;

/// What a renewal hands to the scheduler.
#[derive(Debug, Clone)]
pub struct Lease {
    pub instance_id: Uuid,
    pub actor_id: String,
    pub interval: Duration,
    pub lease_for: Duration,
    /// When the first check of a new entry is due, from now.
    pub first_in: Duration,
    pub unhealthy_after: u32,
    pub actor_states: Vec<String>,
}

struct Entry {
    lease: Lease,
    expires: Instant,
    due: Instant,
    /// Bumped on every (re)schedule; heap items with an older generation are stale.
    generation: u64,
    running: bool,
    failures: u32,
}

#[derive(Default)]
struct State {
    entries: HashMap<Uuid, Entry>,
    heap: BinaryHeap<Reverse<(Instant, u64, Uuid)>>,
    next_generation: u64,
}

/// Per-replica scheduler of leased health checks.
pub struct Scheduler {
    holder: String,
    deps: Arc<ActorDeps>,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
}

impl Scheduler {
    /// `holder` names this replica in the lease table; `max_concurrent` bounds checks at once.
    pub fn new(holder: String, deps: Arc<ActorDeps>, max_concurrent: usize) -> Self {
        Self {
            holder,
            deps,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Instances this replica probes right now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take or renew a lease. A renewal by the same actor only extends it; a new actor
    /// replaces the entry (new rhythm, failures reset).
    pub fn lease(&self, lease: Lease) {
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(e) = st.entries.get_mut(&lease.instance_id)
            && e.lease.actor_id == lease.actor_id
        {
            e.expires = now + lease.lease_for;
            e.lease = lease;
            return;
        }
        st.next_generation += 1;
        let generation = st.next_generation;
        let due = now + lease.first_in;
        let id = lease.instance_id;
        st.entries.insert(
            id,
            Entry {
                expires: now + lease.lease_for,
                due,
                generation,
                running: false,
                failures: 0,
                lease,
            },
        );
        st.heap.push(Reverse((due, generation, id)));
        drop(guard);
        self.wake.notify_one();
    }

    /// Drop the entry of `instance` if it belongs to `actor_id`.
    pub fn release(&self, instance: Uuid, actor_id: &str) {
        let mut st = self.lock();
        if st
            .entries
            .get(&instance)
            .is_some_and(|e| e.lease.actor_id == actor_id)
        {
            st.entries.remove(&instance);
        }
    }

    /// Run due checks until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let notified = self.wake.notified();
            let next = self.next_due();
            match next {
                Some(Ok((id, generation))) => self.clone().launch(id, generation).await,
                Some(Err(at)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = notified => {}
                        _ = stop.cancelled() => return,
                    }
                }
                None => {
                    tokio::select! {
                        _ = notified => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// The next entry to check now (`Ok`), or when the next one is due (`Err`), or nothing.
    fn next_due(&self) -> Option<Result<(Uuid, u64), Instant>> {
        let now = Instant::now();
        let mut st = self.lock();
        while let Some(Reverse((due, generation, id))) = st.heap.peek().copied() {
            let live = st
                .entries
                .get(&id)
                .is_some_and(|e| e.generation == generation && !e.running);
            if !live {
                st.heap.pop();
                continue;
            }
            if due > now {
                return Some(Err(due));
            }
            st.heap.pop();
            let expired = st.entries.get(&id).is_some_and(|e| e.expires <= now);
            if expired {
                if let Some(e) = st.entries.remove(&id) {
                    tracing::info!(instance_id = %id, actor_id = %e.lease.actor_id, "probe lease expired without renewal");
                    self.deps.prober.forget(id);
                }
                continue;
            }
            if let Some(e) = st.entries.get_mut(&id) {
                e.running = true;
            }
            return Some(Ok((id, generation)));
        }
        None
    }

    /// Run one check (waiting for a slot), then reschedule or drop the entry.
    async fn launch(self: Arc<Self>, id: Uuid, generation: u64) {
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let (actor_id, input) = {
            let st = self.lock();
            let Some(e) = st.entries.get(&id) else { return };
            (
                e.lease.actor_id.clone(),
                CheckInput {
                    instance_id: id,
                    actor_states: e.lease.actor_states.clone(),
                    consecutive_failures: e.failures,
                    unhealthy_after: e.lease.unhealthy_after,
                },
            )
        };
        tokio::spawn(async move {
            let outcome =
                check::health_check(&self.deps, &actor_id, Some(&self.holder), input).await;
            drop(permit);
            let now = Instant::now();
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(e) = st.entries.get_mut(&id) else {
                return;
            };
            if e.generation != generation {
                // Replaced by a new actor's lease while we ran: leave the new entry alone.
                return;
            }
            match outcome {
                Ok(CheckOutcome::Exit { reason }) => {
                    tracing::debug!(instance_id = %id, reason = %reason, "probing stopped");
                    st.entries.remove(&id);
                    return;
                }
                Ok(CheckOutcome::Checked {
                    consecutive_failures,
                    ..
                }) => e.failures = consecutive_failures,
                Ok(CheckOutcome::Leased { .. }) => {}
                Err(err) => {
                    tracing::warn!(instance_id = %id, error = %err, "health check could not run; retrying next interval")
                }
            }
            e.running = false;
            let next = e.due + e.lease.interval;
            e.due = if next > now { next } else { now };
            st.next_generation += 1;
            e.generation = st.next_generation;
            st.heap.push(Reverse((e.due, e.generation, id)));
            drop(guard);
            self.wake.notify_one();
        });
    }
}
