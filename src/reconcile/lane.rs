//! The priority lane: an explicit restart never waits behind a storm.
//!
//! A storm (10,000 starts, their first checks, the Duroxide turns) saturates the service's
//! runtime and its CMS pool. While PostgreSQL answered another client in under a
//! millisecond, each statement of an explicit restart took the service 30–100 ms to see
//! (its task queued behind thousands of ready ones, its connection behind the checks'), and
//! the restart's dozen statements most of a second. The lane is a thread of its own with a
//! tokio runtime and CMS connections of its own (`toygres-actors-lane` in
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
//! that still fails stays pending and the resync honours it.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Ask, Reconciler, Trigger};
use crate::check::ActorDeps;
use crate::config::{self, CHANNEL_CONTROL};
use crate::duro::DuroError;
use crate::metrics;

/// CMS connections of the lane: a restart holds one; a few requests at once share them.
const LANE_CONNECTIONS: u32 = 4;
/// Probes of the lane at once (first checks of explicit restarts).
const LANE_PROBES: usize = 4;
/// Failed runs of one explicit request before the lane gives it up (a durable request
/// stays pending for the resync).
const ATTEMPTS: u32 = 5;

type Job = Box<dyn FnOnce(Arc<Lane>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What runs on the lane's thread: the reconciler on the lane's connections, and one slot
/// per connection (a flood of requests waits for a slot, not for the pool's timeout).
struct Lane {
    reconciler: Arc<Reconciler>,
    slots: tokio::sync::Semaphore,
}

/// Hands explicit requests to the lane's thread.
pub struct PriorityLane {
    jobs: mpsc::UnboundedSender<Job>,
    requests: Arc<Notify>,
    stop: CancellationToken,
    /// Names of `restart <name>` requests waiting or running: one run per name, at most
    /// [`config::CONTROL_INBOX_MAX`] names (anyone who can CONNECT can NOTIFY).
    named: Arc<Mutex<HashSet<String>>>,
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
        let (expect_standby, check_commit) = (deps.expect_standby, deps.check_commit);
        let (wake, done) = (requests.clone(), stop.clone());
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
                        check_commit,
                    });
                    let control = reconciler.control.for_lane(pool, deps);
                    let lane = Arc::new(Lane {
                        reconciler: Arc::new(reconciler.sibling(control)),
                        slots: tokio::sync::Semaphore::new(LANE_CONNECTIONS as usize),
                    });
                    let _ = ready_tx.send(Ok(()));
                    loop {
                        tokio::select! {
                            job = inbox.recv() => match job {
                                Some(job) => {
                                    tokio::spawn(job(lane.clone()));
                                }
                                None => return,
                            },
                            _ = wake.notified() => {
                                tokio::spawn(honour_pending(lane.clone()));
                            }
                            _ = done.cancelled() => return,
                        }
                    }
                });
            })
            .map_err(|e| DuroError::Provider(e.to_string()))?;
        ready
            .await
            .map_err(|_| DuroError::Provider("the priority lane did not start".into()))??;
        Ok(Arc::new(Self {
            jobs,
            requests,
            stop,
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
            let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
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
        let job: Job = Box::new(move |lane| {
            Box::pin(async move {
                let found = {
                    let _slot = lane.slots.acquire().await;
                    super::inbox::look_up(&lane.reconciler, &name, Ask::Restart).await
                };
                if let Some(id) = found {
                    explicit(&lane, id, Trigger::ControlRestart).await;
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            })
        });
        if self.jobs.send(job).is_err() {
            tracing::warn!("the priority lane is stopped: control restart dropped");
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

    /// Stop the lane (its runs in flight are dropped: a durable request stays pending).
    pub fn stop(&self) {
        self.stop.cancel();
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
                let lane = lane.clone();
                tokio::spawn(async move { explicit(&lane, id, Trigger::RestartRequest).await });
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "priority lane: reading pending restart requests failed; the resync honours them")
        }
    }
}

/// One explicit restart, retried as the queue would: a rate-limited one when allowed, a
/// failed one after a growing delay, at most [`ATTEMPTS`] failures.
async fn explicit(lane: &Lane, id: Uuid, trigger: Trigger) {
    let mut failures = 0;
    loop {
        let result = {
            let _slot = lane.slots.acquire().await;
            if trigger == Trigger::RestartRequest {
                lane.reconciler.honour_restart_request(id).await
            } else {
                lane.reconciler
                    .reconcile_instance(id, &trigger, true, false)
                    .await
            }
        };
        let delay = match result {
            Ok(_) => return,
            Err(DuroError::TermOver(_) | DuroError::NotLeader) => {
                tracing::debug!(instance_id = %id, "priority lane: not the leader; the leader honours it");
                return;
            }
            Err(DuroError::RateLimited(wait)) => {
                tracing::debug!(instance_id = %id, retry_in_ms = wait.as_millis() as u64, "restart held back by the rate limits");
                wait
            }
            Err(e) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    tracing::warn!(instance_id = %id, trigger = %trigger.label(), error = %e,
                        "priority lane: explicit restart failed {ATTEMPTS} times; a durable request stays pending for the resync");
                    return;
                }
                let delay = super::queue::retry_delay(failures);
                tracing::warn!(instance_id = %id, attempt = failures, retry_in_ms = delay.as_millis() as u64,
                    error = %e, "priority lane: explicit restart failed; will retry");
                delay
            }
        };
        tokio::time::sleep(delay.max(Duration::from_millis(10))).await;
    }
}
