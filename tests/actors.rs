//! Instance actors on a real PostgreSQL with Duroxide's Postgres provider: health is probed
//! and recorded, failures are redacted, superseded and orphaned actors stop without
//! writing, restarts produce exactly one live actor, and actors survive a service crash.

mod support;

use toygres_actors::reconcile::{Ask, Did, Mode};

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgListener;
use support::{Stack, TestDb, wait_until};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn reachable_instance_is_recorded_healthy_with_history_and_notification() {
    let db = TestDb::new().await;
    let mut health = PgListener::connect(&db.url).await.unwrap();
    health.listen("toygres_health").await.unwrap();
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    db.insert_instance("pg-ok", "running", Some(&support::reachable_target()))
        .await;
    let row = stack.row("pg-ok").await;
    let t = stack
        .control
        .replace(&row, "test start", None)
        .await
        .unwrap();
    let actor = t.new_actor_id.unwrap();
    assert_eq!(db.actor_id("pg-ok").await.as_deref(), Some(actor.as_str()));

    wait_until("three health checks", T, || async {
        (db.checks_of("pg-ok").await >= 3).then_some(())
    })
    .await;
    let (status, last) = db.health_of("pg-ok").await;
    assert_eq!(status, "healthy");
    assert!(last.is_some());
    let (hist_status, version, ms): (String, Option<String>, Option<i32>) = sqlx::query_as(
        "SELECT status, postgres_version, response_time_ms FROM toygres_cms.instance_health_checks ORDER BY checked_at DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(hist_status, "healthy");
    assert!(version.is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())));
    assert!(ms.is_some());

    let n = tokio::time::timeout(T, health.recv())
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!(v["k8s_name"], "pg-ok");
    assert_eq!(v["old"], "unknown");
    assert_eq!(v["new"], "healthy");
    assert_eq!(db.live_actors("pg-ok").await, vec![actor]);
    stack.shutdown().await;
}

#[tokio::test]
async fn closed_port_is_unhealthy_and_the_error_has_no_password() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    db.insert_instance("pg-down", "running", Some(&support::closed_port_target()))
        .await;
    stack
        .control
        .replace(&stack.row("pg-down").await, "test", None)
        .await
        .unwrap();
    wait_until("unhealthy recorded", T, || async {
        (db.health_of("pg-down").await.0 == "unhealthy").then_some(())
    })
    .await;
    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error_message FROM toygres_cms.instance_health_checks")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!errors.is_empty());
    for e in errors {
        let e = e.expect("an error message");
        assert!(e.contains("connect"), "{e}");
        assert!(
            !e.contains(support::TARGET_PASSWORD),
            "password leaked: {e}"
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn unhealthy_only_after_the_configured_consecutive_failures() {
    let db = TestDb::new().await;
    let mut health = PgListener::connect(&db.url).await.unwrap();
    health.listen("toygres_health").await.unwrap();
    let stack = Stack::start(&db, Duration::from_millis(300), 3).await;
    db.insert_instance("pg-flaky", "running", Some(&support::closed_port_target()))
        .await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET health_status = 'healthy' WHERE k8s_name = 'pg-flaky'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    stack
        .control
        .replace(&stack.row("pg-flaky").await, "test", None)
        .await
        .unwrap();
    // The change notification is sent in the transaction of the check that flipped the
    // status: when it arrives, at least three failed checks are recorded.
    let n = tokio::time::timeout(T, health.recv())
        .await
        .unwrap()
        .unwrap();
    let checks = db.checks_of("pg-flaky").await;
    let v: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!(
        (v["old"].as_str(), v["new"].as_str()),
        (Some("healthy"), Some("unhealthy"))
    );
    assert!(checks >= 3, "flipped after {checks} checks");
    let failed: i64 = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_cms.instance_health_checks WHERE status = 'unhealthy'",
        )
        .await;
    assert_eq!(failed, checks, "every failed probe is in the history");
    stack.shutdown().await;
}

#[tokio::test]
async fn instance_without_connection_string_reports_unknown_and_waits() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(200), 1).await;
    db.insert_instance("pg-new", "creating", None).await;
    stack
        .control
        .replace(&stack.row("pg-new").await, "test", None)
        .await
        .unwrap();
    wait_until("two checks", T, || async {
        (db.checks_of("pg-new").await >= 2).then_some(())
    })
    .await;
    assert_eq!(db.health_of("pg-new").await.0, "unknown");
    // The connection string arrives: the same actor picks it up.
    let actor = db.actor_id("pg-new").await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_connection_string = $1 WHERE k8s_name = 'pg-new'",
    )
    .bind(support::reachable_target())
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until("healthy once the target exists", T, || async {
        (db.health_of("pg-new").await.0 == "healthy").then_some(())
    })
    .await;
    assert_eq!(db.actor_id("pg-new").await, actor);
    stack.shutdown().await;
}

