//! The service (`toygres-actors run`): wires the pieces and shuts them down in order.
//!
//! Every replica runs: the Duroxide runtime (actors' turns and health checks), the fleet
//! gauge poller, the probe connection sweeper, and the HTTP server. The replica that wins
//! the election ([`crate::leader`]) also runs the leader duties: the listener, the
//! reconcile queue, the resync timer and the pruner. Losing leadership stops those duties;
//! winning it again starts them afresh (with a full reconcile, as after any reconnect).
//!
//! Every replica also runs its liveness service ([`crate::replica`]): heartbeat, claiming
//! the probe leases of replicas that are gone, balancing, picking up its own leases.
//!
//! Shutdown (SIGTERM, SIGINT/Ctrl-C): leader duties stop and the term is resigned first (no
//! new Duroxide calls; a follower leads at its next tick), then the probe leases are handed
//! to the live replicas, then the Duroxide runtime drains, then HTTP, then the private
//! PostgreSQL (if we started one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiAuth, HttpLimits, Shared};
use crate::check::ActorDeps;
use crate::check_writes::CheckWrites;
use crate::config;
use crate::db::Database;
use crate::duro::{self, ActorControl, ActorSettings, RuntimeSettings};
use crate::duties::{LeaderDuties, lead_when_elected, poll_fleet, sweep_probes};
use crate::identity::ReplicaId;
use crate::listener::{ListenerSettings, ListenerStatus};
use crate::metrics::{self, FleetGauges};
use crate::probe::{ProbeSettings, Prober};
use crate::reconcile::Reconciler;
use crate::replica::{ProbeRules, Replica};
use crate::settings::{GlobalArgs, ReadAccess, RunArgs};
use crate::snapshot::Snapshots;

/// A started service.
pub struct RunningService {
    pub shared: Shared,
    pub http_addr: SocketAddr,
    stop: CancellationToken,
    /// Stops the election and the leader duties (first, on shutdown).
    lead_stop: CancellationToken,
    lead_tasks: Vec<JoinHandle<()>>,
    /// Hands the probe leases over on shutdown.
    replica: Arc<Replica>,
    tasks: Vec<JoinHandle<()>>,
    runtime: Arc<duroxide::runtime::Runtime>,
    /// Held to keep a private cluster alive until the very end.
    database: Option<Database>,
}

/// Start everything; returns once the HTTP server listens. The steps, in order: the
/// database (pool, clock, migrations, store), the checks (prober, scheduler), the Duroxide
/// runtime, the reconciler and its priority lane, this replica's liveness, the background
/// tasks every replica runs, the election and the leader duties, the HTTP server.
pub async fn start(
    global: &GlobalArgs,
    args: &RunArgs,
    database: Database,
) -> anyhow::Result<RunningService> {
    let prometheus = metrics::install();
    metrics::initialise_series();
    // The name (a pod's name, a host's name) plus a random epoch per process: see
    // `crate::identity`. Two processes with one name: the newest wins.
    let replica = args.replica.clone().unwrap_or_else(hostname);
    let id = Arc::new(ReplicaId::new(replica.clone()));
    let url = database.url.clone();

    let (pool, store) = open_database(global, args, &url).await?;
    let Checks {
        prober,
        deps,
        scheduler,
    } = checks(args, &pool, &id, store.first_checks())?;
    let runtime = start_runtime(args, &store, (&deps, &scheduler)).await;
    let reconciler = reconciler((global, args), &url, &store, (&deps, &scheduler), &replica);
    // Explicit restarts run on a thread, runtime and connections of their own.
    let lane = crate::reconcile::PriorityLane::start(reconciler.clone(), &url, &deps).await?;
    let liveness = Arc::new(Replica::new(
        pool.clone(),
        scheduler.clone(),
        ProbeRules {
            interval: args.check_interval,
            unhealthy_after: args.unhealthy_after,
            actor_states: args.actor_states.clone(),
        },
    ));
    liveness.register().await?;

    let stop = CancellationToken::new();
    // Leader duties and the election stop first on shutdown.
    let lead_stop = CancellationToken::new();
    let fleet = FleetGauges::new(args.per_instance_metrics, args.check_interval)
        .with_lease_renew(args.lease_renew_interval);
    let snapshots = Snapshots::new();
    let mut tasks = background(
        args,
        Background {
            reconciler: &reconciler,
            fleet: &fleet,
            snapshots: &snapshots,
            scheduler: &scheduler,
            store,
            pool: &pool,
            liveness: &liveness,
            prober,
        },
        &stop,
    );
    let (leading_tx, leading_rx) = watch::channel(None);
    let (listener_tx, listener_rx) = watch::channel(ListenerStatus::default());
    let lead_tasks = if args.worker_only {
        Vec::new()
    } else {
        leadership(
            &url,
            &id,
            &liveness,
            LeaderDuties {
                reconciler: reconciler.clone(),
                listener: ListenerSettings {
                    url: url.clone(),
                    ping_interval: args.ping_interval,
                    ping_timeout: config::DEFAULT_PING_TIMEOUT.min(args.ping_interval),
                    control_notify: args.control_notify,
                },
                listener_status: listener_tx,
                parallelism: args.reconcile_parallelism,
                resync_interval: args.resync_interval,
                history_retention: args.history_retention,
                lane: Some(lane.clone()),
            },
            (leading_tx, leading_rx.clone()),
            &lead_stop,
        )
    };

    let shared = Shared {
        pool,
        reconciler,
        fleet,
        snapshots,
        prometheus,
        auth: ApiAuth {
            api_token: args.api_token.clone(),
            read_token: args.api_read_token.clone(),
            reads: args.read_access(),
        },
        leading: leading_rx,
        liveness: liveness.liveness(),
        listener: listener_rx,
        worker_only: args.worker_only,
        lane: Some(lane.clone()),
    };
    let (http_addr, http_task) = serve_http(args, shared.clone(), &stop).await?;
    tasks.push(http_task);
    tracing::info!(%http_addr, replica = %replica, worker_only = args.worker_only, "toygres-actors running");
    Ok(RunningService {
        shared,
        http_addr,
        stop,
        lead_stop,
        lead_tasks,
        replica: liveness,
        tasks,
        runtime,
        database: Some(database),
    })
}

