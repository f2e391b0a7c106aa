//! The Duroxide store: duroxide-pg's provider behind a wrapper of ours that makes an idle
//! dispatcher cheap and a busy one free of herding. Everything but the two fetches (and the
//! wake-ups that enqueues and acks give) delegates to duroxide-pg, management included.
//!
//! **Waiting instead of polling.** duroxide-pg answers a fetch at once, work or not, and the
//! runtime's dispatcher slots poll again every `--poll-interval`: an idle service spends a
//! write transaction per slot per poll. Duroxide's provider contract lets a fetch wait up to
//! the `poll_timeout` the runtime passes (30 s). Here, a fetch that finds nothing waits for a
//! wake-up, then fetches again. Wake-ups come from
//!
//! - this process: an enqueue, the enqueues of an ack (worker items, orchestrator items
//!   due now), a completion, an abandon; and an ack that releases the instance lock after
//!   a wake-up came while the item was held (a message for the instance may have waited
//!   behind the lock);
//! - other processes (the CLI, other replicas, our own fenced SQL enqueues in `duro`): a
//!   statement trigger on the queue tables (`sql/duroxide_wake.sql`) notifies
//!   [`CHANNEL_STORE_WAKE`](crate::config::CHANNEL_STORE_WAKE) when a transaction inserted
//!   visible work, and [`listen`] turns the notification into a wake-up. The echo of this
//!   process's own store writes (its connections name it:
//!   [`STORE_ORIGIN_SETTING`](crate::config::STORE_ORIGIN_SETTING)) is ignored: it woke
//!   itself already;
//! - the clock: the due time of every delayed item enqueued here (durable timers, delayed
//!   retries), with follow-ups for clock skew while a due fetch finds nothing.
//!
//! Whatever else makes work visible without a wake-up (another process's timer, a lock
//! that expired because its holder died, a notification lost while the listener
//! reconnects) waits at most [`MAX_WAIT`](crate::config::STORE_MAX_WAIT) (5 s): each lane
//! fetches at least that often. That bound is the whole cost of a lost wake-up.
//!
//! **No herding.** duroxide-pg's orchestration fetch picks the head row without `SKIP
//! LOCKED` and then blocks on an advisory lock, so concurrent fetches of one process queue
//! up behind each other on the same row. Here one fetch per queue (a *lane*) is in flight
//! per process. A wake-up carries how many items it made visible when it knows (see
//! `store/waiting_room.rs`): a fetch that finds an item lets the next slot fetch at once only while
//! announced items are left (or the count is unknown); otherwise the lane rests as after
//! an empty fetch. A slot that comes for the lane when the last fetch left it resting, with
//! no wake-up since, does not fetch but waits — including a dispatcher slot back from its
//! own turn (a call that passes no timeout is always answered by a fetch: the contract's
//! "what is there now" holds). In the steady state a turn costs one fetch.
//!
//! Turns are counted on acks (an empty fetch is not a turn):
//! `toygres_actors_duroxide_turns_total{queue}`; fetches by outcome and wake-ups by source
//! are exported beside them (see [`crate::metrics`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::Event;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin,
    ProviderError, ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide_pg::PostgresProvider;

use crate::config;
use crate::first_checks::FirstChecks;
use crate::metrics;

pub(crate) mod foreign;
mod listen;
mod waiting_room;

pub use foreign::{ForeignGuard, ForeignStore, ForeignWork, Refused, foreign_work, refuse_foreign};
pub use listen::listen;
use waiting_room::{WaitingRoom, delay_instant, timer_due};

/// duroxide-pg's provider with waiting fetches, single-flight per queue and wake-ups.
pub struct Store {
    inner: Arc<PostgresProvider>,
    schema: String,
    orch: WaitingRoom,
    work: WaitingRoom,
    max_wait: Duration,
    /// Off: fetches pass straight through (duroxide-pg's own polling; `--duroxide-wait off`).
    waiting: std::sync::atomic::AtomicBool,
    /// Fetches that reached duroxide-pg (both queues), for tests and the bench.
    fetches: std::sync::atomic::AtomicU64,
    /// Set by tests: wake-ups from this process's own enqueues and acks are dropped, as if
    /// lost, so the bound on a lost wake-up can be measured.
    drop_local_wakeups: std::sync::atomic::AtomicBool,
    /// Orchestration items this process holds: lock token → the orchestrator lane's wake-up
    /// generation when the fetch that took it began.
    held: std::sync::Mutex<HashMap<String, u64>>,
    /// The `<origin>` this process's store connections put in the queue trigger's wake-ups
    /// (`None`: it does not know, and takes every wake-up).
    origin: Option<String>,
    /// Whether this process ever took a session-bound activity: until it does, it owns no
    /// session, and the runtime's periodic session-lock renewal has nothing to renew.
    sessions_seen: std::sync::atomic::AtomicBool,
    /// Keeps out of foreign work ([`Store::guarded`]).
    guard: Option<ForeignGuard>,
    /// Single starts' first checks, which orchestration fetches wait for a moment.
    first_checks: Arc<FirstChecks>,
}

