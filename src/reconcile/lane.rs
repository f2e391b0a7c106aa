//! The priority lane: an explicit restart never waits behind a storm.
//!
//! A storm (10,000 starts, their first checks, the Duroxide turns) saturates the service's
//! runtime and its CMS pool: while PostgreSQL answers other clients at once, an explicit
//! restart's statements would wait inside the service (its task queued behind thousands of
//! ready ones, its connection behind the checks'), a dozen times over. The lane is a thread
//! of its own with a tokio runtime and CMS connections of its own (`toygres-actors-lane` in
//! `pg_stat_activity`); it runs:
//!
//! - durable restart requests (`request_actor_restart()`): the listener raises a flag, the
//!   lane reads the pending requests and honours each;
//! - `restart <name>` on the control channel;
//! - the HTTP API's restart.
//!
//! The restart's first check runs on the lane too, with a probe of its own, before the
//! request counts as handled; the scheduler takes the actor's later checks over
//! ([`crate::duro::ActorControl::for_lane`]).
//!
//! What the lane runs is the reconciler's own code on other connections
//! ([`Reconciler::sibling`]): the term, the restart limits, the healing breaker and the
//! backoff are shared, so a restart through the lane is fenced and bounded exactly as one
//! through the queue, and one request read twice (the lane, the resync's queue) restarts
//! once. A run that fails is retried (a rate-limited one when allowed); a durable request
//! that still fails stays pending and the resync honours it. A stopping lane gives its runs
//! in flight a few seconds, so that a restart that committed also marks its request handled
//! (a request cut off in between is honoured again: at least once, never lost).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Ask, Mode, Reconciler, Trigger};
use crate::check::ActorDeps;
use crate::check_writes::CheckWrites;
use crate::config::{self, CHANNEL_CONTROL};
use crate::duro::DuroError;
use crate::metrics;

/// CMS connections of the lane: a restart holds one; a few requests at once share them.
const LANE_CONNECTIONS: u32 = 4;
/// Probes of the lane at once (first checks of explicit restarts).
const LANE_PROBES: usize = 4;
/// Failed runs of one durable request before the lane leaves it to the resync (it stays
/// pending); a `restart <name>`, which has no durable row, is retried until done.
const ATTEMPTS: u32 = 5;
/// How long a stopping lane waits for its runs in flight.
const DRAIN: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce(Arc<Lane>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What runs on the lane's thread: the reconciler on the lane's connections, and one slot
/// per connection (a flood of requests waits for a slot, not for the pool's timeout).
struct Lane {
    reconciler: Arc<Reconciler>,
    slots: tokio::sync::Semaphore,
    stop: CancellationToken,
    /// Instances whose durable request is being honoured here: a second read of the pending
    /// requests (each request notifies twice) does not start a second run.
    honouring: Mutex<HashSet<Uuid>>,
    /// One read of the pending requests at a time: (reading, read again when done).
    reads: Mutex<(bool, bool)>,
    /// Runs in flight, drained when the lane stops (so that a restart that committed also
    /// marks its request handled).
    running: std::sync::atomic::AtomicUsize,
    idle: Notify,
}

impl Lane {
    fn run(self: &Arc<Self>) -> Run {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Run(self.clone())
    }

    /// Runs in flight at most `wait` longer.
    async fn drain(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let idle = self.idle.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    "priority lane: runs still in flight at stop; a durable request they had not marked handled is honoured again by the next leader"
                );
                return;
            }
        }
    }
}

/// A run in flight on the lane (see [`Lane::drain`]).
struct Run(Arc<Lane>);