/// The CMS pool (the database's clock read, migrations applied) and the Duroxide store.
async fn open_database(
    global: &GlobalArgs,
    args: &RunArgs,
    url: &str,
) -> anyhow::Result<(sqlx::PgPool, Arc<crate::store::Store>)> {
    let pool = crate::db::watched_cms_pool(url, args.cms_pool_max).await?;
    // The database's clock decides every age and expiry (crate::clock).
    crate::clock::sync(&pool).await?;
    crate::db::migrate(&pool).await?;
    let store = duro::open_store(
        url,
        &global.duroxide_schema,
        args.duroxide_async_commit,
        &pool,
    )
    .await?;
    store.set_waiting(args.duroxide_wait);
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
    Ok((pool, store))
}

/// What checks run with.
struct Checks {
    prober: Arc<Prober>,
    /// The actors' dependencies (pool, prober, role expected).
    deps: Arc<ActorDeps>,
    /// The probe scheduler: runs the checks of the leases this replica holds.
    scheduler: Arc<crate::lease::CheckScheduler>,
}

fn checks(
    args: &RunArgs,
    pool: &sqlx::PgPool,
    id: &Arc<ReplicaId>,
    first_checks: &Arc<crate::first_checks::FirstChecks>,
) -> anyhow::Result<Checks> {
    let prober = Arc::new(
        Prober::new(ProbeSettings {
            connect_timeout: args.probe_connect_timeout,
            query_timeout: args.probe_query_timeout,
            keep_connections: args.probe_keep_connections,
            max_concurrent: args.probe_concurrency,
        })
        .with_default_root_cert(args.probe_ssl_root_cert.as_deref())?,
    );
    let deps = Arc::new(ActorDeps {
        pool: pool.clone(),
        prober: prober.clone(),
        expect_standby: args.expect_standby,
        writes: CheckWrites::start(pool.clone(), args.check_commit),
        first_checks: first_checks.clone(),
    });
    let scheduler = Arc::new(crate::lease::CheckScheduler::new(
        id.clone(),
        deps.clone(),
        args.probe_concurrency,
    ));
    Ok(Checks {
        prober,
        deps,
        scheduler,
    })
}

