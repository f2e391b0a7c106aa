//! Delivery around the reconciler (as in kube-rs' controller): requests for the same
//! instance coalesce while one is queued or running, different instances run concurrently
//! up to a bound, and a failed reconcile is retried with backoff without holding up others.
//! When a storm of hints is queued, plain hints go out in batches to the set-based
//! reconcile ([`Reconciler::reconcile_batch`]); what a batch does not settle comes back
//! here and runs one by one. Batches take at most half of the runner slots (each holds a
//! CMS connection for its transaction): the other half stays free for explicit requests
//! and single reconciles, which therefore never wait for a batch to finish.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::batch::{BATCH_MAX, BATCH_MIN};
use super::{Ask, Mode, Reconciler, Trigger};

/// One queued request.
#[derive(Debug, Clone)]
struct Job {
    trigger: Trigger,
    ask: Ask,
    /// Retries so far (errors).
    attempt: u32,
    /// The earliest notification clock merged into this job (for the latency histogram).
    _first_at: Option<f64>,
    /// A batch handed it back: the per-instance path only.
    single: bool,
}

impl Job {
    fn new(trigger: Trigger, ask: Ask, at: Option<f64>) -> Self {
        Job {
            trigger,
            ask,
            attempt: 0,
            _first_at: at,
            single: false,
        }
    }

    /// A plain hint the set-based reconcile may take (explicit requests never wait in one).
    fn batchable(&self) -> bool {
        !self.single
            && self.ask == Ask::Reconcile
            && matches!(self.trigger, Trigger::Notification { .. } | Trigger::Resync)
    }
}

/// What a runner slot takes from the queue.
enum Work {
    One(Uuid, Job),
    Batch(Vec<(Uuid, Job)>),
}

#[derive(Default)]
struct QueueState {
    pending: HashMap<Uuid, Job>,
    order: VecDeque<Uuid>,
    inflight: HashSet<Uuid>,
}

/// Coalescing, bounded-parallel delivery of per-instance reconciles.
pub struct ReconcileQueue {
    state: Mutex<QueueState>,
    wake: Notify,
    /// Signalled whenever the queue becomes empty with nothing in flight (tests, benches).
    idle: Notify,
    /// Batches running.
    batches: AtomicUsize,
}