#[tokio::test]
async fn superseded_actor_stops_without_writing() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(200), 1).await;
    db.insert_instance("pg-fence", "running", Some(&support::reachable_target()))
        .await;
    let t = stack
        .control
        .replace(&stack.row("pg-fence").await, "test", None)
        .await
        .unwrap();
    let old = t.new_actor_id.unwrap();
    wait_until("first check", T, || async {
        (db.checks_of("pg-fence").await >= 1).then_some(())
    })
    .await;

    // Someone else takes over the column (an id no orchestration has).
    let other = format!("{}-someone-else", &old[..42]);
    sqlx::query("UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $1 WHERE k8s_name = 'pg-fence'")
        .bind(&other)
        .execute(&db.pool)
        .await
        .unwrap();
    let checks_at_swap = db.checks_of("pg-fence").await;
    let last_at_swap = db.health_of("pg-fence").await.1;
    let (status, output) = wait_until("old actor completes", T, || async {
        db.orchestration_status(&old)
            .await
            .filter(|(s, _)| s != "Running")
    })
    .await;
    assert_eq!(status, "Completed");
    assert!(output.unwrap_or_default().contains("superseded"));
    // At most one check was already past the fence when we swapped; none after.
    let checks = db.checks_of("pg-fence").await;
    assert!(checks <= checks_at_swap + 1, "{checks} vs {checks_at_swap}");
    let after = db.health_of("pg-fence").await.1;
    assert!(after == last_at_swap || checks == checks_at_swap + 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn deleting_the_row_ends_the_actor() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(200), 1).await;
    db.insert_instance("pg-gone", "running", Some(&support::reachable_target()))
        .await;
    let actor = stack
        .control
        .replace(&stack.row("pg-gone").await, "test", None)
        .await
        .unwrap()
        .new_actor_id
        .unwrap();
    wait_until("first check", T, || async {
        (db.checks_of("pg-gone").await >= 1).then_some(())
    })
    .await;
    sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-gone'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, output) = wait_until("actor ends by itself", T, || async {
        db.orchestration_status(&actor)
            .await
            .filter(|(s, _)| s != "Running")
    })
    .await;
    assert_eq!(status, "Completed");
    assert!(output.unwrap_or_default().contains("deleted"));
    stack.shutdown().await;
}

