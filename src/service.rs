//! The service (`toygres-actors run`): wires the pieces and shuts them down in order.
//!
//! Every replica runs: the Duroxide runtime (actors' turns and health checks), the fleet
//! gauge poller, the probe connection sweeper, and the HTTP server. The replica that wins
//! the election ([`crate::leader`]) also runs the leader duties: the listener, the
//! reconcile queue, the resync timer and the pruner. Losing leadership stops those duties;
//! winning it again starts them afresh (with a full reconcile, as after any reconnect).
//!
//! Shutdown (SIGTERM, SIGINT/Ctrl-C): leader duties stop first (no new Duroxide calls), then
//! the election releases its lock, then the Duroxide runtime drains, then HTTP, then the
//! private PostgreSQL (if we started one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::check::ActorDeps;
use crate::config;
use crate::db::Database;
use crate::duro::{self, ActorControl, ActorSettings, RuntimeSettings};
use crate::health::{ProbeSettings, Prober};
use crate::listener::{self, ListenerSettings, ListenerStatus};
use crate::metrics::{self, FleetEntry, FleetGauges};
use crate::reconcile::{ReconcileQueue, Reconciler};
use crate::settings::{GlobalArgs, RunArgs};
use crate::verdict::Verdict;

/// A started service.
pub struct RunningService {
    pub shared: Shared,
    pub http_addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    runtime: Arc<duroxide::runtime::Runtime>,
    /// Held to keep a private cluster alive until the very end.
    database: Option<Database>,
}

