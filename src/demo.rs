//! `toygres-actors demo`: a private PostgreSQL, a sample fleet, the service, and the story
//! told on screen with a status table after each step.
//!
//! The fleet: three real databases on the private cluster (healthy instances), one
//! instance pointing at a closed port (unhealthy), one without a connection string yet
//! (unknown). Then: instances created → actors started → health flowing; an instance
//! deleted → actor cancelled; a manual `NOTIFY` restart → new actor id; the listener's
//! connection killed while a new instance is created → reconnect and catch-up. Ctrl-C at
//! any point stops everything and cleans up (the service, then the cluster). Log lines go
//! to [`log_file`], not between the lines of the story.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use crate::service::RunningService;
use crate::settings::{DemoArgs, GlobalArgs, RunArgs};

/// The demo's own database on the private cluster (recreated at every run).
const DEMO_DATABASE: &str = "toygres_demo";

pub async fn run(global: &GlobalArgs, args: &DemoArgs) -> anyhow::Result<i32> {
    if global.database_url.is_some() {
        println!("note: `demo` always runs on a private cluster; DATABASE_URL is ignored.");
    }
    let started = Instant::now();
    // The story goes to stdout; log lines would interleave with it, so they go to a file.
    let log = log_file(global);
    crate::logging::to_file(&log)
        .map_err(|e| anyhow::anyhow!("cannot write the demo log {}: {e}", log.display()))?;
    println!("(log lines of this run go to {})", log.display());
    say("Starting a private PostgreSQL", "");
    let opts = EmbeddedOptions::persistent(global.data_dir.join("pg"));
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
    let admin = crate::db::cms_pool(&pg.url("postgres"), 2).await?;
    for db in [DEMO_DATABASE, "demo_alpha", "demo_beta", "demo_gamma"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let url = pg.url(DEMO_DATABASE);
    println!(
        "  cluster on 127.0.0.1:{} (data under {})",
        pg.port(),
        pg.data_dir().display()
    );

    let mut run_args = RunArgs::from_env()?;
    run_args.check_interval = args.interval;
    run_args.stale_after = args.interval * 10;
    run_args.resync_interval = Duration::from_secs(10);
    run_args.fleet_poll_interval = Duration::from_secs(1);
    run_args.poll_interval = Duration::from_millis(20);
    run_args.lease_renew_interval = args.interval * 5;
    // The story restarts an actor a few seconds after starting it.
    run_args.restart_min_interval = args.interval;
    // The default port may be taken by a running service: use any free one then.
    if std::net::TcpListener::bind(run_args.http).is_err() {
        run_args.http = "127.0.0.1:0".parse()?;
    }
    let database = crate::db::Database {
        url: url.clone(),
        embedded: Some(pg),
    };
    say(
        "Starting the service",
        "migrations, Duroxide runtime, leader election, listener",
    );
    let service = crate::service::start(global, &run_args, database).await?;
    println!(
        "  HTTP on http://{}  (try /api/actors and /metrics)",
        service.http_addr
    );
    let pool = service.shared.pool.clone();

    let story = story(&service, &pool, args);
    let outcome = tokio::select! {
        r = story => r,
        _ = crate::service::wait_for_signal() => {
            println!("\ninterrupted: stopping");
            Ok(())
        }
    };
    if outcome.is_ok() && args.stay {
        println!("\nThe service keeps running (Ctrl-C to stop).");
        let live = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(list) = crate::ops::list(&service.shared.reconciler, None).await {
                    print!("\n{}", crate::ops::render_table(&list));
                }
            }
        };
        tokio::select! {
            _ = live => {}
            _ = crate::service::wait_for_signal() => {}
        }
    }
    say("Stopping", "service, then the private PostgreSQL");
    service.shutdown().await;
    outcome?;
    println!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(0)
}

/// Where `demo` writes its log lines: `demo.log` in the data directory.
pub fn log_file(global: &GlobalArgs) -> std::path::PathBuf {
    global.data_dir.join("demo.log")
}

fn say(step: &str, detail: &str) {
    if detail.is_empty() {
        println!("\n== {step}");
    } else {
        println!("\n== {step} — {detail}");
    }
}

async fn table(service: &RunningService) -> anyhow::Result<()> {
    let list = crate::ops::list(&service.shared.reconciler, None).await?;
    print!("{}", crate::ops::render_table(&list));
    Ok(())
}

/// Poll `cond` every 100 ms until it holds, or fail after `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await? {
        if Instant::now() > deadline {
            anyhow::bail!("demo step timed out: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn actor_of(pool: &PgPool, name: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT instance_actor_orchestration_id FROM toygres_cms.instances WHERE k8s_name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?
    .flatten())
}

async fn insert(
    pool: &PgPool,
    name: &str,
    state: &str,
    conn: Option<String>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO toygres_cms.instances
             (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id,
              dns_name, dns_connection_string)
         VALUES ('demo', $1, '16', 10, $2::text::toygres_cms.instance_state, 'demo-create', $1 || '.demo.local', $3)",
    )
    .bind(name)
    .bind(state)
    .bind(conn)
    .execute(pool)
    .await?;
    Ok(())
}

/// The story's steps, in order, each waiting until what it shows has happened.
async fn story(service: &RunningService, pool: &PgPool, args: &DemoArgs) -> anyhow::Result<()> {
    let story = Story::new(service, pool, args)?;
    story.instances_created().await?;
    story.health_flowing().await?;
    story.instance_deleted().await?;
    story.manual_restart().await?;
    story.listener_killed().await?;
    story.fleet_now().await
}