impl Default for ReconcileQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconcileQueue {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            batches: AtomicUsize::new(0),
        }
    }

    /// Ask for a reconcile of `id`. Merges with a queued request for the same instance
    /// (a restart request wins; the notification clock kept is the earliest).
    pub fn enqueue(&self, id: Uuid, trigger: Trigger, ask: Ask, at: Option<f64>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Explicit requests (a restart someone asked for, an operator's action) take the
        // priority lane: the front of the queue, never behind a storm of hints.
        let explicit = ask == Ask::Restart || matches!(trigger, Trigger::Operator(_));
        match st.pending.get_mut(&id) {
            Some(job) => {
                let promote = explicit && job.ask == Ask::Reconcile;
                if ask == Ask::Restart {
                    job.ask = Ask::Restart;
                    job.trigger = trigger;
                }
                if promote && let Some(pos) = st.order.iter().position(|x| *x == id) {
                    st.order.remove(pos);
                    st.order.push_front(id);
                }
            }
            None => {
                st.pending.insert(id, Job::new(trigger, ask, at));
                if explicit {
                    st.order.push_front(id);
                } else {
                    st.order.push_back(id);
                }
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Many plain hints at once (a full reconcile's findings): one lock and one wake-up, so
    /// the runner sees the storm whole and batches it.
    pub fn enqueue_many(&self, ids: impl IntoIterator<Item = Uuid>, trigger: Trigger) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if st.pending.contains_key(&id) {
                continue;
            }
            st.pending
                .insert(id, Job::new(trigger.clone(), Ask::Reconcile, None));
            st.order.push_back(id);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Requests queued or running.
    pub fn len(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.len() + st.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until nothing is queued or running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn take_next(&self) -> Option<(Uuid, Job)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = st.order.len();
        for _ in 0..n {
            let id = st.order.pop_front()?;
            if st.inflight.contains(&id) {
                // Still running: keep it queued behind; it runs again after.
                st.order.push_back(id);
                continue;
            }
            if let Some(job) = st.pending.remove(&id) {
                st.inflight.insert(id);
                return Some((id, job));
            }
        }
        None
    }

    /// The next job that runs on its own now, in queue order: batchable hints of a storm
    /// are passed over (they wait for a batch slot).
    fn take_unbatched(&self) -> Option<(Uuid, Job)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let storm = st.pending.len() >= BATCH_MIN;
        let QueueState {
            pending,
            order,
            inflight,
        } = &mut *st;
        let pos = order.iter().position(|x| {
            !inflight.contains(x) && pending.get(x).is_some_and(|j| !storm || !j.batchable())
        })?;
        let id = order.remove(pos)?;
        let job = pending.remove(&id)?;
        inflight.insert(id);
        Some((id, job))
    }

    /// The next work: one job, or — when a storm is queued, the next job is a plain hint
    /// and `batch_room` says a batch may start — a batch of up to [`BATCH_MAX`] plain hints
    /// (in queue order). Without batch room, only what runs on its own.
    fn take_work(&self, batch_room: bool) -> Option<Work> {
        if !batch_room {
            return self.take_unbatched().map(|(id, job)| Work::One(id, job));
        }
        let (id, job) = self.take_next()?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !job.batchable() || st.pending.len() + 1 < BATCH_MIN {
            return Some(Work::One(id, job));
        }
        let mut batch = vec![(id, job)];
        let QueueState {
            pending,
            order,
            inflight,
        } = &mut *st;
        order.retain(|x| {
            if batch.len() >= BATCH_MAX
                || inflight.contains(x)
                || !pending.get(x).is_some_and(Job::batchable)
            {
                return true;
            }
            match pending.remove(x) {
                Some(j) => {
                    batch.push((*x, j));
                    false
                }
                None => true,
            }
        });
        for (x, _) in &batch {
            inflight.insert(*x);
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        Some(Work::Batch(batch))
    }

    /// Queue again, for the per-instance path, what a batch did not settle.
    fn requeue_single(&self, jobs: impl IntoIterator<Item = (Uuid, Job)>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (id, job) in jobs {
            match st.pending.get_mut(&id) {
                Some(newer) => newer.single = true,
                None => {
                    st.pending.insert(
                        id,
                        Job {
                            single: true,
                            ..job
                        },
                    );
                    st.order.push_back(id);
                }
            }
        }
    }

    fn done(&self, id: Uuid) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.inflight.remove(&id);
        let empty = st.pending.is_empty() && st.inflight.is_empty();
        drop(st);
        self.wake.notify_one();
        if empty {
            self.idle.notify_waiters();
        }
    }

    /// Run the queue until `stop` fires: up to `parallelism` reconciles at once.
    pub async fn run(
        self: Arc<Self>,
        reconciler: Arc<Reconciler>,
        parallelism: usize,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(parallelism.max(1)));
        let batch_slots = (parallelism / 2).max(1);
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let next = loop {
                let notified = self.wake.notified();
                let batch_room = self.batches.load(Ordering::SeqCst) < batch_slots;
                if let Some(work) = self.take_work(batch_room) {
                    break Some(work);
                }
                tokio::select! {
                    _ = notified => {}
                    _ = stop.cancelled() => break None,
                }
            };
            let (id, job) = match next {
                None => return,
                Some(Work::One(id, job)) => {
                    if job.ask == Ask::Restart {
                        tracing::debug!(instance_id = %id, trigger = %job.trigger.label(), "explicit request running");
                    }
                    (id, job)
                }
                Some(Work::Batch(jobs)) => {
                    let queue = self.clone();
                    let reconciler = reconciler.clone();
                    tokio::spawn(async move {
                        queue.run_batch(&reconciler, jobs).await;
                        drop(permit);
                    });
                    continue;
                }
            };
            let queue = self.clone();
            let reconciler = reconciler.clone();
            tokio::spawn(async move {
                // A panic is a failure like any other: retried with backoff, never leaving
                // the instance marked in flight.
                let result = crate::panics::caught("reconcile", async {
                    if job.trigger == Trigger::RestartRequest {
                        reconciler.honour_restart_request(id).await
                    } else {
                        reconciler
                            .reconcile_instance(id, &job.trigger, job.ask, Mode::Act)
                            .await
                    }
                })
                .await
                .unwrap_or_else(|panic| Err(panic.into()));
                drop(permit);
                if let Err(
                    crate::duro::DuroError::TermOver(_) | crate::duro::DuroError::NotLeader,
                ) = result
                {
                    // Not ours to do any more: the current leader reconciles everything.
                    tracing::debug!(instance_id = %id, "reconcile dropped: this replica's term is over");
                    queue.done(id);
                } else if let Err(e) = result {
                    let (attempt, delay) = match &e {
                        // Held back by the restart limits: try again when allowed, not as a failure.
                        crate::duro::DuroError::RateLimited(wait) => (job.attempt, *wait),
                        e if e.row_held() => (job.attempt, crate::config::ROW_HELD_RETRY),
                        _ => {
                            let attempt = job.attempt + 1;
                            (attempt, retry_delay(attempt))
                        }
                    };
                    if e.row_held() {
                        tracing::debug!(instance_id = %id, retry_in_ms = delay.as_millis() as u64, "the instance's row is held by another session; will retry");
                    } else if matches!(e, crate::duro::DuroError::RateLimited(_)) {
                        tracing::debug!(instance_id = %id, retry_in_ms = delay.as_millis() as u64, "restart held back by the rate limits");
                    } else {
                        tracing::warn!(instance_id = %id, attempt, retry_in_ms = delay.as_millis() as u64,
                            error = %e, "reconcile failed; will retry");
                    }
                    let q = queue.clone();
                    queue.done(id);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let mut st = q.state.lock().unwrap_or_else(|p| p.into_inner());
                        if let std::collections::hash_map::Entry::Vacant(e) = st.pending.entry(id) {
                            e.insert(Job { attempt, ..job });
                            st.order.push_back(id);
                        }
                        drop(st);
                        q.wake.notify_one();
                    });
                } else {
                    queue.done(id);
                }
            });
        }
    }
}