/// Start everything; returns once the HTTP server listens.
pub async fn start(
    global: &GlobalArgs,
    args: &RunArgs,
    database: Database,
) -> anyhow::Result<RunningService> {
    let prometheus = metrics::install();
    metrics::initialise_series();
    // Stable across restarts of the same replica (same host, same port), so a restarted
    // process adopts the probe leases its previous incarnation held (see below).
    let replica = args
        .replica
        .clone()
        .unwrap_or_else(|| match args.http.port() {
            0 => format!("{}-{}", hostname(), std::process::id()),
            port => format!("{}:{port}", hostname()),
        });
    let url = database.url.clone();

    let pool = crate::db::cms_pool(&url, args.cms_pool_max).await?;
    crate::db::migrate(&pool).await?;
    let store = duro::open_store(
        &url,
        &global.duroxide_schema,
        args.duroxide_async_commit,
        &pool,
    )
    .await?;

    match duro::count_v1_actors(&pool, &global.duroxide_schema).await {
        Ok(n) => {
            metrics::actors_v1_running(n);
            if n > 0 {
                tracing::info!(
                    actors = n,
                    "actors still run orchestration version 1; it stays registered"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count version-1 actors"),
    }
    let prober = Arc::new(Prober::new(ProbeSettings {
        connect_timeout: args.probe_connect_timeout,
        query_timeout: args.probe_query_timeout,
        keep_connections: args.probe_keep_connections,
        max_concurrent: args.probe_concurrency,
    }));
    let deps = Arc::new(ActorDeps {
        pool: pool.clone(),
        prober: prober.clone(),
    });
    let scheduler = Arc::new(crate::lease::Scheduler::new(
        replica.clone(),
        deps.clone(),
        args.probe_concurrency,
    ));
    let runtime = duro::start_runtime(
        store.clone(),
        deps.clone(),
        scheduler.clone(),
        &RuntimeSettings {
            orchestration_concurrency: args.orchestration_concurrency,
            worker_concurrency: args.worker_concurrency,
            poll_interval: args.poll_interval,
            async_commit: args.duroxide_async_commit,
        },
    )
    .await;
    let control = ActorControl::new(
        pool.clone(),
        store,
        &global.duroxide_schema,
        ActorSettings {
            check_interval: args.check_interval,
            iterations_per_execution: args.iterations_per_execution,
            unhealthy_after: args.unhealthy_after,
            actor_states: args.actor_states.clone(),
            lease_renew: args.lease_renew_interval,
        },
    );
    let control = if args.eager_first_check {
        control.with_eager_first_check(deps, scheduler.clone())
    } else {
        control
    };
    let reconciler = Arc::new(Reconciler::new(control, args.stale_after, replica.clone()));

    let stop = CancellationToken::new();
    let token = stop.clone();
    let mut tasks = Vec::new();
    let fleet = FleetGauges::new(args.per_instance_metrics);
    tasks.push(tokio::spawn(poll_fleet(
        reconciler.clone(),
        fleet.clone(),
        args.fleet_poll_interval,
        token.clone(),
    )));
    adopt_own_leases(&pool, &scheduler, args).await;
    tasks.push(tokio::spawn(scheduler.clone().run(token.clone())));
    tasks.push(tokio::spawn(sweep_probes(
        prober,
        args.check_interval * 3,
        token.clone(),
    )));

    let (leading_tx, leading_rx) = watch::channel(false);
    let (listener_tx, listener_rx) = watch::channel(ListenerStatus::default());
    if !args.worker_only {
        tasks.push(tokio::spawn(crate::leader::run(
            url.clone(),
            leading_tx,
            token.clone(),
        )));
        tasks.push(tokio::spawn(lead_when_elected(
            LeaderDuties {
                reconciler: reconciler.clone(),
                listener: ListenerSettings {
                    url: url.clone(),
                    ping_interval: args.ping_interval,
                    ping_timeout: config::DEFAULT_PING_TIMEOUT.min(args.ping_interval),
                },
                listener_status: listener_tx,
                parallelism: args.reconcile_parallelism,
                resync_interval: args.resync_interval,
                history_retention: args.history_retention,
            },
            leading_rx.clone(),
            token.clone(),
        )));
    }

    let shared = Shared {
        pool,
        reconciler,
        fleet,
        prometheus,
        api_token: args.api_token.clone().filter(|t| !t.is_empty()),
        leading: leading_rx,
        listener: listener_rx,
        worker_only: args.worker_only,
    };
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.http))?;
    let http_addr = listener.local_addr()?;
    let app = crate::api::router(shared.clone());
    let http_stop = token.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    tracing::info!(%http_addr, replica = %replica, worker_only = args.worker_only, "toygres-actors running");
    Ok(RunningService {
        shared,
        http_addr,
        stop,
        tasks,
        runtime,
        database: Some(database),
    })
}

impl RunningService {
    /// Stop everything in order.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a task did not stop within 10 s");
            }
        }
        self.runtime.clone().shutdown(Some(5000)).await;
        self.shared.pool.close().await;
        drop(self.database.take());
        tracing::info!("stopped");
    }

    /// A token that fires when shutdown begins.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// `run`: start, wait for SIGTERM or Ctrl-C, shut down.
pub async fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<()> {
    let database = crate::db::open_database(global).await?;
    let service = start(global, args, database).await?;
    wait_for_signal().await;
    service.shutdown().await;
    Ok(())
}

/// SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// After a restart, resume probing the instances our previous incarnation held leases on,
/// without waiting for each actor's next renewal (or for Duroxide's lock on an in-flight
/// renewal to expire).
async fn adopt_own_leases(pool: &PgPool, scheduler: &crate::lease::Scheduler, args: &RunArgs) {
    type Row = (
        uuid::Uuid,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        f64,
    );
    let rows: Vec<Row> = match sqlx::query_as(crate::sql::OWN_LEASES)
        .bind(scheduler.holder())
        .fetch_all(pool)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not read our probe leases; actors re-lease at their next renewal");
            return;
        }
    };
    let n = rows.len();
    for (instance_id, actor_id, last, remaining) in rows {
        let since = last.and_then(|t| (chrono::Utc::now() - t).to_std().ok());
        let first_in = match since {
            Some(age) if age < args.check_interval => args.check_interval - age,
            _ => Duration::ZERO,
        };
        scheduler.lease(crate::lease::Lease {
            instance_id,
            actor_id,
            interval: args.check_interval,
            lease_for: Duration::from_secs_f64(remaining.max(0.0)),
            first_in,
            unhealthy_after: args.unhealthy_after,
            actor_states: args.actor_states.clone(),
        });
    }
    if n > 0 {
        tracing::info!(
            leases = n,
            holder = scheduler.holder(),
            "adopted the probe leases of our previous run"
        );
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "replica".into())
}