/// Lock tokens remembered at most (beyond that the map starts afresh, and an ack of a token
/// it forgot wakes the lane, as every ack once did).
const MAX_HELD: usize = 100_000;

impl Store {
    pub fn new(inner: Arc<PostgresProvider>, schema: &str) -> Self {
        Self::with_max_wait(inner, schema, config::STORE_MAX_WAIT)
    }

    pub fn with_max_wait(inner: Arc<PostgresProvider>, schema: &str, max_wait: Duration) -> Self {
        Self {
            inner,
            schema: schema.to_string(),
            orch: WaitingRoom::new("orchestrator"),
            work: WaitingRoom::new("worker"),
            max_wait,
            waiting: std::sync::atomic::AtomicBool::new(true),
            fetches: std::sync::atomic::AtomicU64::new(0),
            drop_local_wakeups: std::sync::atomic::AtomicBool::new(false),
            held: std::sync::Mutex::new(HashMap::new()),
            origin: None,
            sessions_seen: std::sync::atomic::AtomicBool::new(false),
            guard: None,
            first_checks: Arc::default(),
        }
    }

    /// The origin that `inner`'s connections name in the trigger's wake-ups
    /// ([`config::STORE_ORIGIN_SETTING`]): wake-ups of this process's own inserts, which
    /// woke its lanes already, are ignored.
    pub fn with_origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.to_string());
        self
    }

    /// The single starts' first checks its orchestration fetches wait for.
    pub fn first_checks(&self) -> &Arc<FirstChecks> {
        &self.first_checks
    }

    /// duroxide-pg's provider itself (its management capability, its own methods).
    pub fn inner(&self) -> &Arc<PostgresProvider> {
        &self.inner
    }

    /// Wait for wake-ups (the default), or pass fetches straight through to duroxide-pg.
    pub fn set_waiting(&self, on: bool) {
        self.waiting.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many fetches reached duroxide-pg so far (both queues; skipped ones not counted).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tests: drop (or stop dropping) the wake-ups this process gives itself.
    pub fn drop_local_wakeups(&self, on: bool) {
        self.drop_local_wakeups
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// A wake-up from this process's own write of `items` items (or [`waiting_room::UNKNOWN`]).
    fn local_wake(&self, lane: &WaitingRoom, source: &'static str, items: u64) {
        if !self
            .drop_local_wakeups
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            lane.wake_n(source, items);
        }
    }

    /// Work was enqueued for the orchestrator queue by SQL of ours (a fenced transaction).
    pub fn enqueued_orchestrator_work(&self) {
        self.local_wake(&self.orch, "enqueue", waiting_room::UNKNOWN);
    }

    /// Wake both lanes (the listener reconnected: notifications may have been missed).
    pub fn wake_all(&self, source: &'static str) {
        self.orch.wake(source);
        self.work.wake(source);
    }

    /// A notification on the wake channel: payload `<schema> orch|work[ <origin>]`.
    pub fn on_notification(&self, payload: &str) {
        let mut fields = payload.split(' ');
        let (Some(schema), Some(queue)) = (fields.next(), fields.next()) else {
            return;
        };
        if schema != self.schema {
            return;
        }
        if let (Some(from), Some(me)) = (fields.next(), self.origin.as_deref())
            && from == me
        {
            return;
        }
        match queue {
            "orch" => self.orch.wake("notify"),
            "work" => self.work.wake("notify"),
            _ => {}
        }
    }

    /// Work was written to `lane`'s queue: visible at `due` (a wake-up then), or now.
    fn becomes_visible(&self, lane: &WaitingRoom, due: Option<Instant>, source: &'static str) {
        match due {
            Some(at) => lane.due_at(at),
            None => self.local_wake(lane, source, 1),
        }
    }

    /// Forget a held orchestration item: the lane's generation when its fetch began.
    fn release(&self, lock_token: &str) -> Option<u64> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(lock_token)
    }

    /// One fetch that reaches duroxide-pg, counted.
    async fn counted_fetch<T, Fut>(
        &self,
        lane: &WaitingRoom,
        fetch: Fut,
    ) -> Result<Option<T>, ProviderError>
    where
        Fut: std::future::Future<Output = Result<Option<T>, ProviderError>>,
    {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = fetch.await?;
        metrics::store_fetch(lane.name, if found.is_some() { "item" } else { "empty" });
        Ok(found)
    }

    /// Fetch from `lane`, waiting up to `poll_timeout` for work when there is none. What it
    /// found comes with the lane's wake-up generation at the start of that fetch.
    async fn waiting_fetch<T, F, Fut>(
        &self,
        lane: &WaitingRoom,
        poll_timeout: Duration,
        fetch: F,
    ) -> Result<Option<(T, u64)>, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ProviderError>>,
    {
        if !self.waiting.load(std::sync::atomic::Ordering::Relaxed) {
            let generation = lane.generation();
            let found = self.counted_fetch(lane, fetch()).await?;
            return Ok(found.map(|item| (item, generation)));
        }
        let deadline = Instant::now() + poll_timeout;
        // A caller that cannot wait (no timeout) gets what is there now: its first fetch is
        // never skipped. A caller that can wait is answered from the lane's last fetch when
        // that one found nothing since the latest wake-up (a dispatcher slot back from its
        // own turn, whose ack woke the lane only if it had to).
        let mut first = poll_timeout.is_zero();
        loop {
            // Both evaluated: a due time taken on a call's first round does not leave `first`
            // to force a second fetch later.
            let due = lane.take_due(Instant::now());
            let force = std::mem::take(&mut first) || due.is_some();
            // Registered before the fetch: a wake-up during the fetch is not lost.
            let notified = lane.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let generation = lane.generation();
            {
                let mut last = lane.fetch.lock().await;
                let fresh_empty = last.empty.is_some_and(|(g, at)| {
                    g == generation
                        && lane.generation() == generation
                        && at.elapsed() < self.max_wait
                });
                if force || !fresh_empty {
                    let started = Instant::now();
                    match self.counted_fetch(lane, fetch()).await? {
                        Some(item) => {
                            // More announced (or unknown): the next slot fetches at once;
                            // otherwise the lane rests as after an empty fetch.
                            last.empty = if lane.spend() {
                                None
                            } else {
                                Some((generation, started))
                            };
                            return Ok(Some((item, generation)));
                        }
                        None => {
                            lane.drained(generation);
                            last.empty = Some((generation, started));
                            if let Some(level) = due {
                                lane.follow_up(level, Instant::now());
                            }
                        }
                    }
                } else {
                    metrics::store_fetch(lane.name, "skipped");
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Until a wake-up, the next due time, or the bound; after the bound, the fetch
            // is skipped if another slot fetched (and found nothing) less than the bound ago.
            let mut until = (now + self.max_wait).min(deadline);
            if let Some(at) = lane.peek_due() {
                until = until.min(at);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for Store {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        if self.held_off(poll_timeout).await {
            return Ok(None);
        }
        let found = self
            .waiting_fetch(&self.orch, poll_timeout, || async {
                self.first_checks.ahead().await;
                self.inner
                    .fetch_orchestration_item(lock_timeout, Duration::ZERO, filter)
                    .await
            })
            .await?;
        // Another runtime's orchestration ("Unknown": messages with no instance yet, which
        // the runtime settles itself): given back at once, its attempt uncounted.
        if let (Some(guard), Some(((item, token, _), _))) = (&self.guard, &found)
            && guard
                .gave_back_orchestration(&self.inner, item, token)
                .await?
        {
            return Ok(None);
        }
        Ok(found.map(|((item, token, attempts), generation)| {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.len() >= MAX_HELD {
                held.clear();
            }
            held.insert(token.clone(), generation);
            (item, token, attempts)
        }))
    }

    async fn ack_orchestration_item(
        &self,
        lock_token: &str,
        execution_id: u64,
        history_delta: Vec<Event>,
        worker_items: Vec<WorkItem>,
        orchestrator_items: Vec<WorkItem>,
        metadata: ExecutionMetadata,
        cancelled_activities: Vec<ScheduledActivityIdentifier>,
    ) -> Result<(), ProviderError> {
        let worker_count = worker_items.len() as u64;
        let timers: Vec<Instant> = orchestrator_items.iter().filter_map(timer_due).collect();
        let visible_now = (orchestrator_items.len() - timers.len()) as u64;
        let fetched_at = self.release(lock_token);
        self.inner
            .ack_orchestration_item(
                lock_token,
                execution_id,
                history_delta,
                worker_items,
                orchestrator_items,
                metadata,
                cancelled_activities,
            )
            .await?;
        metrics::store_turn("orchestrator");
        if worker_count > 0 {
            self.local_wake(&self.work, "ack", worker_count);
        }
        for at in timers {
            self.orch.due_at(at);
        }
        // The instance lock is released: messages that arrived for it meanwhile are
        // fetchable now, and so are the items just enqueued that are due already. Messages
        // that arrived meanwhile woke the lane when they came (its fetches then found the
        // instance locked), so a generation unchanged since this item's fetch means none did.
        if fetched_at != Some(self.orch.generation()) {
            self.local_wake(&self.orch, "ack", waiting_room::UNKNOWN);
        } else if visible_now > 0 {
            self.local_wake(&self.orch, "ack", visible_now);
        }
        Ok(())
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.release(lock_token);
        self.inner
            .abandon_orchestration_item(lock_token, delay, ignore_attempt)
            .await?;
        self.becomes_visible(&self.orch, delay_instant(delay), "abandon");
        Ok(())
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.inner.read(instance).await
    }

    async fn read_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        self.inner.read_with_execution(instance, execution_id).await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        self.inner
            .append_with_execution(instance, execution_id, new_events)
            .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        self.inner.enqueue_for_worker(item).await?;
        self.local_wake(&self.work, "enqueue", 1);
        Ok(())
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        if self.held_off(poll_timeout).await {
            return Ok(None);
        }
        let found = self
            .waiting_fetch(&self.work, poll_timeout, || {
                self.inner
                    .fetch_work_item(lock_timeout, Duration::ZERO, session, tag_filter)
            })
            .await?;
        if let (Some(guard), Some(((item, token, _), _))) = (&self.guard, &found)
            && guard.gave_back_work(&self.inner, item, token).await?
        {
            return Ok(None);
        }
        Ok(found.map(|(item, _)| {
            if matches!(
                &item.0,
                WorkItem::ActivityExecute {
                    session_id: Some(_),
                    ..
                }
            ) {
                self.sessions_seen
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            item
        }))
    }

    async fn ack_work_item(
        &self,
        token: &str,
        completion: Option<WorkItem>,
    ) -> Result<(), ProviderError> {
        let completes = completion.is_some();
        self.inner.ack_work_item(token, completion).await?;
        metrics::store_turn("worker");
        if completes {
            self.local_wake(&self.orch, "completion", 1);
        }
        Ok(())
    }

    async fn renew_work_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.inner.renew_work_item_lock(token, extend_for).await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        // Sessions are created by the fetch of a session-bound item; before this process took
        // one, it owns none (the service schedules no session activity): nothing to renew,
        // and no statement every few seconds for it.
        if !self.sessions_seen.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner
            .renew_session_lock(owner_ids, extend_for, idle_timeout)
            .await
    }

    async fn cleanup_orphaned_sessions(
        &self,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.inner.cleanup_orphaned_sessions(idle_timeout).await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        self.inner
            .abandon_work_item(token, delay, ignore_attempt)
            .await?;
        self.becomes_visible(&self.work, delay_instant(delay), "abandon");
        Ok(())
    }

    async fn renew_orchestration_item_lock(
        &self,
        token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        self.inner
            .renew_orchestration_item_lock(token, extend_for)
            .await
    }

    async fn enqueue_for_orchestrator(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        let due = timer_due(&item).max(delay_instant(delay));
        self.inner.enqueue_for_orchestrator(item, delay).await?;
        self.becomes_visible(&self.orch, due, "enqueue");
        Ok(())
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        self.inner.as_management_capability()
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.inner
            .get_custom_status(instance, last_seen_version)
            .await
    }

    async fn get_kv_value(
        &self,
        instance: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        self.inner.get_kv_value(instance, key).await
    }

    async fn get_kv_all_values(
        &self,
        instance: &str,
    ) -> Result<std::collections::HashMap<String, String>, ProviderError> {
        self.inner.get_kv_all_values(instance).await
    }

    async fn get_instance_stats(
        &self,
        instance: &str,
    ) -> Result<Option<duroxide::SystemStats>, ProviderError> {
        self.inner.get_instance_stats(instance).await
    }
}