impl Drop for Run {
    fn drop(&mut self) {
        if self
            .0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Hands explicit requests to the lane's thread.
pub struct PriorityLane {
    jobs: mpsc::UnboundedSender<Job>,
    requests: Arc<Notify>,
    stop: CancellationToken,
    /// Names of `restart <name>` requests waiting or running: one run per name, at most
    /// [`config::CONTROL_INBOX_MAX`] names (anyone who can CONNECT can NOTIFY).
    named: Arc<Mutex<HashSet<String>>>,
    /// True once the lane's thread has drained and ended.
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl PriorityLane {
    /// Start the lane's thread: its runtime, its pool (connected before this returns) and
    /// its prober (as the service's, but a fresh connection per probe).
    pub async fn start(
        reconciler: Arc<Reconciler>,
        url: &str,
        deps: &ActorDeps,
    ) -> Result<Arc<Self>, DuroError> {
        let (jobs, mut inbox) = mpsc::unbounded_channel::<Job>();
        let requests = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (ready_tx, ready) = oneshot::channel();
        let url = url.to_string();
        let prober = deps.prober.sibling(LANE_PROBES);
        let (expect_standby, check_commit) = (deps.expect_standby, deps.writes.commit());
        let first_checks = deps.first_checks.clone();
        let (wake, done) = (requests.clone(), stop.clone());
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("priority-lane".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(DuroError::Provider(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let pool = match crate::db::lane_cms_pool(&url, LANE_CONNECTIONS).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(DuroError::Provider(e.to_string())));
                            return;
                        }
                    };
                    let deps = Arc::new(ActorDeps {
                        pool: pool.clone(),
                        prober: Arc::new(prober),
                        expect_standby,
                        writes: CheckWrites::start(pool.clone(), check_commit),
                        first_checks,
                    });
                    let control = reconciler.control.for_lane(pool, deps);
                    let lane = Arc::new(Lane {
                        reconciler: Arc::new(reconciler.sibling(control)),
                        slots: tokio::sync::Semaphore::new(LANE_CONNECTIONS as usize),
                        stop: done.clone(),
                        honouring: Mutex::default(),
                        reads: Mutex::default(),
                        running: Default::default(),
                        idle: Notify::new(),
                    });
                    let _ = ready_tx.send(Ok(()));
                    loop {
                        tokio::select! {
                            job = inbox.recv() => match job {
                                Some(job) => {
                                    let run = lane.run();
                                    tokio::spawn(async move {
                                        job(run.0.clone()).await;
                                        drop(run);
                                    });
                                }
                                None => break,
                            },
                            _ = wake.notified() => {
                                let mut reads = lock(&lane.reads);
                                if reads.0 {
                                    reads.1 = true;
                                } else {
                                    *reads = (true, false);
                                    tokio::spawn(honour_pending(lane.clone()));
                                }
                            }
                            _ = done.cancelled() => break,
                        }
                    }
                    done.cancel();
                    lane.drain(DRAIN).await;
                    lane.reconciler.pool().close().await;
                });
                let _ = stopped_tx.send(true);
            })
            .map_err(|e| DuroError::Provider(e.to_string()))?;
        ready
            .await
            .map_err(|_| DuroError::Provider("the priority lane did not start".into()))??;
        Ok(Arc::new(Self {
            jobs,
            requests,
            stop,
            stopped,
            named: Arc::default(),
        }))
    }

    /// A durable restart request was made: read the pending ones and honour them.
    pub fn restart_requests(&self) {
        self.requests.notify_one();
    }

    /// `restart <name>` on the control channel: looked up and restarted on the lane. The
    /// same name again while it waits or runs is one request; beyond
    /// [`config::CONTROL_INBOX_MAX`] names, requests are dropped and counted (false).
    pub fn restart_named(&self, name: String) -> bool {
        {
            let mut named = lock(&self.named);
            if named.contains(&name) {
                return true;
            }
            if named.len() >= config::CONTROL_INBOX_MAX {
                drop(named);
                metrics::notification_dropped(CHANNEL_CONTROL);
                return false;
            }
            named.insert(name.clone());
        }
        let in_flight = self.named.clone();
        let name_again = name.clone();
        let job: Job = Box::new(move |lane| {
            Box::pin(async move {
                let found = {
                    let _slot = lane.slots.acquire().await;
                    super::inbox::look_up(&lane.reconciler, &name, Ask::Restart).await
                };
                if let Some(id) = found {
                    explicit(&lane, id, Trigger::ControlRestart).await;
                }
                lock(&in_flight).remove(&name);
            })
        });
        if self.jobs.send(job).is_err() {
            tracing::warn!("the priority lane is stopped: control restart dropped");
            lock(&self.named).remove(&name_again);
            return false;
        }
        true
    }

    /// Run `f` on the lane with the lane's reconciler; `None` if the lane has stopped.
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Arc<Reconciler>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |lane| {
            Box::pin(async move {
                let _slot = lane.slots.acquire().await;
                let _ = tx.send(f(lane.reconciler.clone()).await);
            })
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }

    /// Stop the lane: no new runs; runs in flight get [`DRAIN`] to finish (a restart that
    /// committed then marks its request handled), then the lane's connections close.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut stopped = self.stopped.clone();
        let _ =
            tokio::time::timeout(DRAIN + Duration::from_secs(1), stopped.wait_for(|s| *s)).await;
    }
}