impl ReconcileQueue {
    /// One batch: the set-based reconcile, then what it did not settle back in the queue
    /// (before the batch counts as done, so the queue never looks idle in between).
    async fn run_batch(&self, reconciler: &Reconciler, jobs: Vec<(Uuid, Job)>) {
        let pairs: Vec<(Uuid, Trigger)> = jobs
            .iter()
            .map(|(id, j)| (*id, j.trigger.clone()))
            .collect();
        let ids: Vec<Uuid> = pairs.iter().map(|(id, _)| *id).collect();
        let slot = BatchSlot(&self.batches);
        let result = reconciler.reconcile_batch(&pairs).await;
        // Its slot is free before its jobs count as done (each wakes the runner).
        drop(slot);
        match result {
            Ok(rest) => {
                let rest: HashSet<Uuid> = rest.into_iter().collect();
                self.requeue_single(jobs.into_iter().filter(|(id, _)| rest.contains(id)));
            }
            Err(crate::duro::DuroError::TermOver(_) | crate::duro::DuroError::NotLeader) => {
                tracing::debug!(
                    batch = ids.len(),
                    "batch dropped: this replica's term is over"
                );
            }
            Err(e) => {
                tracing::warn!(batch = ids.len(), error = %e, "set-based reconcile failed; reconciling one by one");
                self.requeue_single(jobs);
            }
        }
        for id in ids {
            self.done(id);
        }
    }
}

/// A running batch's slot, given back when dropped (a panic included: a slot lost for good
/// would hold every later storm back).
struct BatchSlot<'a>(&'a AtomicUsize);

