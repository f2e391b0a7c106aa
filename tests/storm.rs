//! Storms take the set-based path: many queued hints are reconciled in batches, each one
//! transaction (actor ids swapped compare-and-set, starts enqueued, leases taken, decisions
//! recorded), so a crash in the middle of a batch leaves all of it or none of it.

mod support;

use std::time::Duration;

use support::{ServiceProc, TestDb, converged, metric, wait_until};

const T: Duration = Duration::from_secs(120);

/// `n` instances `pg-storm-<i>` in one transaction, `creating` without a connection string
/// (their actors report `unknown`: this is about the reconcile, not about probing).
async fn insert_storm(db: &TestDb, n: i32) {
    sqlx::query(
        "INSERT INTO toygres_cms.instances
             (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id)
         SELECT 'tester', 'pg-storm-' || g, '16', 10, 'creating', 'create-1'
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&db.pool)
    .await
    .expect("insert the storm");
}

/// Rows whose current actor has no `start` decision naming it, and rows with more than one
/// `start` decision: both must be none.
async fn undecided_and_doubly_started(db: &TestDb) -> (i64, i64) {
    let undecided = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_cms.instances c
              WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.decisions d
                                 WHERE d.instance_id = c.id AND d.action = 'start'
                                   AND d.new_actor_id = c.instance_actor_orchestration_id)",
        )
        .await;
    let doubled = db
        .scalar_i64(
            "SELECT count(*) FROM (SELECT instance_id FROM toygres_actors.decisions
                                    WHERE action = 'start' GROUP BY 1 HAVING count(*) > 1) x",
        )
        .await;
    (undecided, doubled)
}

/// Wait until every row's actor has its `start` decision (a per-instance start records it
/// just after its commit), then return how many instances were started twice (must be 0).
async fn doubly_started_once_decided(db: &TestDb) -> i64 {
    wait_until("a start decision for every actor", T, || async {
        let (undecided, doubled) = undecided_and_doubly_started(db).await;
        (undecided == 0).then_some(doubled)
    })
    .await
}

/// A metric of the service, once it reaches `at_least` (counters are bumped just after the
/// commits the test may already see).
async fn metric_at_least(svc: &ServiceProc, name: &str, labels: &[&str], at_least: f64) -> f64 {
    let what = format!("{name} {labels:?} ≥ {at_least}");
    wait_until(&what, Duration::from_secs(10), || async {
        let v = metric(svc, name, labels).await;
        (v >= at_least).then_some(v)
    })
    .await
}

/// 1,000 rows inserted in one transaction: started in batches (the metrics say so), each
/// with exactly one `start` decision naming the actor its row names, and every one leased
/// and checked at once (a first health row) without waiting for Duroxide's first turn.
#[tokio::test]
async fn a_burst_is_started_in_batches_with_a_decision_for_every_start() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &["--check-interval", "30s", "--stale-after", "5m"]).await;
    insert_storm(&db, 1000).await;
    converged(&db, T).await;
    // At least 900 of the 1,000 in batches (the first hints may go one by one before the
    // storm builds up), in at most 100 batches.
    metric_at_least(
        &svc,
        "toygres_actors_reconcile_batched_total",
        &["action=\"start\""],
        900.0,
    )
    .await;
    let batches = metric_at_least(&svc, "toygres_actors_reconcile_batches_total", &[], 1.0).await;
    assert!(
        batches <= 100.0,
        "{batches} batches for 1,000 rows: not batched"
    );
    assert_eq!(doubly_started_once_decided(&db).await, 0);
    wait_until("every instance checked once", T, || async {
        let unchecked = db
            .scalar_i64(
                "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NULL",
            )
            .await;
        (unchecked == 0).then_some(())
    })
    .await;
    let leased = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_actors.probe_leases l
               JOIN toygres_cms.instances c
                 ON c.id = l.instance_id AND c.instance_actor_orchestration_id = l.actor_id",
        )
        .await;
    assert_eq!(leased, 1000, "every started actor's lease names it");
    assert_eq!(support::doubled_live_actors(&db).await, 0);
}