impl Drop for PriorityLane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Read the pending durable requests and honour each (concurrently: one request does not
/// wait for another instance's).
async fn honour_pending(lane: Arc<Lane>) {
    let _run = lane.run();
    loop {
        let pending = {
            let _slot = lane.slots.acquire().await;
            lane.reconciler.pending_restart_requests().await
        };
        match pending {
            Ok(ids) => {
                tracing::debug!(
                    requests = ids.len(),
                    "priority lane: pending restart requests read"
                );
                for id in ids {
                    if !lock(&lane.honouring).insert(id) {
                        continue; // being honoured here already
                    }
                    let run = lane.run();
                    tokio::spawn(async move {
                        explicit(&run.0, id, Trigger::RestartRequest).await;
                        lock(&run.0.honouring).remove(&id);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "priority lane: reading pending restart requests failed; the resync honours them")
            }
        }
        let mut reads = lock(&lane.reads);
        if reads.1 && !lane.stop.is_cancelled() {
            reads.1 = false;
        } else {
            *reads = (false, false);
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One explicit restart, retried as the queue would: a rate-limited one when allowed, a
/// failed one after a growing delay (capped at 30 s) until it succeeds, this replica stops
/// leading or the lane stops; a durable request after [`ATTEMPTS`] failures is left pending
/// for the resync (which honours it through the queue).
async fn explicit(lane: &Lane, id: Uuid, trigger: Trigger) {
    let request = if trigger == Trigger::RestartRequest {
        "request"
    } else {
        "control"
    };
    let mut failures = 0;
    loop {
        if lane.stop.is_cancelled() {
            return;
        }
        let result = {
            let _slot = lane.slots.acquire().await;
            if trigger == Trigger::RestartRequest {
                lane.reconciler.honour_restart_request(id).await
            } else {
                lane.reconciler
                    .reconcile_instance(id, &trigger, Ask::Restart, Mode::Act)
                    .await
            }
        };
        let delay = match result {
            Ok(_) => {
                metrics::lane_restart(request, "done");
                return;
            }
            Err(DuroError::TermOver(_) | DuroError::NotLeader) => {
                metrics::lane_restart(request, "not_leader");
                tracing::debug!(instance_id = %id, "priority lane: not the leader; the leader honours it");
                return;
            }
            Err(DuroError::RateLimited(wait)) => {
                metrics::lane_restart(request, "retry");
                tracing::debug!(instance_id = %id, retry_in_ms = wait.as_millis() as u64, "restart held back by the rate limits");
                wait
            }
            Err(e) if e.row_held() => {
                metrics::lane_restart(request, "retry");
                tracing::debug!(instance_id = %id, "the instance's row is held by another session; will retry");
                crate::config::ROW_HELD_RETRY
            }
            Err(e) => {
                failures += 1;
                if failures >= ATTEMPTS && trigger == Trigger::RestartRequest {
                    metrics::lane_restart(request, "left_pending");
                    tracing::warn!(instance_id = %id, error = %e,
                        "priority lane: restart request failed {ATTEMPTS} times; it stays pending and the resync honours it");
                    return;
                }
                metrics::lane_restart(request, "retry");
                let delay = super::queue::retry_delay(failures);
                tracing::warn!(instance_id = %id, attempt = failures, retry_in_ms = delay.as_millis() as u64,
                    error = %e, "priority lane: explicit restart failed; will retry");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay.max(Duration::from_millis(10))) => {}
            _ = lane.stop.cancelled() => return,
        }
    }
}
