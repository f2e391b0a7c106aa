//! The capacity baseline: the naive Duroxide loop, as toygres' seed runs it — one activity,
//! a durable timer and continue-as-new on every iteration, default runtime options, no
//! extra index, no planner settings. It does the same work per iteration as our actor (the
//! same health check). Its workers run in a child process (`bench naive-worker`) so their
//! CPU is measured apart from the benchmark's own.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{OrchestrationContext, OrchestrationRegistry};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

// The library calls of the naive loop, in one place.
use toygres_actors::actor::register_activities;
use toygres_actors::check::{ActorDeps, CheckInput, CheckOutcome};
use toygres_actors::config::ACTIVITY_HEALTH_CHECK;
use toygres_actors::db::cms_pool;
use toygres_actors::identity::ReplicaId;
use toygres_actors::lease::CheckScheduler;
use toygres_actors::probe::{ProbeSettings, Prober};

/// The naive loop's orchestration name.
pub const NAME: &str = "naive::Actor";
/// The Duroxide schema of the naive loop (apart from the service's).
pub const SCHEMA: &str = "naive_duroxide";

#[derive(Serialize, Deserialize, Clone)]
pub struct Input {
    pub instance_id: uuid::Uuid,
    pub interval_ms: u64,
}

async fn orchestration(ctx: OrchestrationContext, input: Input) -> Result<String, String> {
    let check = CheckInput {
        instance_id: input.instance_id,
        actor_states: vec!["creating".into(), "running".into()],
        consecutive_failures: 0,
        unhealthy_after: 1,
    };
    let out: CheckOutcome = ctx
        .schedule_activity_typed(ACTIVITY_HEALTH_CHECK, &check)
        .await?;
    if let CheckOutcome::Exit { reason } = out {
        return Ok(reason);
    }
    ctx.schedule_timer(Duration::from_millis(input.interval_ms))
        .await;
    ctx.continue_as_new_typed(&input).await
}

/// `bench naive-worker`: runs the naive loop's Duroxide workers against `url` until killed.
pub async fn worker(url: &str, schema: &str) -> Result<()> {
    let store = Arc::new(duroxide_pg::PostgresProvider::new_with_schema(url, Some(schema)).await?);
    let pool = cms_pool(url, 8).await?;
    let prober = Arc::new(Prober::new(ProbeSettings {
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        keep_connections: 0,
        max_concurrent: 64,
    }));
    let deps = Arc::new(ActorDeps {
        pool: pool.clone(),
        prober,
        expect_standby: false,
        writes: toygres_actors::check_writes::CheckWrites::start(
            pool.clone(),
            toygres_actors::cms::CheckCommit::Durable,
        ),
        first_checks: Default::default(),
    });
    // The naive loop uses only the v1 health-check activity; the scheduler stays idle.
    let scheduler = Arc::new(CheckScheduler::new(
        Arc::new(ReplicaId::new("naive")),
        deps.clone(),
        1,
    ));
    let activities = register_activities(ActivityRegistry::builder(), deps, scheduler).build();
    let orchestrations = OrchestrationRegistry::builder()
        .register_typed(NAME, orchestration)
        .build();
    let _rt = duroxide::runtime::Runtime::start_with_store(store, activities, orchestrations).await;
    // Run until killed.
    std::future::pending::<()>().await;
    Ok(())
}

/// The worker child process; killed when dropped.
pub struct Worker(Child);

impl Worker {
    pub fn spawn(url: &str) -> Result<Worker> {
        let child = Command::new(std::env::current_exe()?)
            .args(["naive-worker", url, SCHEMA])
            .env("TOYGRES_ACTORS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Worker(child))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one naive actor for every row and names it in the row (so the health check's
/// fence passes).
pub async fn start_actors(url: &str, pool: &PgPool, interval: Duration) -> Result<()> {
    let store = Arc::new(duroxide_pg::PostgresProvider::new_with_schema(url, Some(SCHEMA)).await?);
    let client = duroxide::Client::new(store);
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM toygres_cms.instances")
        .fetch_all(pool)
        .await?;
    for id in ids {
        let actor = format!("naive-{id}");
        sqlx::query(
            "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(&actor)
        .execute(pool)
        .await?;
        let input = Input {
            instance_id: id,
            interval_ms: interval.as_millis() as u64,
        };
        client
            .start_orchestration(&actor, NAME, serde_json::to_string(&input)?)
            .await?;
    }
    Ok(())
}