/// 1,000 rows deleted in one statement, and 500 set `stopped`: the deleted rows' actors are
/// removed from Duroxide in batches (decision `delete`), the stopped rows' actors cancelled
/// in batches (decision `cancel`), nothing left running or queued.
#[tokio::test]
async fn a_delete_and_stop_storm_is_cancelled_in_batches() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &["--check-interval", "30s", "--stale-after", "5m"]).await;
    insert_storm(&db, 1500).await;
    converged(&db, T).await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET state = 'stopped' WHERE substr(k8s_name, 10)::int <= 500",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM toygres_cms.instances WHERE substr(k8s_name, 10)::int > 500")
        .execute(&db.pool)
        .await
        .unwrap();
    converged(&db, T).await;
    metric_at_least(
        &svc,
        "toygres_actors_reconcile_batched_total",
        &["action=\"cancel\""],
        450.0,
    )
    .await;
    metric_at_least(
        &svc,
        "toygres_actors_reconcile_batched_total",
        &["action=\"delete\""],
        900.0,
    )
    .await;
    // A per-instance cancel records its decision just after its commit: wait for it.
    wait_until("a cancel or delete decision for every actor", T, || async {
        let undecided = db
            .scalar_i64(
                "SELECT count(*) FROM (SELECT DISTINCT instance_id FROM toygres_actors.decisions
                                        WHERE action = 'start') s
                  WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.decisions d
                                     WHERE d.instance_id = s.instance_id
                                       AND d.action IN ('cancel', 'delete'))",
            )
            .await;
        (undecided == 0).then_some(())
    })
    .await;
    // Deleted rows' actors are gone from Duroxide altogether: no instance, no queued work.
    let left = db
        .scalar_i64(
            "SELECT (SELECT count(*) FROM toygres_actors_duroxide.instances)
                  + (SELECT count(*) FROM toygres_actors_duroxide.orchestrator_queue q
                      WHERE NOT EXISTS (SELECT 1 FROM toygres_actors_duroxide.instances i
                                         WHERE i.instance_id = q.instance_id))
                  + (SELECT count(*) FROM toygres_actors_duroxide.worker_queue w
                      WHERE NOT EXISTS (SELECT 1 FROM toygres_actors_duroxide.instances i
                                         WHERE i.instance_id = w.instance_id))",
        )
        .await;
    assert_eq!(
        left, 500,
        "only the 500 stopped (cancelled) actors stay in Duroxide"
    );
    let stopped = db
        .scalar_i64("SELECT count(*) FROM toygres_cms.instances WHERE state = 'stopped'")
        .await;
    assert_eq!(stopped, 500);
}

/// SIGKILL while set-based batches are in flight — held at their last statement (the
/// decisions, behind a table lock of the test) so the kill lands mid-batch for sure. Nothing
/// of an unfinished batch survives (no row names an actor, no start is queued); after a
/// restart the fleet converges with exactly one start decision per instance, naming its
/// actor, and no doubled actor.
#[tokio::test]
async fn sigkill_in_the_middle_of_a_batch_leaves_all_or_nothing() {
    let db = TestDb::new().await;
    insert_storm(&db, 2000).await;
    // Started after the insert: its first full reconcile queues all 2,000 at once.
    kill_while_decisions_wait(&db, || async {}).await;
}

/// The same for one instance on the per-instance path: its start records its decision in
/// the start's own transaction, so a kill before the commit leaves neither.
#[tokio::test]
async fn sigkill_while_a_single_start_records_its_decision_leaves_all_or_nothing() {
    let db = TestDb::new().await;
    kill_while_decisions_wait(&db, || async {
        db.insert_instance("pg-one", "creating", None).await;
    })
    .await;
}

/// Hold the decisions table, start the service, run `write`, wait until a decision waits for
/// the lock, SIGKILL the service, and check that nothing of the unfinished transactions
/// survived; then restart and check convergence with one start decision per actor.
async fn kill_while_decisions_wait<F, Fut>(db: &TestDb, write: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE toygres_actors.decisions IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut svc = ServiceProc::start(db, &["--check-interval", "30s", "--stale-after", "5m"]).await;
    write().await;
    wait_until("a decision waits for the lock", T, || async {
        let waiting = db
            .scalar_i64(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.relation = 'toygres_actors.decisions'::regclass AND NOT l.granted
                    AND a.query LIKE '%INSERT INTO toygres_actors.decisions%'",
            )
            .await;
        (waiting >= 1).then_some(())
    })
    .await;
    svc.kill();
    blocker.rollback().await.unwrap();
    // The killed transactions end with their sessions: wait for that, then look.
    wait_until("the killed service's transactions are over", T, || async {
        let open = db
            .scalar_i64(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND xact_start IS NOT NULL",
            )
            .await;
        (open == 0).then_some(())
    })
    .await;
    let named = db
        .scalar_i64("SELECT count(*) FROM toygres_cms.instances WHERE instance_actor_orchestration_id IS NOT NULL")
        .await;
    let decided = db
        .scalar_i64("SELECT count(*) FROM toygres_actors.decisions")
        .await;
    let queued = db
        .scalar_i64("SELECT count(*) FROM toygres_actors_duroxide.orchestrator_queue")
        .await;
    assert_eq!(
        (named, decided, queued),
        (0, 0, 0),
        "a killed start left part of itself: rows naming actors, decisions, queued starts"
    );
    svc.restart().await;
    converged(db, T).await;
    assert_eq!(doubly_started_once_decided(db).await, 0);
    assert_eq!(support::doubled_live_actors(db).await, 0);
}

