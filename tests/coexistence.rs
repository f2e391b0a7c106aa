//! Living beside the real toygres server: its Duroxide runtime on `toygres_duroxide`, ours on
//! a store of our own.
//!
//! A Duroxide runtime in toygres' role runs in this test process on `toygres_duroxide`: its
//! create-instance orchestration inserts the row, sets it `running` with a connection string,
//! starts toygres' own instance actor `actor-<k8s_name>` (detached) and writes that id on the
//! row, as toygres' create flow does; the legacy actor writes health as toygres' does (an
//! unfenced history row with no replica, and the row's health columns). Our service runs as
//! its own process at default settings, production timers included.

mod support;

use std::sync::Arc;
use std::time::Duration;

use duroxide::runtime::Runtime;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};
use duroxide_pg::PostgresProvider;
use support::{ServiceProc, TestDb, wait_until};

const TOYGRES_SCHEMA: &str = "toygres_duroxide";
const CREATE: &str = "toygres-orchestrations::orchestration::create-instance";
const ACTOR: &str = "toygres-orchestrations::orchestration::instance-actor";
/// The legacy actor's period (toygres' own default is of this order).
const LEGACY_INTERVAL: Duration = Duration::from_secs(30);

#[derive(serde::Serialize, serde::Deserialize)]
struct CreateInput {
    k8s_name: String,
    target: String,
}

/// toygres' server, in miniature: its orchestrations, activities and runtime on its schema.
async fn toygres_server(db: &TestDb) -> (Arc<Runtime>, Client) {
    let provider = Arc::new(
        PostgresProvider::new_with_schema(&db.url, Some(TOYGRES_SCHEMA))
            .await
            .expect("toygres' store"),
    );
    let pool = db.pool.clone();
    let (p1, p2, p3, p4) = (pool.clone(), pool.clone(), pool.clone(), pool);
    let activities = ActivityRegistry::builder()
        .register(
            "cms-create-instance-record",
            move |_: ActivityContext, input: String| {
                let pool = p1.clone();
                async move {
                    let i: CreateInput = serde_json::from_str(&input).map_err(|e| e.to_string())?;
                    sqlx::query(
                        "INSERT INTO toygres_cms.instances
                         (user_name, k8s_name, postgres_version, storage_size_gb, state,
                          create_orchestration_id)
                     VALUES ('toygres', $1, '16', 10, 'creating', 'create-' || $1)
                     ON CONFLICT (k8s_name) DO NOTHING",
                    )
                    .bind(&i.k8s_name)
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(String::new())
                }
            },
        )
        .register(
            "cms-update-instance-state",
            move |_: ActivityContext, input: String| {
                let pool = p2.clone();
                async move {
                    let i: CreateInput = serde_json::from_str(&input).map_err(|e| e.to_string())?;
                    sqlx::query(
                        "UPDATE toygres_cms.instances
                        SET state = 'running', dns_connection_string = $2, updated_at = now()
                      WHERE k8s_name = $1",
                    )
                    .bind(&i.k8s_name)
                    .bind(&i.target)
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(String::new())
                }
            },
        )
        .register(
            "cms-record-instance-actor",
            move |_: ActivityContext, name: String| {
                let pool = p3.clone();
                async move {
                    sqlx::query(
                        "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2
                      WHERE k8s_name = $1",
                    )
                    .bind(&name)
                    .bind(format!("actor-{name}"))
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(String::new())
                }
            },
        )
        .register(
            "cms-record-health-check",
            move |_: ActivityContext, name: String| {
                let pool = p4.clone();
                async move {
                    // As toygres' activities do: unfenced, the database's clock, no replica.
                    sqlx::query(
                        "WITH h AS (
                         INSERT INTO toygres_cms.instance_health_checks
                             (instance_id, status, postgres_version, response_time_ms, checked_at)
                         SELECT id, 'healthy', 'legacy', 1, now()
                           FROM toygres_cms.instances WHERE k8s_name = $1
                         ON CONFLICT DO NOTHING)
                     UPDATE toygres_cms.instances
                        SET health_status = 'healthy', last_health_check = now()
                      WHERE k8s_name = $1",
                    )
                    .bind(&name)
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(String::new())
                }
            },
        )
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            CREATE,
            |ctx: OrchestrationContext, input: String| async move {
                let i: CreateInput = serde_json::from_str(&input).map_err(|e| e.to_string())?;
                ctx.schedule_activity("cms-create-instance-record", input.clone())
                    .await?;
                ctx.schedule_activity("cms-update-instance-state", input.clone())
                    .await?;
                ctx.schedule_orchestration(
                    ACTOR,
                    format!("actor-{}", i.k8s_name),
                    i.k8s_name.clone(),
                );
                ctx.schedule_activity("cms-record-instance-actor", i.k8s_name.clone())
                    .await?;
                Ok("created".to_string())
            },
        )
        .register(
            ACTOR,
            |ctx: OrchestrationContext, name: String| async move {
                ctx.schedule_activity("cms-record-health-check", name.clone())
                    .await?;
                ctx.schedule_timer(LEGACY_INTERVAL).await;
                ctx.continue_as_new(name).await
            },
        )
        .build();
    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    (runtime, Client::new(provider))
}

