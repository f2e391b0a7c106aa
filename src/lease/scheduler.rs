//! The check scheduler: health checks on the interval, in-process, for every instance whose
//! probe lease this replica holds (the lease itself: [`super`]).
//!
//! An entry lives while the lease does: the replica's tick adds the leases assigned to it,
//! and a check whose fenced write is refused — the actor was superseded, the row is gone,
//! the state no longer calls for an actor, the lease moved to another replica, or this
//! replica's heartbeat lapsed — drops the entry at once. When the heartbeat finds our epoch
//! gone, [`CheckScheduler::clear`] drops everything. Each due entry runs
//! [`crate::check::leased_check`]: probe → one write fenced on actor id, holder, epoch,
//! liveness, and the state and target the probe was made against; the write returns the row
//! as it is, so the next check needs no read (a new entry, a state change or an error reads
//! first).
//!
//! Timing: entries sit in a min-heap by due time; a check's next due time is its previous due
//! time plus the interval (no drift), or now if it ran late. A check that ran at once (a new
//! actor's first, an overdue lease taken over, a state change) is followed by the next one
//! after between an eighth of an interval and a full one, fixed per instance id ([`jittered`]):
//! instances that arrive together (a burst of inserts, the fleet after a CMS outage) would
//! otherwise be checked together forever, a spike of the whole fleet's checks each interval
//! instead of a steady stream. Checks run concurrently up to a bound; a slow probe delays
//! only its own instance.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::{Lease, jittered};
use crate::check::{self, ActorDeps, CheckInput, CheckOutcome, Pace};
use crate::cms;
use crate::identity::ReplicaId;
use tokio_util::sync::CancellationToken;

struct Entry {
    lease: Lease,
    due: Instant,
    /// Bumped on every (re)schedule; heap items with an older generation are stale.
    generation: u64,
    running: bool,
    failures: u32,
    /// The check due now runs at once: the next one comes after [`jittered`].
    spread_next: bool,
    /// The row's state and target as the last check's write returned them: the next check
    /// probes without reading first. `None`: read first (a new entry, a state change, an
    /// error).
    seen: Option<cms::Seen>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Uuid, Entry>,
    heap: BinaryHeap<Reverse<(Instant, u64, Uuid)>>,
    next_generation: u64,
}

/// Per-replica scheduler of leased health checks.
pub struct CheckScheduler {
    id: Arc<ReplicaId>,
    deps: Arc<ActorDeps>,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Before every due time this scheduler hands out: the due time of a check that goes
    /// first ([`CheckScheduler::lease_first`]).
    origin: Instant,
}

impl CheckScheduler {
    /// `id` names this replica in the lease table; `max_concurrent` bounds checks at once.
    pub fn new(id: Arc<ReplicaId>, deps: Arc<ActorDeps>, max_concurrent: usize) -> Self {
        Self {
            id,
            deps,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            origin: Instant::now(),
        }
    }

    /// The prober its checks run with.
    pub fn prober(&self) -> &Arc<crate::probe::Prober> {
        &self.deps.prober
    }

    pub fn holder(&self) -> &str {
        self.id.name()
    }

    pub fn id(&self) -> &Arc<ReplicaId> {
        &self.id
    }

    /// Drop every entry (our epoch is gone, or we hand our leases over).
    pub fn clear(&self) -> usize {
        let mut st = self.lock();
        let n = st.entries.len();
        st.entries.clear();
        st.heap.clear();
        n
    }