/// What every step of the story works with.
struct Story<'a> {
    service: &'a RunningService,
    pool: &'a PgPool,
    args: &'a DemoArgs,
    /// The private cluster's port, where the healthy instances' databases are.
    port: u16,
    /// A loopback port nothing listens on: the unhealthy instance's target.
    closed: u16,
    /// How long a step may take before the demo gives up.
    patience: Duration,
}

impl<'a> Story<'a> {
    fn new(
        service: &'a RunningService,
        pool: &'a PgPool,
        args: &'a DemoArgs,
    ) -> anyhow::Result<Self> {
        Ok(Story {
            service,
            pool,
            args,
            port: service.shared.pool.connect_options().get_port(),
            closed: std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
            patience: Duration::from_secs(20),
        })
    }

    /// A connection string to `db` on the private cluster. A password in every one: it must
    /// never show up on screen or in logs.
    fn conn(&self, db: &str) -> Option<String> {
        Some(format!(
            "postgres://toygres:demo-secret-pw@127.0.0.1:{}/{db}",
            self.port
        ))
    }

    async fn instances_created(&self) -> anyhow::Result<()> {
        let pool = self.pool;
        say(
            "1. Instances created",
            "INSERT INTO toygres_cms.instances … (the triggers NOTIFY the service)",
        );
        insert(pool, "pg-alpha", "running", self.conn("demo_alpha")).await?;
        insert(pool, "pg-beta", "running", self.conn("demo_beta")).await?;
        insert(pool, "pg-gamma", "creating", self.conn("demo_gamma")).await?;
        insert(
            pool,
            "pg-broken",
            "running",
            Some(format!(
                "postgres://toygres:demo-secret-pw@127.0.0.1:{}/postgres?connect_timeout=2",
                self.closed
            )),
        )
        .await?;
        insert(pool, "pg-provisioning", "creating", None).await?;
        until("actors started", self.patience, || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_cms.instances WHERE instance_actor_orchestration_id IS NOT NULL",
            )
            .fetch_one(pool)
            .await?;
            Ok(n == 5)
        })
        .await
    }

    async fn health_flowing(&self) -> anyhow::Result<()> {
        let pool = self.pool;
        say(
            "2. Actors started, health flowing",
            "each actor probes, writes health, sleeps on a durable timer",
        );
        until(
            "two checks each",
            self.patience + self.args.interval * 3,
            || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT instance_id FROM toygres_cms.instance_health_checks
                                    GROUP BY instance_id HAVING count(*) >= 2) x",
                )
                .fetch_one(pool)
                .await?;
                Ok(n == 5)
            },
        )
        .await?;
        table(self.service).await
    }

    async fn instance_deleted(&self) -> anyhow::Result<()> {
        let pool = self.pool;
        say(
            "3. An instance deleted",
            "DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-beta'",
        );
        let beta_actor = actor_of(pool, "pg-beta").await?.unwrap_or_default();
        sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-beta'")
            .execute(pool)
            .await?;
        until("actor cancelled", self.patience, || async {
            Ok(!self
                .service
                .shared
                .reconciler
                .control
                .actor_state(&beta_actor)
                .await?
                .is_live())
        })
        .await?;
        println!("  actor {beta_actor} is gone");
        Ok(())
    }

    async fn manual_restart(&self) -> anyhow::Result<()> {
        let pool = self.pool;
        say(
            "4. A manual restart",
            "NOTIFY toygres_actor_control, 'restart pg-alpha'",
        );
        let before = actor_of(pool, "pg-alpha").await?.unwrap_or_default();
        sqlx::query("NOTIFY toygres_actor_control, 'restart pg-alpha'")
            .execute(pool)
            .await?;
        until("new actor id", self.patience, || async {
            Ok(actor_of(pool, "pg-alpha")
                .await?
                .is_some_and(|a| a != before))
        })
        .await?;
        println!(
            "  pg-alpha: {before}\n         → {}",
            actor_of(pool, "pg-alpha").await?.unwrap_or_default()
        );
        Ok(())
    }

    async fn listener_killed(&self) -> anyhow::Result<()> {
        let pool = self.pool;
        say(
            "5. The listener's connection killed",
            "pg_terminate_backend(listener) while pg-delta is created",
        );
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'toygres-actors-listener'",
        )
        .execute(pool)
        .await?;
        insert(pool, "pg-delta", "running", self.conn("demo_alpha")).await?;
        until(
            "listener back and pg-delta caught up",
            self.patience,
            || async {
                let connected = self.service.shared.listener.borrow().connected;
                let checks: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM toygres_cms.instance_health_checks h
               JOIN toygres_cms.instances i ON i.id = h.instance_id WHERE i.k8s_name = 'pg-delta'",
                )
                .fetch_one(pool)
                .await?;
                Ok(connected && checks >= 1)
            },
        )
        .await?;
        let reconnects = self.service.shared.listener.borrow().reconnects;
        println!(
            "  listener reconnected ({reconnects} reconnect(s)); the reconcile after it picked up pg-delta"
        );
        Ok(())
    }

    async fn fleet_now(&self) -> anyhow::Result<()> {
        say("6. The fleet now", "");
        tokio::time::sleep(self.args.interval).await;
        table(self.service).await
    }
}