/// An explicit restart runs on the priority lane — its own thread, runtime and connections —
/// so nothing that holds up the service's own pool holds it up. Here the service has one
/// pooled connection and it is stuck: a check's write waits on a row lock this test holds.
/// A durable restart request of another instance is still done (new actor named, its first
/// check written) while the lock is held.
#[tokio::test]
async fn an_explicit_restart_is_done_while_the_services_pool_is_stuck() {
    let db = TestDb::new().await;
    let target = support::reachable_target();
    db.insert_instance("pg-blocker", "running", Some(&target))
        .await;
    db.insert_instance("pg-canary", "running", Some(&target))
        .await;
    let mut svc = ServiceProc::start(&db, &["--cms-pool-max", "1"]).await;
    wait_until("both checked", T, || async {
        (db.checks_of("pg-blocker").await > 0 && db.checks_of("pg-canary").await > 0).then_some(())
    })
    .await;
    let before = db.actor_id("pg-canary").await.expect("the canary's actor");

    // The blocker's next check (every second) waits on this lock, holding the only pooled
    // connection of the service.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM toygres_cms.instances WHERE k8s_name = 'pg-blocker' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    // Blocked by this test's lock, not merely waiting on some lock: pg_stat_activity lists
    // the whole cluster, and the tests running beside this one (each in its own database)
    // have services of the same name that wait on locks of their own — storm.rs's SIGKILL
    // test holds one on its decisions table, on which its service's pruner waits.
    let stuck = format!(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'toygres-actors'
            AND {holder} = ANY(pg_blocking_pids(pid))"
    );
    wait_until(
        "the service's pooled connection waits on the lock",
        T,
        || async { (db.scalar_i64(&stuck).await > 0).then_some(()) },
    )
    .await;

    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-canary')")
        .execute(&db.pool)
        .await
        .unwrap();
    let done = "SELECT count(*) FROM toygres_cms.instances c
                  JOIN toygres_actors.probe_leases l
                    ON l.instance_id = c.id AND l.actor_id = c.instance_actor_orchestration_id
                 WHERE c.k8s_name = 'pg-canary' AND c.last_health_check > l.assigned_at";
    // Less than the pool's acquire timeout (10 s): the stuck pool never gave way meanwhile.
    wait_until(
        "the restart done through the lane",
        Duration::from_secs(8),
        || async {
            (db.actor_id("pg-canary").await.as_deref() != Some(before.as_str())
                && db.scalar_i64(done).await == 1)
                .then_some(())
        },
    )
    .await;
    assert!(
        db.scalar_i64(&stuck).await > 0,
        "the service's pool must still be stuck: the restart did not need it"
    );
    let restarts = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_actors.decisions
              WHERE k8s_name = 'pg-canary' AND action = 'restart' AND trigger = 'restart-request'",
        )
        .await;
    assert_eq!(restarts, 1);
    lock.rollback().await.unwrap();
    svc.stop();
}

/// The lane runs an explicit restart's first check inline, but a target that never answers
/// does not hold the lane or the request: past a second the scheduler takes the check over,
/// and the request is marked handled long before the probe's 10 s connect timeout.
#[tokio::test]
async fn a_restart_of_an_unanswering_instance_is_handled_without_waiting_for_its_probe() {
    let db = TestDb::new().await;
    let (hole, _accepting) = support::black_hole().await;
    db.insert_instance("pg-hole", "running", Some(&hole)).await;
    let mut svc = ServiceProc::start(
        &db,
        &[
            "--probe-connect-timeout",
            "10s",
            "--probe-query-timeout",
            "10s",
        ],
    )
    .await;
    wait_until("an actor", T, || async { db.actor_id("pg-hole").await }).await;
    let before = db.actor_id("pg-hole").await.expect("the actor");
    let asked = std::time::Instant::now();
    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-hole')")
        .execute(&db.pool)
        .await
        .unwrap();
    let handled = "SELECT count(*) FROM toygres_cms.actor_restart_requests
                    WHERE k8s_name = 'pg-hole' AND handled_at IS NOT NULL";
    wait_until("the request handled", T, || async {
        (db.scalar_i64(handled).await == 1).then_some(())
    })
    .await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the request waited {took:?} for a probe that cannot answer"
    );
    assert_ne!(
        db.actor_id("pg-hole").await.as_deref(),
        Some(before.as_str())
    );
    svc.stop();
}