    /// Whether this replica probes `instance` right now.
    pub fn holds(&self, instance: Uuid) -> bool {
        self.lock().entries.contains_key(&instance)
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

    /// Probe an instance whose lease we hold. The same actor again changes nothing (the
    /// rhythm stays); a new actor replaces the entry (new rhythm, failures reset).
    pub fn lease(&self, lease: Lease) {
        let due = Instant::now() + lease.first_in;
        self.lease_due(lease, due);
    }

    /// As [`CheckScheduler::lease`], and its first check goes before every check already due:
    /// an explicit restart's first check never waits behind a storm's.
    pub fn lease_first(&self, lease: Lease) {
        self.lease_due(lease, self.origin);
    }

    /// A lease whose first check already ran elsewhere (the priority lane's, for an explicit
    /// restart): the next check comes after [`jittered`], with that check's failures and
    /// what its write returned. An entry of the same actor picked up meanwhile (the actor's
    /// own lease turn, the replica tick) takes them over, unless a check of its own runs.
    pub fn lease_checked(&self, lease: Lease, failures: u32, seen: Option<cms::Seen>) {
        let due = Instant::now() + jittered(lease.instance_id, lease.interval);
        {
            // Picked up meanwhile (the actor's own lease turn, the replica tick): that entry
            // takes this check's outcome and rhythm, unless a check of its own is running.
            let mut guard = self.lock();
            let st = &mut *guard;
            if let Some(e) = st.entries.get_mut(&lease.instance_id)
                && e.lease.actor_id == lease.actor_id
            {
                if !e.running {
                    st.next_generation += 1;
                    e.generation = st.next_generation;
                    e.due = due;
                    e.failures = failures;
                    e.seen = seen;
                    e.spread_next = false;
                    st.heap
                        .push(Reverse((due, e.generation, lease.instance_id)));
                }
                return;
            }
        }
        self.insert_new(lease, due, false, failures, seen);
    }

    fn lease_due(&self, lease: Lease, due: Instant) {
        let seen = lease.seen.clone();
        self.insert_new(lease, due, due <= Instant::now(), 0, seen);
    }

    /// A new entry due at `due`, unless the instance's entry is already this actor's.
    fn insert_new(
        &self,
        lease: Lease,
        due: Instant,
        spread_next: bool,
        failures: u32,
        seen: Option<cms::Seen>,
    ) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(e) = st.entries.get(&lease.instance_id)
            && e.lease.actor_id == lease.actor_id
        {
            return;
        }
        st.next_generation += 1;
        let generation = st.next_generation;
        let id = lease.instance_id;
        st.entries.insert(
            id,
            Entry {
                due,
                generation,
                running: false,
                failures,
                spread_next,
                seen,
                lease,
            },
        );
        st.heap.push(Reverse((due, generation, id)));
        drop(guard);
        self.wake.notify_one();
    }

    /// Check an instance now: its entry (new or existing) becomes due at once.
    pub fn check_now(&self, lease: Lease) {
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.next_generation += 1;
        let generation = st.next_generation;
        let id = lease.instance_id;
        match st.entries.get_mut(&id) {
            Some(e) if e.lease.actor_id == lease.actor_id => {
                if e.running {
                    return; // a check is under way: it sees the new state
                }
                e.due = now;
                e.generation = generation;
                e.spread_next = true;
                e.seen = None;
            }
            _ => {
                st.entries.insert(
                    id,
                    Entry {
                        due: now,
                        generation,
                        running: false,
                        failures: 0,
                        spread_next: true,
                        seen: None,
                        lease,
                    },
                );
            }
        }
        st.heap.push(Reverse((now, generation, id)));
        drop(guard);
        self.wake.notify_one();
    }

    /// Drop the entry of `instance` if it belongs to `actor_id`; `true` if it did.
    pub fn release(&self, instance: Uuid, actor_id: &str) -> bool {
        let mut st = self.lock();
        let ours = st
            .entries
            .get(&instance)
            .is_some_and(|e| e.lease.actor_id == actor_id);
        if ours {
            st.entries.remove(&instance);
        }
        ours
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
        let (actor_id, input, known, urgent) = {
            let mut st = self.lock();
            let Some(e) = st.entries.get_mut(&id) else {
                return;
            };
            (
                e.lease.actor_id.clone(),
                CheckInput {
                    instance_id: id,
                    actor_states: e.lease.actor_states.clone(),
                    consecutive_failures: e.failures,
                    unhealthy_after: e.lease.unhealthy_after,
                },
                e.seen.take(),
                e.spread_next,
            )
        };
        tokio::spawn(async move {
            let holder = (self.id.name(), self.id.epoch());
            // A periodic check's write may wait a moment to go with others; a first check
            // (or one after a change) is awaited by someone, and goes at once.
            let pace = if known.is_some() && !urgent {
                Pace::Gathered
            } else {
                Pace::Now
            };
            // A panic in the check (a bug, an answer we did not expect) is an error like any
            // other: the entry is rescheduled below, never left marked running.
            let outcome = crate::panics::caught(
                "check",
                check::leased_check(&self.deps, &actor_id, holder, input, known, pace),
            )
            .await
            .unwrap_or_else(|panic| Err(panic.into()));
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
            let outcome = outcome.map(|(outcome, seen)| {
                e.seen = seen;
                outcome
            });
            match outcome {
                Ok(CheckOutcome::LeaseLost) => {
                    st.entries.remove(&id);
                    return;
                }
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
            let next = if std::mem::take(&mut e.spread_next) {
                now + jittered(id, e.lease.interval)
            } else {
                e.due + e.lease.interval
            };
            e.due = if next > now { next } else { now };
            st.next_generation += 1;
            e.generation = st.next_generation;
            st.heap.push(Reverse((e.due, e.generation, id)));
            drop(guard);
            self.wake.notify_one();
        });
    }
}