#[tokio::test]
async fn restart_gives_a_new_id_and_exactly_one_live_actor() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(200), 1).await;
    db.insert_instance("pg-re", "running", Some(&support::reachable_target()))
        .await;
    let first = stack
        .control
        .replace(&stack.row("pg-re").await, "start", None)
        .await
        .unwrap()
        .new_actor_id
        .unwrap();
    wait_until("first actor live", T, || async {
        (db.live_actors("pg-re").await == vec![first.clone()]).then_some(())
    })
    .await;
    let t = stack
        .control
        .replace(&stack.row("pg-re").await, "restart", None)
        .await
        .unwrap();
    let second = t.new_actor_id.unwrap();
    assert_ne!(first, second);
    assert_eq!(t.old_actor_id.as_deref(), Some(first.as_str()));
    assert_eq!(db.actor_id("pg-re").await.as_deref(), Some(second.as_str()));
    // The live old actor left Duroxide in the transaction that named the new one: no cancel
    // turn to wait for, and never two live actors.
    assert!(
        db.orchestration_status(&first).await.is_none(),
        "the old actor is removed at the swap"
    );
    assert!(!db.live_actors("pg-re").await.contains(&first));
    wait_until("only the new actor is live", T, || async {
        (db.live_actors("pg-re").await == vec![second.clone()]).then_some(())
    })
    .await;
    let before = db.checks_of("pg-re").await;
    wait_until("the new actor checks", T, || async {
        (db.checks_of("pg-re").await > before).then_some(())
    })
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn actor_history_stays_bounded_and_pruning_removes_old_executions() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(50), 1).await;
    db.insert_instance("pg-long", "running", Some(&support::reachable_target()))
        .await;
    let actor = stack
        .control
        .replace(&stack.row("pg-long").await, "start", None)
        .await
        .unwrap()
        .new_actor_id
        .unwrap();
    // The test stack renews every 500 ms and continues as new every 3 renewals.
    let count_executions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM toygres_actors_duroxide.executions WHERE instance_id = $1",
        )
        .bind(&actor)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    wait_until("three executions (continue-as-new)", T, || async {
        (count_executions().await >= 3).then_some(())
    })
    .await;
    assert!(
        db.checks_of("pg-long").await >= 10,
        "checks every 50 ms meanwhile"
    );
    let max_events: i64 = sqlx::query_scalar(
        "SELECT max(c) FROM (SELECT count(*) c FROM toygres_actors_duroxide.history WHERE instance_id = $1 GROUP BY execution_id) x",
    )
    .bind(&actor)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        max_events <= 20,
        "one execution's history is bounded: {max_events} events"
    );
    toygres_actors::duties::prune_once(&stack.reconciler, Duration::from_secs(7 * 86400))
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_actors_duroxide.executions WHERE instance_id = $1",
    )
    .bind(&actor)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        left <= 2,
        "pruned to the current execution (and maybe one just finishing): {left}"
    );
    assert_eq!(db.live_actors("pg-long").await, vec![actor]);
    stack.shutdown().await;
}

#[tokio::test]
async fn actors_survive_a_service_crash_and_resume_with_the_same_id() {
    let db = TestDb::new().await;
    let mut svc = support::ServiceProc::start(&db, &[]).await;
    db.insert_instance("pg-durable", "running", Some(&support::reachable_target()))
        .await;
    wait_until("checks flowing", T, || async {
        (db.checks_of("pg-durable").await >= 2).then_some(())
    })
    .await;
    let actor = db.actor_id("pg-durable").await.unwrap();
    svc.kill();
    let before = db.checks_of("pg-durable").await;
    svc.restart().await;
    wait_until("checks resume after the crash", T, || async {
        (db.checks_of("pg-durable").await >= before + 2).then_some(())
    })
    .await;
    assert_eq!(
        db.actor_id("pg-durable").await.as_deref(),
        Some(actor.as_str()),
        "same actor resumed"
    );
    assert_eq!(db.live_actors("pg-durable").await, vec![actor]);
}

/// Every renewal of an actor's probe lease records when it ran and how late it was against
/// its due time (the previous renewal + the renewal period), from database timestamps.
#[tokio::test]
async fn lease_renewals_record_their_lag_from_database_timestamps() {
    let db = TestDb::new().await;
    // Stack: renewals every 500 ms.
    let stack = Stack::start(&db, Duration::from_millis(200), 1).await;
    db.insert_instance("pg-lag", "running", Some(&support::reachable_target()))
        .await;
    let row = stack.row("pg-lag").await;
    stack
        .control
        .replace(&row, "test start", None)
        .await
        .unwrap();
    let lag: f64 = wait_until("a renewal with a lag", T, || async {
        sqlx::query_scalar::<_, Option<f64>>(
            "SELECT l.renewal_lag_seconds FROM toygres_actors.probe_leases l
               JOIN toygres_cms.instances i ON i.id = l.instance_id
              WHERE i.k8s_name = 'pg-lag' AND l.renewed_at IS NOT NULL",
        )
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten()
        .flatten()
    })
    .await;
    // On time on an idle machine: well under the renewal period itself.
    assert!(lag > -0.5 && lag < 2.0, "renewal lag {lag} s");
}