/// Run our binary with `args` until it exits; its exit code and everything it printed.
fn run_to_exit(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let port = support::free_port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
        .args(["run", "--http", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run toygres-actors");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_work_is_refused_at_start_and_given_back_untouched_later() {
    let db = TestDb::new().await;
    // toygres' create flow, pointed (wrongly) at our default store: a start nobody ran yet.
    let provider = Arc::new(
        PostgresProvider::new_with_schema(&db.url, Some("toygres_actors_duroxide"))
            .await
            .expect("store"),
    );
    Client::new(provider.clone())
        .start_orchestration("create-pg-x", CREATE, "{}")
        .await
        .expect("enqueue a toygres start");

    let (code, text) = run_to_exit(&db, &[]);
    assert_eq!(code, Some(2), "exit code; output:\n{text}");
    assert!(
        text.contains(CREATE),
        "the message names the foreign orchestration:\n{text}"
    );
    assert!(
        text.contains("--duroxide-schema"),
        "the message names the flag:\n{text}"
    );
    // Nothing of ours ran there: the item was never fetched, no trigger of ours was added.
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempt_count FROM toygres_actors_duroxide.orchestrator_queue
          WHERE instance_id = 'create-pg-x'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the start is still queued");
    assert_eq!(attempts, 0);
    let ours: i64 = db
        .scalar_i64(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'toygres_actors_wake'
               AND tgrelid = 'toygres_actors_duroxide.orchestrator_queue'::regclass",
        )
        .await;
    assert_eq!(ours, 0, "our wake trigger was installed on a refused store");

    // A store of its own (empty): starts as it always did.
    let mut svc =
        ServiceProc::start_production(&db.url, &["--duroxide-schema", "toygres_actors_own"]).await;
    wait_until("the service leads", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;

    // Another runtime's start enqueued in our running store later: our dispatcher gives it
    // back at once with its attempt uncounted, the gauge shows it, and the store is held off
    // until it is gone.
    let ours = Arc::new(
        PostgresProvider::new_with_schema(&db.url, Some("toygres_actors_own"))
            .await
            .expect("our store"),
    );
    Client::new(ours)
        .start_orchestration("create-pg-y", CREATE, "{}")
        .await
        .expect("enqueue a toygres start in our store");
    wait_until(
        "the foreign start given back",
        Duration::from_secs(30),
        || async {
            (support::metric(&svc, "toygres_actors_store_foreign_given_back_total", &[]).await
                >= 1.0
                && support::metric(&svc, "toygres_actors_store_foreign_items", &[]).await >= 1.0)
                .then_some(())
        },
    )
    .await;
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempt_count FROM toygres_actors_own.orchestrator_queue
          WHERE instance_id = 'create-pg-y'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the foreign start is still queued");
    assert_eq!(
        attempts, 0,
        "our dispatcher counted an attempt of foreign work"
    );
    // Someone clears it: the dispatchers fetch again, and a new row's actor takes its turn.
    for table in ["orchestrator_queue", "instances"] {
        sqlx::query(&format!(
            "DELETE FROM toygres_actors_own.{table} WHERE instance_id = 'create-pg-y'"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    wait_until(
        "the store is clean again",
        Duration::from_secs(30),
        || async {
            (support::metric(&svc, "toygres_actors_store_foreign_items", &[]).await == 0.0)
                .then_some(())
        },
    )
    .await;
    db.insert_instance(
        "pg-after-foreign",
        "running",
        Some(&support::reachable_target()),
    )
    .await;
    wait_until(
        "the new actor's first turn",
        Duration::from_secs(30),
        || async {
            let id = db.actor_id("pg-after-foreign").await?;
            let turned = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM toygres_actors_own.executions WHERE instance_id = '{id}'"
                ))
                .await;
            (turned > 0).then_some(())
        },
    )
    .await;
    assert_eq!(svc.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beside_toygres_every_instance_ends_with_one_actor_ours_and_no_toygres_work_is_fetched() {
    const N: usize = 100;
    let db = TestDb::new().await;
    let target = support::reachable_target();
    let svc = ServiceProc::start_production(&db.url, &[]).await;
    wait_until("the service leads", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;
    let (runtime, client) = toygres_server(&db).await;

    for i in 0..N {
        let input = serde_json::to_string(&CreateInput {
            k8s_name: format!("pg-co-{i}"),
            target: target.clone(),
        })
        .unwrap();
        client
            .start_orchestration(&format!("create-pg-co-{i}"), CREATE, input)
            .await
            .expect("start a create");
    }

    // Every toygres create completes.
    let started = std::time::Instant::now();
    wait_until("toygres' creates complete", Duration::from_secs(120), || async {
        if started.elapsed() > Duration::from_secs(20) {
            let states: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
                "SELECT i.orchestration_name, e.status, count(*), max(e.output)
                   FROM toygres_duroxide.instances i
                   JOIN toygres_duroxide.executions e
                     ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                  GROUP BY 1, 2",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap_or_default();
            eprintln!("toygres' store: {states:?}");
        }
        let done = db
            .scalar_i64(
                "SELECT count(*) FROM toygres_duroxide.instances i
                   JOIN toygres_duroxide.executions e
                     ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                  WHERE i.orchestration_name = 'toygres-orchestrations::orchestration::create-instance'
                    AND e.status = 'Completed'",
            )
            .await;
        (done == N as i64).then_some(())
    })
    .await;

    // Every instance ends with exactly one live actor, ours, named on its row; no legacy
    // actor lives on.
    wait_until(
        "one live actor per instance, ours; every legacy actor ended",
        Duration::from_secs(90),
        || async {
            let ours_named = db
                .scalar_i64(
                    "SELECT count(*) FROM toygres_cms.instances c
                       JOIN toygres_actors_duroxide.instances i
                         ON i.instance_id = c.instance_actor_orchestration_id
                       JOIN toygres_actors_duroxide.executions e
                         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                      WHERE e.status = 'Running'
                        AND c.instance_actor_orchestration_id LIKE 'actor-' || c.id::text || '-%'",
                )
                .await;
            let live_ours = support::alive_in(&db, "toygres_actors_duroxide", "toygres::InstanceActor").await;
            let live_legacy = support::alive_in(&db, TOYGRES_SCHEMA, ACTOR).await;
            if started.elapsed() > Duration::from_secs(60) {
                eprintln!("ours named {ours_named}, ours live {live_ours}, legacy live {live_legacy}");
            }
            (ours_named == N as i64 && live_ours == N as i64 && live_legacy == 0).then_some(())
        },
    )
    .await;

    // Every legacy actor was cancelled within one check interval of its start.
    let slowest: f64 = sqlx::query_scalar(
        "SELECT max(extract(epoch FROM (e.completed_at - i.created_at)))::float8
           FROM toygres_duroxide.instances i
           JOIN toygres_duroxide.executions e
             ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE i.orchestration_name = 'toygres-orchestrations::orchestration::instance-actor'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("legacy actors' lifetimes");
    let cancelled = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_duroxide.instances i
               JOIN toygres_duroxide.executions e
                 ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
              WHERE i.orchestration_name = 'toygres-orchestrations::orchestration::instance-actor'
                AND e.status IN ('Cancelled', 'Failed')",
        )
        .await;
    eprintln!("legacy actors ended: {cancelled} of {N}, slowest {slowest:.2} s after its start");
    assert_eq!(
        cancelled, N as i64,
        "every legacy actor ends, by our cancel"
    );
    assert!(
        slowest <= LEGACY_INTERVAL.as_secs_f64(),
        "a legacy actor lived {slowest:.1} s (more than one check interval)"
    );

    // No legacy actor checked again after our cancel: each wrote at most the one health row
    // its first turn scheduled. (That activity may land just after the cancel: toygres'
    // runtime finishes an activity it already scheduled, and its write is toygres' own,
    // unfenced; the next would come a check interval later, and none does.)
    let again = db
        .scalar_i64(
            "SELECT count(*) FROM (
                SELECT h.instance_id FROM toygres_cms.instance_health_checks h
                 WHERE h.replica IS NULL
                 GROUP BY h.instance_id HAVING count(*) > 1) x",
        )
        .await;
    assert_eq!(
        again, 0,
        "a legacy actor checked again after it was cancelled"
    );

    // One `adopt` decision per instance, with both ids.
    let adopts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.k8s_name, count(d.*) FROM toygres_cms.instances c
           LEFT JOIN toygres_actors.decisions d
             ON d.instance_id = c.id AND d.action = 'adopt' AND d.error IS NULL
                AND d.old_actor_id = 'actor-' || c.k8s_name AND d.new_actor_id IS NOT NULL
          GROUP BY c.k8s_name HAVING count(d.*) <> 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        adopts.is_empty(),
        "instances without exactly one adopt decision: {adopts:?}"
    );

    // Our runtime never fetched toygres' work: nothing given back, no "not registered".
    let given_back = support::metric(
        &svc,
        "toygres_actors_store_foreign_given_back_total",
        &["queue=\"orchestrator\""],
    )
    .await;
    assert_eq!(given_back, 0.0);
    let log = svc.log_text();
    assert!(
        !log.contains("not registered"),
        "our runtime met toygres' work"
    );
    // `explain` shows the adoption.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
        .args(["explain", "pg-co-7"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("adopt"),
        "explain shows the adoption:\n{text}"
    );
    runtime.shutdown(None).await;
}
