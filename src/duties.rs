//! The leader's duties and the periodic work every replica does, each a small loop with a
//! stop token: the listener, the reconcile queue, the resync timer and the pruner run while
//! this replica leads in a term ([`lead_when_elected`]); the fleet gauges, the probe
//! connection sweep and the pools' trim run everywhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::identity::Term;
use crate::listener::{self, ListenerSettings, ListenerStatus};
use crate::metrics::{self, FleetEntry, FleetGauges};
use crate::probe::Prober;
use crate::reconcile::{ControlInbox, PriorityLane, ReconcileQueue, Reconciler};
use crate::snapshot::{FleetSnapshot, Snapshots};
use crate::verdict::Verdict;

pub struct LeaderDuties {
    pub reconciler: Arc<Reconciler>,
    pub listener: ListenerSettings,
    pub listener_status: watch::Sender<ListenerStatus>,
    pub parallelism: usize,
    pub resync_interval: Duration,
    pub history_retention: Duration,
    /// Where explicit restarts run (see [`PriorityLane`]).
    pub lane: Option<Arc<PriorityLane>>,
}

/// Start the leader duties whenever we are elected; stop them when we are not.
pub async fn lead_when_elected(
    duties: LeaderDuties,
    mut leading: watch::Receiver<Option<Term>>,
    stop: CancellationToken,
) {
    let duties = Arc::new(duties);
    loop {
        // Wait to be elected.
        let term = tokio::select! {
            r = leading.wait_for(|l| l.is_some()) => match r {
                Ok(t) => t.clone(),
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let Some(term) = term else { continue };
        duties.reconciler.set_term(Some(term.clone()));
        let term_stop = stop.child_token();
        let queue = Arc::new(ReconcileQueue::new());
        let inbox = ControlInbox::with_lane(duties.lane.clone());
        let handles = vec![
            tokio::spawn(inbox.clone().run(
                duties.reconciler.clone(),
                queue.clone(),
                term_stop.clone(),
            )),
            tokio::spawn(queue.clone().run(
                duties.reconciler.clone(),
                duties.parallelism,
                term_stop.clone(),
            )),
            tokio::spawn(listener::run(
                duties.listener.clone(),
                duties.reconciler.clone(),
                queue.clone(),
                inbox.clone(),
                duties.listener_status.clone(),
                term_stop.clone(),
            )),
            tokio::spawn(resync_timer(
                duties.reconciler.clone(),
                queue.clone(),
                duties.resync_interval,
                term_stop.clone(),
            )),
            tokio::spawn(prune_timer(
                duties.reconciler.clone(),
                duties.history_retention,
                term_stop.clone(),
            )),
        ];
        // Lead until this term ends (stepped down, or a new term after a lapse) or shutdown.
        let current = term.clone();
        tokio::select! {
            _ = leading.wait_for(|l| l.as_ref() != Some(&current)) => {
                tracing::warn!(term = current.term, "term over: stopping listener and reconciler")
            }
            _ = stop.cancelled() => {}
        }
        duties.reconciler.set_term(None);
        term_stop.cancel();
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

async fn resync_timer(
    reconciler: Arc<Reconciler>,
    queue: Arc<ReconcileQueue>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the listener's connect-time reconcile covers the start
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match reconciler
            .full_reconcile(Some(&queue), crate::reconcile::Mode::Act)
            .await
        {
            Ok(found) if !found.is_empty() => {
                tracing::info!(queued = found.len(), "resync queued heals")
            }
            Ok(_) => tracing::debug!("resync: nothing to heal"),
            Err(e) => {
                metrics::reconcile_error();
                tracing::warn!(error = %e, "resync failed");
            }
        }
    }
}

/// Old health history, decisions and handled restart requests, the rows of replicas long
/// gone, Duroxide's finished executions and actors.
async fn prune_timer(reconciler: Arc<Reconciler>, retention: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(config::PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // A step-down ends the pass at once (its batches are fenced by the term as well).
        tokio::select! {
            r = prune_once(&reconciler, retention) => if let Err(e) = r {
                tracing::warn!(error = %e, "pruning failed");
            },
            _ = stop.cancelled() => {
                tracing::info!("pruning stopped: no longer the leader");
                return;
            }
        }
    }
}

/// One pruning pass (also used by tests and benchmarks). A fenced reconciler (the service)
/// prunes only in its term: the CMS deletes assert it in each statement, and Duroxide's bulk
/// deletes (which run outside our transactions) are preceded by a check of it.
pub async fn prune_once(reconciler: &Reconciler, retention: Duration) -> anyhow::Result<()> {
    let control = &reconciler.control;
    let fence = reconciler.duty_fence()?;
    let history = crate::cms::prune_health_history(
        &control.pool,
        retention,
        config::PRUNE_BUDGET,
        fence.as_ref(),
    )
    .await?;
    let decisions = crate::cms::prune_decisions(&control.pool, retention, fence.as_ref()).await?;
    // Handled restart requests are kept as long as the decisions that answered them.
    // Not fatal: a runtime role granted before this pruning existed lacks DELETE there, and
    // the rest of the pass (the store's growth above all) must go on.
    let restart_requests = match crate::cms::prune_restart_requests(
        &control.pool,
        retention,
        fence.as_ref(),
    )
    .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not prune handled restart requests (the runtime role needs DELETE on toygres_cms.actor_restart_requests: docs/operations.md, \"Database privileges\"); the rest of the pass goes on");
            0
        }
    };
    let replicas =
        crate::cms::prune_replicas(&control.pool, config::REPLICA_ROW_GRACE, fence.as_ref())
            .await?;
    let with_old: Vec<String> = sqlx::query_scalar(&crate::sql::with_duroxide_schema(
        crate::sql::ACTORS_WITH_OLD_EXECUTIONS,
        &control.schema,
    ))
    .bind(config::ACTOR_ORCHESTRATION)
    .fetch_all(&control.pool)
    .await?;
    let mut executions = 0;
    if !with_old.is_empty() {
        control.begin(fence.as_ref()).await?.commit().await?;
        let r = control
            .client
            .prune_executions_bulk(
                duroxide::InstanceFilter {
                    instance_ids: Some(with_old),
                    ..Default::default()
                },
                duroxide::PruneOptions {
                    keep_last: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        executions = r.executions_deleted;
    }
    // Finished actors are kept a day for `explain`, then deleted.
    let finished: Vec<String> = sqlx::query_scalar(&crate::sql::with_duroxide_schema(
        crate::sql::FINISHED_ACTORS,
        &control.schema,
    ))
    .bind(config::ACTOR_ORCHESTRATION)
    .bind(86_400f64)
    .fetch_all(&control.pool)
    .await?;
    let mut deleted = 0;
    if !finished.is_empty() {
        control.begin(fence.as_ref()).await?.commit().await?;
        let r = control
            .client
            .delete_instance_bulk(duroxide::InstanceFilter {
                instance_ids: Some(finished),
                ..Default::default()
            })
            .await?;
        deleted = r.instances_deleted;
    }
    tracing::info!(
        history,
        decisions,
        restart_requests,
        replicas,
        executions,
        finished_actors = deleted,
        "pruned"
    );
    Ok(())
}

/// Every `every` (or less often when the query is costly), read the whole fleet once and
/// publish it twice: as the fleet gauges and as the snapshot `/api/actors` serves.
pub async fn poll_fleet(
    reconciler: Arc<Reconciler>,
    gauges: FleetGauges,
    snapshots: Snapshots,
    every: Duration,
    stop: CancellationToken,
) {
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => return,
        }
        let started = tokio::time::Instant::now();
        if let Err(e) = crate::clock::sync(reconciler.pool()).await {
            tracing::debug!(error = %e, "could not read the database's clock; keeping the last reading");
        }
        let fleet = reconciler.fleet().await;
        // Every `every`, unless the query itself costs more than its share of the time.
        let cost = started.elapsed();
        let wait = every.max(cost.div_f64(config::FLEET_POLL_MAX_DUTY));
        if wait > every {
            tracing::debug!(
                cost_ms = cost.as_millis() as u64,
                next_in_ms = wait.as_millis() as u64,
                "fleet gauges: the query is costly; polling less often"
            );
        }
        next = started + wait;
        match fleet {
            Ok(fleet) => {
                let mut entries: Vec<FleetEntry> = fleet
                    .instances
                    .iter()
                    .map(|(obs, d)| FleetEntry {
                        k8s_name: obs.row.k8s_name.clone(),
                        verdict: d.verdict,
                        last_health_check: obs
                            .row
                            .last_health_check
                            .map(|t| t.timestamp_millis() as f64 / 1000.0),
                        up: obs.row.health_status == crate::instance::HealthStatus::Healthy,
                        awaiting_check_since: reconciler
                            .control
                            .wants_actor(&obs.row.state)
                            .then(|| obs.row.last_health_check.unwrap_or(obs.row.created_at))
                            .map(|t| t.timestamp_millis() as f64 / 1000.0),
                    })
                    .collect();
                entries.extend(
                    fleet
                        .deleted_with_live_actors
                        .iter()
                        .map(|(id, _)| FleetEntry {
                            k8s_name: format!("(deleted {id})"),
                            verdict: Verdict::Orphan,
                            last_health_check: None,
                            up: false,
                            awaiting_check_since: None,
                        }),
                );
                // The list first: whoever saw the gauges change finds the list changed too.
                snapshots.publish(FleetSnapshot::new(
                    fleet.observed_at,
                    crate::ops::views(&fleet),
                ));
                gauges.set(entries);
            }
            Err(e) => tracing::warn!(error = %e, "fleet gauges: query failed"),
        }
    }
}

/// Every replica's housekeeping every [`crate::quiet::BURST_WINDOW`]: flush the log
/// summaries, sample the pools' use; every minute, close probe connections idle longer than
/// `idle` and the pools' connections beyond their recent need ([`crate::db::PoolTrimmer`]).
pub async fn sweep_probes(
    prober: Arc<Prober>,
    idle: Duration,
    mut pools: Vec<crate::db::PoolTrimmer>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(crate::quiet::BURST_WINDOW);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Summaries of per-instance log lines every window; the probe sweep and the
                // pools' trim every minute (their use sampled every window).
                crate::quiet::flush_all();
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(6) {
                    prober.sweep(idle);
                    for pool in &mut pools {
                        let closed = pool.trim().await;
                        metrics::pool_trimmed(pool.name(), closed);
                    }
                } else {
                    pools.iter_mut().for_each(crate::db::PoolTrimmer::sample);
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