/// Actors started together do not renew together forever: a fresh actor's second renewal
/// comes after between an eighth of a renewal period and a full one, fixed per instance id
/// (its first is the lease the start took in its own transaction). Read from Duroxide's
/// history: the first timer's duration, and no renewal activity before it — a fresh actor
/// costs one turn, not two turns and an activity.
#[tokio::test]
async fn a_burst_of_fresh_actors_spreads_its_second_renewals() {
    let db = TestDb::new().await;
    // The production renewal period (4 min): the spread is a share of it.
    let svc = support::ServiceProc::start_production(&db.url, &[]).await;
    const N: usize = 20;
    for i in 0..N {
        db.insert_instance(
            &format!("pg-spread-{i}"),
            "running",
            Some(&support::reachable_target()),
        )
        .await;
    }
    let waits: Vec<(uuid::Uuid, i64)> = wait_until("every actor's first timer", T, || async {
        let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
            "SELECT i.id, (h.event_data::jsonb->>'fire_at_ms')::int8
                        - (h.event_data::jsonb->>'timestamp_ms')::int8
               FROM toygres_cms.instances i
               JOIN toygres_actors_duroxide.history h
                 ON h.instance_id = i.instance_actor_orchestration_id
              WHERE i.k8s_name LIKE 'pg-spread-%' AND h.execution_id = 1
                AND h.event_data::jsonb->>'type' = 'TimerCreated'",
        )
        .fetch_all(&db.pool)
        .await
        .ok()?;
        (rows.len() == N).then_some(rows)
    })
    .await;
    let renew = toygres_actors::lease::DEFAULT_LEASE_RENEW;
    for (id, ms) in &waits {
        let want = toygres_actors::actor::first_delay(*id, renew).as_millis() as i64;
        // The timer's due time counts from the turn's start, the event's stamp from when it
        // was written: a loaded machine puts a few ms between them.
        assert!(
            (*ms - want).abs() <= 2_000,
            "first renewal timer of {id}: {ms} ms, want {want} ms"
        );
        assert!(
            (renew.as_millis() as i64 / 8..renew.as_millis() as i64).contains(ms),
            "{ms} ms"
        );
    }
    let distinct: std::collections::HashSet<i64> = waits.iter().map(|(_, ms)| *ms).collect();
    assert!(distinct.len() > N / 2, "spread: {distinct:?}");
    let (activities, turns): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE h.event_data::jsonb->>'type' = 'ActivityScheduled'),
                count(*) FILTER (WHERE h.event_data::jsonb->>'type' = 'OrchestrationStarted')
           FROM toygres_cms.instances i
           JOIN toygres_actors_duroxide.history h
             ON h.instance_id = i.instance_actor_orchestration_id
          WHERE i.k8s_name LIKE 'pg-spread-%' AND h.execution_id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(turns, N as i64, "one start per actor");
    assert_eq!(activities, 0, "no renewal before the first timer");
    // The start's own lease stands in for that renewal: each actor owns its lease, held by
    // the service for three renewal periods.
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_actors.probe_leases l
           JOIN toygres_cms.instances i
             ON i.id = l.instance_id AND i.instance_actor_orchestration_id = l.actor_id
          WHERE i.k8s_name LIKE 'pg-spread-%'
            AND l.expires_at > clock_timestamp() + interval '10 minutes'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leased, N as i64, "leases taken with the starts");
    drop(svc);
}