/// The Duroxide runtime: the actors' turns and their activities.
async fn start_runtime(
    args: &RunArgs,
    store: &Arc<crate::store::Store>,
    (deps, scheduler): (&Arc<ActorDeps>, &Arc<crate::lease::CheckScheduler>),
) -> Arc<duroxide::runtime::Runtime> {
    duro::start_runtime(
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
    .await
}

/// The reconciler: actor control (eager first checks when asked), fenced by the term, with
/// toygres' store to adopt from and the restart limits.
fn reconciler(
    (global, args): (&GlobalArgs, &RunArgs),
    url: &str,
    store: &Arc<crate::store::Store>,
    (deps, scheduler): (&Arc<ActorDeps>, &Arc<crate::lease::CheckScheduler>),
    replica: &str,
) -> Arc<Reconciler> {
    let control = ActorControl::new(
        deps.pool.clone(),
        store.clone(),
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
        control.with_eager_first_check(deps.clone(), scheduler.clone())
    } else {
        control
    };
    let legacy = global
        .legacy_schema()
        .map(|schema| crate::legacy::Legacy::new(url, schema));
    Arc::new(
        Reconciler::new(control, args.stale_after, replica.to_string())
            .fenced()
            .with_legacy(legacy)
            .with_restart_limits(args.restart_min_interval, args.restart_rate)
            .with_heal_pause_share(args.heal_pause_share),
    )
}

/// What the background tasks of every replica work with.
struct Background<'a> {
    reconciler: &'a Arc<Reconciler>,
    fleet: &'a FleetGauges,
    snapshots: &'a Snapshots,
    scheduler: &'a Arc<crate::lease::CheckScheduler>,
    store: Arc<crate::store::Store>,
    pool: &'a sqlx::PgPool,
    liveness: &'a Arc<Replica>,
    prober: Arc<Prober>,
}

/// The tasks every replica runs: the fleet poll, the probe scheduler, the store's wake-up
/// listener, its liveness, the probe and pool sweeper.
fn background(args: &RunArgs, b: Background<'_>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    let pools = vec![
        crate::db::PoolTrimmer::new(b.pool.clone(), "cms"),
        crate::db::PoolTrimmer::new(b.store.inner().pool().clone(), "duroxide"),
    ];
    vec![
        tokio::spawn(poll_fleet(
            b.reconciler.clone(),
            b.fleet.clone(),
            b.snapshots.clone(),
            args.fleet_poll_interval,
            stop.clone(),
        )),
        tokio::spawn(b.scheduler.clone().run(stop.clone())),
        tokio::spawn(crate::store::listen(b.store, b.pool.clone(), stop.clone())),
        tokio::spawn(b.liveness.clone().run(stop.clone())),
        tokio::spawn(sweep_probes(
            b.prober,
            args.check_interval * 3,
            pools,
            stop.clone(),
        )),
    ]
}

/// The election, and the leader duties while elected. The election stops on shutdown, and
/// when a newer process took our name.
fn leadership(
    url: &str,
    id: &Arc<ReplicaId>,
    liveness: &Arc<Replica>,
    duties: LeaderDuties,
    (leading_tx, leading_rx): (
        watch::Sender<Option<crate::identity::Term>>,
        watch::Receiver<Option<crate::identity::Term>>,
    ),
    lead_stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let elect_stop = lead_stop.child_token();
    let (superseded, elect, done) = (liveness.superseded(), elect_stop.clone(), lead_stop.clone());
    vec![
        tokio::spawn(async move {
            tokio::select! {
                _ = superseded.cancelled() => elect.cancel(),
                _ = done.cancelled() => {}
            }
        }),
        tokio::spawn(crate::leader::run(
            url.to_string(),
            id.clone(),
            leading_tx,
            elect_stop,
        )),
        tokio::spawn(lead_when_elected(duties, leading_rx, lead_stop.clone())),
    ]
}

/// Bind `--http` and serve the API until `stop`; warn when a public bind is open.
async fn serve_http(
    args: &RunArgs,
    shared: Shared,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.http))?;
    let http_addr = listener.local_addr()?;
    let app = crate::api::router(
        shared,
        HttpLimits {
            timeout: args.http_timeout,
            concurrency: args.http_concurrency,
        },
    );
    let http_stop = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    if args.insecure_no_auth && !http_addr.ip().is_loopback() {
        if args.api_token.is_none() {
            tracing::warn!(%http_addr, "serving the API on a non-loopback address without a token (--insecure-no-auth): anyone who reaches this port can restart and cancel actors");
        }
        if args.read_access() == ReadAccess::Open {
            tracing::warn!(%http_addr, "serving the fleet reads on a non-loopback address without a token (--insecure-no-auth): anyone who reaches this port can list every instance");
        }
    }
    Ok((http_addr, task))
}

impl RunningService {
    /// Stop everything in order.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        // 1. No new decisions: leader duties stop, the term is resigned.
        self.lead_stop.cancel();
        for t in self.lead_tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a leader task did not stop within 10 s");
            }
        }
        if let Some(lane) = &self.shared.lane {
            lane.stop().await;
        }
        // 2. Probe leases to the live replicas, before anything drains.
        if let Err(e) = self.replica.hand_over().await {
            tracing::warn!(error = %e, "could not hand the probe leases over; the live replicas claim them after the heartbeat TTL");
        }
        // 3. Everything else, then Duroxide drains.
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

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "replica".into())
}