struct LeaderDuties {
    reconciler: Arc<Reconciler>,
    listener: ListenerSettings,
    listener_status: watch::Sender<ListenerStatus>,
    parallelism: usize,
    resync_interval: Duration,
    history_retention: Duration,
}

/// Start the leader duties whenever we are elected; stop them when we are not.
async fn lead_when_elected(
    duties: LeaderDuties,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let duties = Arc::new(duties);
    loop {
        // Wait to be elected.
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let term_stop = stop.child_token();
        let term = term_stop.clone();
        let queue = Arc::new(ReconcileQueue::new());
        let mut handles = vec![
            tokio::spawn(queue.clone().run(
                duties.reconciler.clone(),
                duties.parallelism,
                term.clone(),
            )),
            tokio::spawn(listener::run(
                duties.listener.clone(),
                duties.reconciler.clone(),
                queue.clone(),
                duties.listener_status.clone(),
                term.clone(),
            )),
        ];
        handles.push(tokio::spawn(resync_timer(
            duties.reconciler.clone(),
            queue.clone(),
            duties.resync_interval,
            term.clone(),
        )));
        handles.push(tokio::spawn(prune_timer(
            duties.reconciler.clone(),
            duties.history_retention,
            term.clone(),
        )));
        // Lead until we lose the election or shut down.
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => tracing::warn!("leadership lost: stopping listener and reconciler"),
            _ = stop.cancelled() => {}
        }
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
        match reconciler.full_reconcile(Some(&queue), false).await {
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

/// Old health history, old decisions, Duroxide's finished executions and actors.
async fn prune_timer(reconciler: Arc<Reconciler>, retention: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(config::PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = prune_once(&reconciler, retention).await {
            tracing::warn!(error = %e, "pruning failed");
        }
    }
}

/// One pruning pass (also used by tests and benchmarks).
pub async fn prune_once(reconciler: &Reconciler, retention: Duration) -> anyhow::Result<()> {
    let control = &reconciler.control;
    let history = crate::cms::prune_health_history(&control.pool, retention).await?;
    let decisions = sqlx::query(crate::sql::PRUNE_DECISIONS)
        .bind(retention.as_secs_f64())
        .execute(&control.pool)
        .await?
        .rows_affected();
    let with_old: Vec<String> = sqlx::query_scalar(&crate::sql::with_duroxide_schema(
        crate::sql::ACTORS_WITH_OLD_EXECUTIONS,
        &control.schema,
    ))
    .bind(config::ACTOR_ORCHESTRATION)
    .fetch_all(&control.pool)
    .await?;
    let mut executions = 0;
    if !with_old.is_empty() {
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
        executions,
        finished_actors = deleted,
        "pruned"
    );
    Ok(())
}

async fn poll_fleet(
    reconciler: Arc<Reconciler>,
    gauges: FleetGauges,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match reconciler.fleet().await {
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
                        up: obs.row.health_status == "healthy",
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
                        }),
                );
                gauges.set(entries);
            }
            Err(e) => tracing::warn!(error = %e, "fleet gauges: query failed"),
        }
    }
}

async fn sweep_probes(prober: Arc<Prober>, idle: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::quiet::BURST_WINDOW);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Summaries of per-instance log lines every window; the probe sweep every minute.
                crate::quiet::flush_all();
                ticks = ticks.wrapping_add(1);
                if ticks % 6 == 0 {
                    prober.sweep(idle);
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