/// Instances that start together are not checked together forever: after a check that ran
/// at once (a new actor's first), the next comes after between an eighth of an interval and
/// a full one, fixed per instance id, so the fleet's checks become a steady stream instead of a
/// spike of every instance each interval.
#[tokio::test]
async fn checks_of_instances_started_together_spread_over_the_interval() {
    let db = TestDb::new().await;
    let interval = Duration::from_secs(4);
    let stack = Stack::start(&db, interval, 1).await;
    const N: usize = 12;
    for i in 0..N {
        let name = format!("pg-steady-{i}");
        db.insert_instance(&name, "running", Some(&support::reachable_target()))
            .await;
        let row = stack.row(&name).await;
        stack
            .control
            .replace(&row, "test start", None)
            .await
            .unwrap();
    }
    let gaps: Vec<(uuid::Uuid, f64)> = wait_until("two checks of every instance", T, || async {
        let rows: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
            "SELECT instance_id, extract(epoch FROM second - first)::float8 FROM (
                SELECT instance_id, min(checked_at) AS first,
                       (array_agg(checked_at ORDER BY checked_at))[2] AS second
                  FROM toygres_cms.instance_health_checks GROUP BY instance_id) c
              WHERE second IS NOT NULL",
        )
        .fetch_all(&db.pool)
        .await
        .ok()?;
        (rows.len() == N).then_some(rows)
    })
    .await;
    for (id, gap) in &gaps {
        let want = toygres_actors::lease::jittered(*id, interval).as_secs_f64();
        assert!(
            *gap >= want - 0.05 && *gap < want + 0.7,
            "{id}: second check {gap:.2} s after the first, want {want:.2} s"
        );
    }
    let (min, max) = gaps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, g)| {
        (lo.min(*g), hi.max(*g))
    });
    assert!(
        max - min > 0.5,
        "second checks not spread: {min:.2}–{max:.2} s"
    );
    stack.shutdown().await;
}

/// An actor between two executions — continue-as-new closed its current execution as
/// `ContinuedAsNew`, the next one waits in the queue — runs: a resync that catches it there
/// leaves it alone. Before, the reconciler took it for finished ("missing") and restarted
/// it: 101 of 10,000 actors in a 90-minute soak.
#[tokio::test]
async fn an_actor_caught_between_two_executions_is_not_restarted() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_secs(30), 1).await;
    db.insert_instance("pg-can", "running", Some(&support::reachable_target()))
        .await;
    let row = stack.row("pg-can").await;
    let actor = stack
        .control
        .replace(&row, "test", None)
        .await
        .unwrap()
        .new_actor_id
        .unwrap();
    wait_until("the actor runs", T, || async {
        (db.live_actors("pg-can").await.len() == 1).then_some(())
    })
    .await;
    // That moment, held still: the current execution closed as ContinuedAsNew.
    let closed = sqlx::query(
        "UPDATE toygres_actors_duroxide.executions e SET status = 'ContinuedAsNew'
           FROM toygres_actors_duroxide.instances i
          WHERE i.instance_id = $1 AND e.instance_id = i.instance_id
            AND e.execution_id = i.current_execution_id",
    )
    .bind(&actor)
    .execute(&db.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(closed, 1);
    let trigger = toygres_actors::reconcile::Trigger::Resync;
    let out = stack
        .reconciler
        .reconcile_instance(row.id, &trigger, Ask::Reconcile, Mode::DryRun)
        .await
        .unwrap();
    assert_ne!(out.action, Did::Restart, "{out:?}");
    assert_ne!(out.action, Did::Start, "{out:?}");
    assert_eq!(db.actor_id("pg-can").await.as_deref(), Some(actor.as_str()));
    stack.shutdown().await;
}

/// `name` inserted and started, then a durable restart request made for it; a reconciler
/// with no minimum age between restarts (a second run must be held back by the request, not
/// by the actor's age). Returns it, the row and the first actor's id.
async fn a_started_actor_asked_to_restart(
    db: &TestDb,
    stack: &Stack,
    name: &str,
) -> (
    toygres_actors::reconcile::Reconciler,
    toygres_actors::cms::InstanceRow,
    String,
) {
    let reconciler = toygres_actors::reconcile::Reconciler::new(
        stack.control.clone(),
        Duration::from_secs(300),
        "test".into(),
    )
    .with_restart_limits(Duration::ZERO, 100);
    db.insert_instance(name, "running", Some(&support::reachable_target()))
        .await;
    let row = stack.row(name).await;
    stack
        .control
        .replace(&row, "test start", None)
        .await
        .unwrap();
    let first = db.actor_id(name).await.unwrap();
    sqlx::query("SELECT toygres_cms.request_actor_restart($1)")
        .bind(name)
        .execute(&db.pool)
        .await
        .unwrap();
    (reconciler, row, first)
}