impl Drop for BatchSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Retry delay of a failed reconcile: 100 ms doubling to 30 s.
pub(super) fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(12)))
        .min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_requests_never_wait_behind_a_storm() {
        let q = ReconcileQueue::new();
        for _ in 0..10_000 {
            q.enqueue(Uuid::new_v4(), Trigger::Resync, Ask::Reconcile, None);
        }
        let asked = Uuid::new_v4();
        q.enqueue(asked, Trigger::RestartRequest, Ask::Restart, None);
        let (first, job) = q.take_next().unwrap();
        assert_eq!(first, asked);
        assert_eq!(job.ask, Ask::Restart);
        // A hint already queued that becomes a restart request is promoted too.
        let hinted = Uuid::new_v4();
        q.enqueue(hinted, Trigger::Resync, Ask::Reconcile, None);
        q.enqueue(hinted, Trigger::Operator("api"), Ask::Restart, None);
        assert_eq!(q.take_next().unwrap().0, hinted);
    }

    #[test]
    fn a_storm_of_hints_goes_out_in_batches_and_what_comes_back_runs_alone() {
        let q = ReconcileQueue::new();
        // Too few for a batch: one by one.
        let few: Vec<Uuid> = (0..BATCH_MIN - 1).map(|_| Uuid::new_v4()).collect();
        for id in &few {
            q.enqueue(*id, Trigger::Resync, Ask::Reconcile, None);
        }
        assert!(matches!(q.take_work(true), Some(Work::One(..))));
        let q = ReconcileQueue::new();
        let ids: Vec<Uuid> = (0..BATCH_MAX + BATCH_MIN + 10)
            .map(|_| Uuid::new_v4())
            .collect();
        for id in &ids {
            q.enqueue(
                *id,
                Trigger::Notification {
                    op: crate::hint::HintKind::Insert,
                    at: None,
                },
                Ask::Reconcile,
                None,
            );
        }
        let asked = Uuid::new_v4();
        q.enqueue(asked, Trigger::RestartRequest, Ask::Restart, None);
        // The explicit request first, and alone.
        match q.take_work(true) {
            Some(Work::One(id, _)) => assert_eq!(id, asked),
            _ => panic!("the restart request did not come first, alone"),
        }
        let Some(Work::Batch(batch)) = q.take_work(true) else {
            panic!("no batch for a storm");
        };
        assert_eq!(batch.len(), BATCH_MAX);
        assert_eq!(batch[0].0, ids[0], "queue order kept");
        // The batch hands two back: they run alone, never in a batch again.
        let back: Vec<(Uuid, Job)> = batch[..2].to_vec();
        q.requeue_single(back);
        for (id, _) in &batch {
            q.done(*id);
        }
        let Some(Work::Batch(rest)) = q.take_work(true) else {
            panic!("the rest of the storm was not batched");
        };
        assert_eq!(
            rest.len(),
            BATCH_MIN + 10,
            "handed-back jobs are never batched again"
        );
        for _ in 0..2 {
            match q.take_work(true) {
                Some(Work::One(id, job)) => {
                    assert!(job.single);
                    assert!(id == ids[0] || id == ids[1]);
                }
                _ => panic!("a handed-back job was batched again"),
            }
        }
    }

    #[test]
    fn batches_leave_room_for_what_runs_alone() {
        let q = ReconcileQueue::new();
        let hint = || Trigger::Notification {
            op: crate::hint::HintKind::Insert,
            at: None,
        };
        let storm: Vec<Uuid> = (0..3 * BATCH_MAX).map(|_| Uuid::new_v4()).collect();
        for id in &storm {
            q.enqueue(*id, hint(), Ask::Reconcile, None);
        }
        assert!(matches!(q.take_work(true), Some(Work::Batch(_))));
        assert_eq!(q.batches.load(Ordering::SeqCst), 1);
        // No batch room: the storm's hints wait, and nothing else is queued.
        assert!(q.take_work(false).is_none());
        // A restart request and a handed-back job still run at once, in queue order.
        let asked = Uuid::new_v4();
        q.enqueue(asked, Trigger::RestartRequest, Ask::Restart, None);
        let back = storm[BATCH_MAX + 5];
        q.requeue_single([(back, Job::new(hint(), Ask::Reconcile, None))]);
        match q.take_work(false) {
            Some(Work::One(id, _)) => assert_eq!(id, asked),
            _ => panic!("the restart request waited for batch room"),
        }
        match q.take_work(false) {
            Some(Work::One(id, job)) => {
                assert_eq!(id, back);
                assert!(job.single);
            }
            _ => panic!("a job that runs alone waited for batch room"),
        }
        assert!(q.take_work(false).is_none());
        // A slot is given back even when its batch panics.
        let slots = AtomicUsize::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _slot = BatchSlot(&slots);
            panic!("batch failed");
        });
        assert_eq!(slots.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn queue_coalesces_requests_for_one_instance() {
        let q = ReconcileQueue::new();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        q.enqueue(a, Trigger::Resync, Ask::Reconcile, None);
        q.enqueue(b, Trigger::Resync, Ask::Reconcile, None);
        q.enqueue(a, Trigger::RestartRequest, Ask::Restart, None);
        assert_eq!(q.len(), 2);
        let (first, job) = q.take_next().unwrap();
        assert_eq!(first, a, "a restart request jumps the queue");
        assert_eq!(job.ask, Ask::Restart);
        assert_eq!(job.trigger, Trigger::RestartRequest);
        // `a` is in flight: a new request for it queues, but `b` goes first.
        q.enqueue(a, Trigger::Resync, Ask::Reconcile, None);
        let (second, _) = q.take_next().unwrap();
        assert_eq!(second, b);
        assert!(q.take_next().is_none(), "a is still in flight");
        q.done(a);
        let (third, _) = q.take_next().unwrap();
        assert_eq!(third, a);
    }
}