/// A durable restart request read twice — by the control worker and by a full reconcile,
/// before the first run marked it handled — restarts the actor once: the second run finds
/// the request handled and only reconciles (the 10,000 burst showed two restarts for one
/// request). A raw `restart <name>` on the control channel has no request row and restarts.
#[tokio::test]
async fn a_restart_request_read_twice_restarts_once() {
    use toygres_actors::reconcile::Trigger;
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    let (reconciler, row, first) = a_started_actor_asked_to_restart(&db, &stack, "pg-twice").await;
    let a = reconciler.honour_restart_request(row.id).await.unwrap();
    assert_eq!(a.action, Did::Restart, "{a:?}");
    let second = db.actor_id("pg-twice").await.unwrap();
    assert_ne!(first, second);
    let b = reconciler.honour_restart_request(row.id).await.unwrap();
    assert_ne!(
        b.action,
        Did::Restart,
        "the same request honoured twice: {b:?}"
    );
    assert_eq!(db.actor_id("pg-twice").await.unwrap(), second);
    let restarts = db
        .scalar_i64("SELECT count(*) FROM toygres_actors.decisions WHERE action = 'restart'")
        .await;
    assert_eq!(restarts, 1);
    // The control channel's restart has no request behind it: it restarts.
    let c = reconciler
        .reconcile_instance(row.id, &Trigger::ControlRestart, Ask::Restart, Mode::Act)
        .await
        .unwrap();
    assert_eq!(c.action, Did::Restart, "{c:?}");
    assert_ne!(db.actor_id("pg-twice").await.unwrap(), second);
    stack.shutdown().await;
}

/// One request honoured twice at the same moment (the priority lane, and the queue after a
/// full reconcile) restarts once: the second run waits for the first, finds the request
/// handled and only reconciles — it neither restarts again nor fails on the swap.
#[tokio::test]
async fn a_restart_request_honoured_twice_at_once_restarts_once() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    let (reconciler, row, first) =
        a_started_actor_asked_to_restart(&db, &stack, "pg-at-once").await;
    let (a, b) = tokio::join!(
        reconciler.honour_restart_request(row.id),
        reconciler.honour_restart_request(row.id)
    );
    let (a, b) = (a.expect("first run"), b.expect("second run"));
    let actions = [a.action, b.action];
    assert_eq!(
        actions.iter().filter(|a| **a == Did::Restart).count(),
        1,
        "{a:?} {b:?}"
    );
    assert_ne!(db.actor_id("pg-at-once").await.unwrap(), first);
    let restarts = db
        .scalar_i64("SELECT count(*) FROM toygres_actors.decisions WHERE action = 'restart'")
        .await;
    assert_eq!(restarts, 1);
    stack.shutdown().await;
}

/// A restart closes only the requests read before it: one made while it runs (here, by a
/// trigger on the restart's own decision row, so it lands after the read and before the
/// finish) stays pending, and the next run honours it with a restart of its own.
#[tokio::test]
async fn a_request_made_during_a_restart_stays_pending_and_is_honoured() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    let (reconciler, row, first) = a_started_actor_asked_to_restart(&db, &stack, "pg-newer").await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.request_during_restart() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.action = 'restart' THEN
                 INSERT INTO toygres_cms.actor_restart_requests (instance_id, k8s_name)
                 VALUES (NEW.instance_id, NEW.k8s_name);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER request_during_restart AFTER INSERT ON toygres_actors.decisions
             FOR EACH ROW EXECUTE FUNCTION public.request_during_restart();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let a = reconciler.honour_restart_request(row.id).await.unwrap();
    assert_eq!(a.action, Did::Restart, "{a:?}");
    let second = db.actor_id("pg-newer").await.unwrap();
    assert_ne!(second, first);
    let requests = || async {
        sqlx::query_as::<_, (i64, bool)>(
            "SELECT id, handled_at IS NOT NULL FROM toygres_cms.actor_restart_requests
              WHERE instance_id = $1 ORDER BY id",
        )
        .bind(row.id)
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let after_first = requests().await;
    assert_eq!(after_first.len(), 2, "{after_first:?}");
    assert!(
        after_first[0].1,
        "the request read was closed: {after_first:?}"
    );
    assert!(
        !after_first[1].1,
        "the request made during the restart was closed by it: {after_first:?}"
    );
    sqlx::raw_sql("DROP TRIGGER request_during_restart ON toygres_actors.decisions")
        .execute(&db.pool)
        .await
        .unwrap();
    let b = reconciler.honour_restart_request(row.id).await.unwrap();
    assert_eq!(
        b.action,
        Did::Restart,
        "the newer request is honoured: {b:?}"
    );
    assert_ne!(db.actor_id("pg-newer").await.unwrap(), second);
    assert!(requests().await.iter().all(|(_, handled)| *handled));
    let restarts = db
        .scalar_i64("SELECT count(*) FROM toygres_actors.decisions WHERE action = 'restart'")
        .await;
    assert_eq!(restarts, 2);
    stack.shutdown().await;
}

/// A rolling upgrade mixes releases: a replica of the release before resolves a start to
/// orchestration version 2.0.0, which renews first whatever the input says; this release
/// keeps 2.0.0 registered with exactly that behaviour, so such an execution replays the same
/// here, and only 2.1.0 honours `leased_at_start`. Read from Duroxide's history: the renewal
/// activities scheduled before each actor's first timer, and both still running.
#[tokio::test]
async fn version_2_0_still_renews_first_and_only_2_1_skips_a_lease_taken_at_start() {
    use toygres_actors::{actor::ActorInput, config, duro::new_actor_id};
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    let mut ids = Vec::new();
    for (name, version) in [
        ("pg-v20", config::ACTOR_VERSION_V2_0),
        ("pg-v21", config::ACTOR_VERSION),
    ] {
        db.insert_instance(name, "running", Some(&support::reachable_target()))
            .await;
        let row = stack.row(name).await;
        let actor = new_actor_id(row.id);
        sqlx::query(
            "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $1 WHERE id = $2",
        )
        .bind(&actor)
        .bind(row.id)
        .execute(&db.pool)
        .await
        .unwrap();
        let input = ActorInput {
            instance_id: row.id,
            k8s_name: name.into(),
            interval_ms: 300,
            iterations_per_execution: 3,
            unhealthy_after: 1,
            actor_states: vec!["creating".into(), "running".into()],
            consecutive_failures: 0,
            executions: 0,
            // Ten minutes: the first timer (an eighth of that at least) outlasts the test.
            lease_renew_ms: Some(600_000),
            eager_first_check: true,
            leased_at_start: true,
        };
        stack
            .control
            .client
            .start_orchestration_versioned(
                actor.clone(),
                config::ACTOR_ORCHESTRATION,
                version,
                serde_json::to_string(&input).unwrap(),
            )
            .await
            .unwrap();
        ids.push((actor, version));
    }
    for (actor, version) in &ids {
        let activities: i64 = wait_until("the actor's first timer", T, || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FILTER (WHERE event_data::jsonb->>'type' = 'ActivityScheduled')
                   FROM toygres_actors_duroxide.history
                  WHERE instance_id = $1 AND execution_id = 1
                 HAVING count(*) FILTER (WHERE event_data::jsonb->>'type' = 'TimerCreated') > 0",
            )
            .bind(actor)
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
        })
        .await;
        let want = if *version == config::ACTOR_VERSION_V2_0 {
            1
        } else {
            0
        };
        assert_eq!(
            activities, want,
            "renewals before the first timer, {version}"
        );
        let status = db.orchestration_status(actor).await.map(|s| s.0);
        assert_eq!(status.as_deref(), Some("Running"), "{version}");
    }
    stack.shutdown().await;
}
