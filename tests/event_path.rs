//! The event path with real processes: CMS writes drive actor lifecycles through
//! LISTEN/NOTIFY; the reconciler repairs whatever the events missed (listener killed,
//! service stopped); manual restarts; one leader among replicas; stale and zombie actors
//! healed.

mod support;

use std::time::{Duration, Instant};

use support::{ServiceProc, TestDb, converged, wait_until};

const T: Duration = Duration::from_secs(60);

async fn set_state(db: &TestDb, name: &str, state: &str) {
    sqlx::query("UPDATE toygres_cms.instances SET state = $2::text::toygres_cms.instance_state WHERE k8s_name = $1")
        .bind(name)
        .bind(state)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn max_live_per_instance(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(max(n), 0) FROM (
            SELECT substr(i.instance_id, 7, 36) AS inst, count(*) AS n
              FROM toygres_actors_duroxide.instances i
              JOIN toygres_actors_duroxide.executions e
                ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
             WHERE e.status = 'Running'
             GROUP BY 1) x",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or(0)
}

#[tokio::test]
async fn cms_writes_drive_the_actor_lifecycle() {
    let db = TestDb::new().await;
    let _svc = ServiceProc::start(&db, &[]).await;
    db.insert_instance("pg-life", "creating", Some(&support::reachable_target()))
        .await;
    wait_until("actor and a first health row", T, || async {
        (db.checks_of("pg-life").await >= 1 && db.live_actors("pg-life").await.len() == 1)
            .then_some(())
    })
    .await;
    let first = db.actor_id("pg-life").await.unwrap();
    set_state(&db, "pg-life", "running").await;
    // creating → running keeps the same actor.
    wait_until("health checks continue", T, || async {
        (db.checks_of("pg-life").await >= 3).then_some(())
    })
    .await;
    assert_eq!(
        db.actor_id("pg-life").await.as_deref(),
        Some(first.as_str())
    );

    let mut previous = first.clone();
    for gone_state in ["deleting", "stopped", "failed"] {
        set_state(&db, "pg-life", gone_state).await;
        wait_until(&format!("actor gone after {gone_state}"), T, || async {
            db.live_actors("pg-life").await.is_empty().then_some(())
        })
        .await;
        set_state(&db, "pg-life", "running").await;
        let new = wait_until("a new actor after back to running", T, || async {
            let live = db.live_actors("pg-life").await;
            (live.len() == 1 && live[0] != previous).then(|| live[0].clone())
        })
        .await;
        assert_eq!(db.actor_id("pg-life").await.as_deref(), Some(new.as_str()));
        previous = new;
    }
    sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-life'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until("actor gone after DELETE", T, || async {
        (max_live_per_instance(&db).await == 0).then_some(())
    })
    .await;
    converged(&db, T).await;
}

/// A TCP port that counts the connections made to it (each closed at once: a probe of it
/// fails, which is fine: we count probes, not their outcome).
async fn connection_counter() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(sock);
        }
    });
    (port, count)
}

/// The replica that removes a deleted instance's actor stops probing it at once: its
/// target sees no connection after the delete, while another instance is checked three more
/// times at the same interval.
#[tokio::test]
async fn a_deleted_instance_is_probed_no_more() {
    let db = TestDb::new().await;
    let _svc = ServiceProc::start(&db, &["--check-interval", "2s"]).await;
    let (port, probes) = connection_counter().await;
    let gone_target = format!("postgres://u:p@127.0.0.1:{port}/postgres?connect_timeout=2");
    db.insert_instance("pg-gone", "running", Some(&gone_target))
        .await;
    let (other_port, _) = connection_counter().await;
    let other_target = format!("postgres://u:p@127.0.0.1:{other_port}/postgres?connect_timeout=2");
    db.insert_instance("pg-stays", "running", Some(&other_target))
        .await;
    let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("pg-gone probed twice", T, || async {
        (count(&probes) >= 2).then_some(())
    })
    .await;
    sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-gone'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until("pg-gone's actor removed", T, || async {
        let deleted = db
            .scalar_i64(
                "SELECT count(*) FROM toygres_actors.decisions WHERE k8s_name LIKE '(deleted %' AND action = 'delete'",
            )
            .await;
        (deleted > 0).then_some(())
    })
    .await;
    let after_delete = count(&probes);
    let stays = db.checks_of("pg-stays").await;
    wait_until("pg-stays checked three more times", T, || async {
        (db.checks_of("pg-stays").await >= stays + 3).then_some(())
    })
    .await;
    assert_eq!(
        count(&probes),
        after_delete,
        "the deleted instance was probed after its actor was removed"
    );
}

#[tokio::test]
async fn killing_the_listener_during_500_writes_loses_nothing() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(
        &db,
        &[
            "--check-interval",
            "30s",
            "--stale-after",
            "120s",
            "--resync-interval",
            "600s",
        ],
    )
    .await;
    // 500 writes (inserts, stops, restarts, deletes); the listener's backend is killed
    // every 40 of them, so many land while it is away or reconnecting.
    let kill = "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'toygres-actors-listener' AND datname = current_database()) x";
    let mut ops = 0;
    let mut kills = 0i64;
    let mut attempts = 0;
    let mut i = 0;
    while ops < 500 {
        let name = |k: i32| format!("pg-burst-{k}");
        sqlx::query(
            "INSERT INTO toygres_cms.instances (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id)
             VALUES ('u', $1, '16', 1, 'creating', 'c')",
        )
        .bind(name(i))
        .execute(&db.pool)
        .await
        .unwrap();
        ops += 1;
        if i % 5 == 4 {
            set_state(&db, &name(i - 2), "stopped").await;
            sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = $1")
                .bind(name(i - 4))
                .execute(&db.pool)
                .await
                .unwrap();
            ops += 2;
        }
        if i % 10 == 9 {
            set_state(&db, &name(i - 7), "running").await;
            set_state(&db, &name(i - 8), "running").await;
            ops += 2;
        }
        if ops / 40 > attempts {
            attempts += 1;
            // Kill a connected listener (waiting for it to be back from the last kill);
            // the next 40 writes then land while it reconnects.
            let pool = db.pool.clone();
            kills += wait_until("a listener to kill", T, || {
                let pool = pool.clone();
                async move {
                    let n: i64 = sqlx::query_scalar(kill).fetch_one(&pool).await.ok()?;
                    (n > 0).then_some(n)
                }
            })
            .await;
        }
        i += 1;
    }
    assert!(
        kills >= 10,
        "the listener was killed during the writes ({kills} times)"
    );
    let took = converged(&db, T).await;
    eprintln!("converged {took:?} after the writes; listener killed {kills} times");
    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        metrics.contains("toygres_actors_listener_reconnects_total"),
        "{metrics}"
    );
    assert_eq!(max_live_per_instance(&db).await, 1);
}

#[tokio::test]
async fn rows_written_while_the_service_is_down_are_reconciled_at_start() {
    let db = TestDb::new().await;
    let mut svc = ServiceProc::start(&db, &[]).await;
    for n in ["pg-a", "pg-b", "pg-c"] {
        db.insert_instance(n, "running", None).await;
    }
    converged(&db, T).await;
    assert_eq!(svc.stop().code(), Some(0), "clean exit on SIGTERM");
    // While down: a new instance, a stop, a delete, and a restart request.
    db.insert_instance("pg-d", "creating", None).await;
    set_state(&db, "pg-a", "stopped").await;
    sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = 'pg-b'")
        .execute(&db.pool)
        .await
        .unwrap();
    let c_before = db.actor_id("pg-c").await.unwrap();
    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-c')")
        .execute(&db.pool)
        .await
        .unwrap();
    svc.restart().await;
    converged(&db, T).await;
    // The fleet can look converged before the queued restart request is worked off.
    wait_until("the durable restart request handled", T, || async {
        (db.pending_restart_requests().await == 0).then_some(())
    })
    .await;
    // `converged` counts an actor still queued for its first turn as live; this counts only
    // a running one, which follows within the dispatcher's first fetch.
    wait_until("pg-d's actor running", T, || async {
        (db.live_actors("pg-d").await.len() == 1).then_some(())
    })
    .await;
    let c_after = db.actor_id("pg-c").await.unwrap();
    assert_ne!(
        c_before, c_after,
        "the durable restart request was honoured"
    );
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM toygres_cms.actor_restart_requests WHERE handled_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(outcome.contains(&c_after), "{outcome}");
}

#[tokio::test]
async fn manual_restart_and_invalid_control_payloads() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(&db, &[]).await;
    db.insert_instance("pg-r", "running", None).await;
    db.insert_instance("pg-q'uo;te", "running", None).await;
    db.insert_instance("pg-stopped", "stopped", None).await;
    converged(&db, T).await;

    let before = db.actor_id("pg-r").await.unwrap();
    sqlx::query("NOTIFY toygres_actor_control, 'restart pg-r'")
        .execute(&db.pool)
        .await
        .unwrap();
    let after = wait_until("raw NOTIFY restart", T, || async {
        db.actor_id("pg-r").await.filter(|a| *a != before)
    })
    .await;
    sqlx::query("SELECT pg_notify('toygres_actor_control', $1)")
        .bind(r#"{"op":"restart","k8s_name":"pg-q'uo;te"}"#)
        .execute(&db.pool)
        .await
        .unwrap();
    let q_before = db.actor_id("pg-q'uo;te").await.unwrap();
    wait_until("JSON restart of a name with quotes", T, || async {
        db.actor_id("pg-q'uo;te").await.filter(|a| *a != q_before)
    })
    .await;

    // Neither form can bring about a state the row does not call for.
    sqlx::query("NOTIFY toygres_actor_control, 'restart pg-stopped'")
        .execute(&db.pool)
        .await
        .unwrap();
    let bad: Vec<String> = vec![
        "restart".into(),
        "restart no-such-instance".into(),
        "{\"op\":\"restart\"".into(),
        r#"{"op":"drop","k8s_name":"pg-r"}"#.into(),
        "frobnicate pg-r".into(),
        format!("restart {}", "x".repeat(300)),
        "restart *".into(),
    ];
    for payload in &bad {
        sqlx::query("SELECT pg_notify('toygres_actor_control', $1)")
            .bind(payload)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    for payload in [
        "{}",
        "not json",
        r#"{"op":"insert","id":"zzz"}"#,
        r#"{"op":"explode","id":"00000000-0000-0000-0000-000000000000"}"#,
    ] {
        sqlx::query("SELECT pg_notify('toygres_instances', $1)")
            .bind(payload)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    wait_until("invalid notifications counted", T, || async {
        let (_, m) = svc.get("/metrics").await;
        let count = |ch: &str| -> f64 {
            m.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "toygres_actors_notifications_invalid_total{{channel=\"{ch}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        (count("toygres_actor_control") >= bad.len() as f64 && count("toygres_instances") >= 4.0)
            .then_some(())
    })
    .await;
    // Nothing changed: reconcile * is a barrier (it runs after everything above).
    sqlx::query("NOTIFY toygres_actor_control, 'reconcile *'")
        .execute(&db.pool)
        .await
        .unwrap();
    converged(&db, T).await;
    assert_eq!(db.actor_id("pg-r").await.as_deref(), Some(after.as_str()));
    assert!(db.live_actors("pg-stopped").await.is_empty());
    assert_eq!(
        db.actor_id("pg-stopped").await,
        None,
        "no actor was started for a stopped instance"
    );
    let log = svc.log_text();
    assert!(log.contains("unknown instance"), "the reason is logged");
}

#[tokio::test]
async fn one_leader_among_two_replicas_and_failover_within_ten_seconds() {
    let db = TestDb::new().await;
    let mut a = ServiceProc::start(&db, &[]).await;
    let mut b = ServiceProc::start(&db, &[]).await;
    for i in 0..10 {
        db.insert_instance(&format!("pg-ha-{i}"), "running", None)
            .await;
    }
    let leaders = wait_until("exactly one leader", T, || async {
        let l = (a.is_leader().await, b.is_leader().await);
        (l.0 != l.1).then_some(l)
    })
    .await;
    converged(&db, T).await;
    let (leader, follower) = if leaders.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Sample "at most one live actor per instance" continuously while we kill the leader.
    let sampler = {
        let pool = db.pool.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = tokio::spawn(async move {
            let mut worst = 0i64;
            let mut samples = 0;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(max(n), 0) FROM (SELECT substr(i.instance_id, 7, 36), count(*) n
                       FROM toygres_actors_duroxide.instances i JOIN toygres_actors_duroxide.executions e
                         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                      WHERE e.status = 'Running' GROUP BY 1) x",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                worst = worst.max(n);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (worst, samples)
        });
        (stop, h)
    };
    leader.kill();
    let killed_at = Instant::now();
    db.insert_instance("pg-ha-after", "running", None).await;
    wait_until("the follower leads", Duration::from_secs(10), || async {
        follower.is_leader().await.then_some(())
    })
    .await;
    let failover = killed_at.elapsed();
    converged(&db, T).await;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, samples) = sampler.1.await.unwrap();
    eprintln!(
        "failover took {failover:?}; {samples} samples, max live actors per instance {worst}"
    );
    assert!(failover < Duration::from_secs(10));
    assert_eq!(worst, 1, "never two live actors for one instance");
    // Converged counts a durably enqueued start; the actor runs once Duroxide has taken it.
    wait_until("pg-ha-after's one actor runs", T, || async {
        (db.live_actors("pg-ha-after").await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stale_actor_with_a_hanging_probe_is_detected_and_healed() {
    let db = TestDb::new().await;
    let (hang, _server) = support::black_hole().await;
    let svc = ServiceProc::start(
        &db,
        &["--probe-connect-timeout", "60s", "--stale-after", "3s"],
    )
    .await;
    db.insert_instance("pg-hang", "running", Some(&hang)).await;
    let first = wait_until("actor started", T, || async {
        db.actor_id("pg-hang").await
    })
    .await;
    // Its probe hangs: no check is written, the verdict turns stale, the reconciler restarts it.
    wait_until("stale detected and restarted", T, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM toygres_actors.decisions WHERE k8s_name = 'pg-hang' AND action = 'restart' AND reason LIKE '%health check%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (n >= 1).then_some(())
    })
    .await;
    assert_ne!(
        db.actor_id("pg-hang").await.as_deref(),
        Some(first.as_str())
    );
    // The instance becomes reachable: the (new) actor records it and the verdict is ok.
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_connection_string = $1 WHERE k8s_name = 'pg-hang'",
    )
    .bind(support::reachable_target())
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until("healed: verdict ok", T, || async {
        let (code, body) = svc.get("/api/instances/pg-hang/actor").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["verdict"] == "ok" && v["health_status"] == "healthy").then_some(())
    })
    .await;
}

/// A zombie — Duroxide says Running, but its queued work is gone so it never moves again —
/// is healed by the zombie rule, not by staleness: the health checks are the replica's probe
/// scheduler's (it holds the probe lease while it lives), so they keep flowing while the actor
/// is stuck; `last_health_check` stays fresh (asserted below) and only the zombie verdict can
/// ask for the restart.
#[tokio::test]
async fn zombie_actor_is_detected_and_healed() {
    let db = TestDb::new().await;
    let stale_after = Duration::from_secs(4);
    let svc = ServiceProc::start(&db, &["--check-interval", "500ms", "--stale-after", "4s"]).await;
    db.insert_instance("pg-zombie", "running", Some(&support::reachable_target()))
        .await;
    wait_until("checks flowing", T, || async {
        (db.checks_of("pg-zombie").await >= 2).then_some(())
    })
    .await;
    let actor = db.actor_id("pg-zombie").await.unwrap();
    // Simulate what a botched migration does: Duroxide says Running but its queued work
    // (the pending timer) is gone. Retry until we catch it waiting on its timer.
    let zombie_since = wait_until("queue items of the actor removed", T, || async {
        let mut tx = db.pool.begin().await.ok()?;
        sqlx::query("DELETE FROM toygres_actors_duroxide.orchestrator_queue WHERE instance_id = $1")
            .bind(&actor)
            .execute(&mut *tx)
            .await
            .ok()?;
        sqlx::query("DELETE FROM toygres_actors_duroxide.worker_queue WHERE instance_id = $1")
            .bind(&actor)
            .execute(&mut *tx)
            .await
            .ok()?;
        tx.commit().await.ok()?;
        // Still running and nothing queued for it any more?
        let queued: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM toygres_actors_duroxide.orchestrator_queue WHERE instance_id = $1)
                  + (SELECT count(*) FROM toygres_actors_duroxide.worker_queue WHERE instance_id = $1)",
        )
        .bind(&actor)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        let status = db.orchestration_status(&actor).await?.0;
        (queued == 0 && status == "Running").then(chrono::Utc::now)
    })
    .await;

    // The restart of the zombie: one decision naming the old actor. While waiting, watch the
    // API: the actor must never be called stale (its checks are fresh).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut verdicts_seen: Vec<String> = Vec::new();
    let (reason, decided_at) = loop {
        let decision: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT reason, decided_at FROM toygres_actors.decisions
              WHERE k8s_name = 'pg-zombie' AND action = 'restart' AND old_actor_id = $1
              ORDER BY decided_at LIMIT 1",
        )
        .bind(&actor)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(d) = decision {
            break d;
        }
        let (_, body) = svc.get("/api/instances/pg-zombie/actor").await;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && v["actor_id"] == actor.as_str()
            && let Some(verdict) = v["verdict"].as_str()
            && verdicts_seen.last().map(String::as_str) != Some(verdict)
        {
            verdicts_seen.push(verdict.to_string());
        }
        if Instant::now() > deadline {
            let (health, last_check) = db.health_of("pg-zombie").await;
            panic!(
                "the zombie {actor} was not restarted within 30 s (verdicts seen {verdicts_seen:?}; \
                 health {health}, last check {last_check:?}, now {}); API says: {body}",
                chrono::Utc::now()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.starts_with(&format!(
            "Duroxide says Running, but {actor} has made no progress"
        )),
        "the restart was not the zombie rule's: {reason:?} (verdicts seen {verdicts_seen:?})"
    );
    assert!(
        !verdicts_seen.iter().any(|v| v == "stale"),
        "the actor was called stale before the zombie rule acted: {verdicts_seen:?}"
    );
    // Health checks kept flowing between the zombie's making and its restart: staleness could
    // not have been the cause.
    let (checks_while_zombie, last_check_before): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT count(*), max(h.checked_at) FROM toygres_cms.instance_health_checks h
               JOIN toygres_cms.instances i ON i.id = h.instance_id
              WHERE i.k8s_name = 'pg-zombie' AND h.checked_at > $1 AND h.checked_at <= $2",
        )
        .bind(zombie_since)
        .bind(decided_at)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let check_age = last_check_before
        .map(|t| (decided_at - t).to_std().unwrap_or_default())
        .unwrap_or(Duration::MAX);
    assert!(
        checks_while_zombie >= 2 && check_age < stale_after / 2,
        "health checks were not flowing while the actor was a zombie: {checks_while_zombie} \
         check(s) between {zombie_since} and the decision at {decided_at}, the last {check_age:?} before it"
    );
    wait_until("healed: a new actor checks again", T, || async {
        let a = db.actor_id("pg-zombie").await?;
        (a != actor && db.live_actors("pg-zombie").await == vec![a.clone()]).then_some(())
    })
    .await;
    let new_actor = db.actor_id("pg-zombie").await.unwrap();
    wait_until("the new actor checked and ok", T, || async {
        let (code, body) = svc.get("/api/instances/pg-zombie/actor").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200
            && v["actor_id"] == new_actor.as_str()
            && v["verdict"] == "ok"
            && chrono::DateTime::parse_from_rfc3339(v["last_health_check"].as_str()?).ok()?
                > decided_at)
            .then_some(())
    })
    .await;
}

/// `--control-notify=off`: a raw `NOTIFY toygres_actor_control` restarts nothing, while a
/// restart requested through `toygres_cms.request_actor_restart()` is still honoured at once
/// (its own channel, `toygres_actor_restart_requested`, only makes the service read the
/// durable requests).
#[tokio::test]
async fn control_notify_off_ignores_raw_requests_but_not_durable_ones() {
    let db = TestDb::new().await;
    // A long resync: only the notification path can make the durable restart prompt.
    let svc = ServiceProc::start(
        &db,
        &["--control-notify", "off", "--resync-interval", "60s"],
    )
    .await;
    db.insert_instance("pg-off", "running", None).await;
    converged(&db, T).await;
    let before = db.actor_id("pg-off").await.unwrap();

    sqlx::query("NOTIFY toygres_actor_control, 'restart pg-off'")
        .execute(&db.pool)
        .await
        .unwrap();
    // A durable request after it, on the same connection: once it is honoured, the raw one
    // (delivered first) has been seen and ignored.
    let raw_seen_by = Instant::now();
    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-off')")
        .execute(&db.pool)
        .await
        .unwrap();
    // The service swaps the actor id first and marks the request handled after: wait for
    // the latter, which implies the former.
    wait_until("the durable restart is honoured", T, || async {
        let handled: i64 = db
            .scalar_i64(
                "SELECT count(*) FROM toygres_cms.actor_restart_requests WHERE k8s_name = 'pg-off' AND handled_at IS NOT NULL",
            )
            .await;
        (handled == 1).then_some(())
    })
    .await;
    assert!(
        raw_seen_by.elapsed() < Duration::from_secs(5),
        "the durable request waited for a resync instead of its notification"
    );
    let after = db.actor_id("pg-off").await.unwrap();
    assert_ne!(after, before, "the durable request restarted nothing");
    let restarts: i64 = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_actors.decisions WHERE k8s_name = 'pg-off' AND action = 'restart'",
        )
        .await;
    assert_eq!(restarts, 1, "only the durable request restarted pg-off");
    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        !metrics.contains(
            "toygres_actors_notifications_total{channel=\"toygres_actor_control\",op=\"restart\"} 1"
        ),
        "the raw restart was counted as handled"
    );
    // The durable request ran on the priority lane, and its metric says so.
    let on_lane = support::metric(
        &svc,
        "toygres_actors_lane_restarts_total",
        &["request=\"request\"", "outcome=\"done\""],
    )
    .await;
    assert_eq!(on_lane, 1.0, "one durable restart done on the lane");
}

/// toygres' own create flow: the row is inserted `creating` with no connection string (the
/// actor reports `unknown`), then set `running` with one. The state change checks the
/// instance at once — not at its next interval (30 s here, the default).
#[tokio::test]
async fn create_flow_is_healthy_within_a_second_of_running() {
    let db = TestDb::new().await;
    let _svc = ServiceProc::start(&db, &["--check-interval", "30s", "--stale-after", "5m"]).await;
    db.insert_instance("pg-create", "creating", None).await;
    wait_until("the creating instance reports unknown", T, || async {
        let (health, last) = db.health_of("pg-create").await;
        (health == "unknown" && last.is_some()).then_some(())
    })
    .await;
    let t = Instant::now();
    sqlx::query(
        "UPDATE toygres_cms.instances SET state = 'running', dns_connection_string = $1 WHERE k8s_name = 'pg-create'",
    )
    .bind(support::reachable_target())
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until(
        "healthy after the update",
        Duration::from_secs(20),
        || async { (db.health_of("pg-create").await.0 == "healthy").then_some(()) },
    )
    .await;
    let took = t.elapsed();
    eprintln!("creating → running with a connection string: healthy after {took:?}");
    assert!(
        took <= Duration::from_secs(1),
        "healthy only after {took:?}"
    );
}

/// The healing breaker: when the whole fleet turns stale at once (here: every
/// `last_health_check` pushed 10 minutes back, as after a CMS outage), the service restarts
/// nothing and says so (`toygres_actors_healing_paused` 1); once checks flow again through the
/// existing actors it closes by itself. No actor is replaced at any point.
#[tokio::test]
async fn a_fleet_gone_stale_at_once_pauses_healing_instead_of_restarting_it() {
    let db = TestDb::new().await;
    let svc = ServiceProc::start(
        &db,
        &[
            "--check-interval",
            "15s",
            "--stale-after",
            "20s",
            "--resync-interval",
            "2s",
        ],
    )
    .await;
    let started = Instant::now();
    for i in 0..10 {
        db.insert_instance(
            &format!("pg-wave-{i}"),
            "running",
            Some(&support::reachable_target()),
        )
        .await;
    }
    wait_until("every instance checked", T, || async {
        (db.scalar_i64(
            "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NOT NULL",
        )
        .await
            == 10)
            .then_some(())
    })
    .await;
    let actors_before: Vec<(String, String)> = sqlx::query_as(
        "SELECT k8s_name, instance_actor_orchestration_id FROM toygres_cms.instances ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    async fn paused(svc: &ServiceProc) -> Option<f64> {
        let (_, m) = svc.get("/metrics").await;
        m.lines()
            .find(|l| l.starts_with("toygres_actors_healing_paused "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    }
    assert_eq!(paused(&svc).await, Some(0.0));
    // Past the actors' grace period (a fresh actor is not stale before stale_after).
    wait_until("actors past their grace period", T, || async {
        (started.elapsed() > Duration::from_secs(22)).then_some(())
    })
    .await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET last_health_check = now() - interval '10 minutes'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until("healing paused", T, || async {
        (paused(&svc).await == Some(1.0)).then_some(())
    })
    .await;
    // Checks flow again through the same actors (within one 15 s interval); the breaker closes.
    wait_until("healing resumed", Duration::from_secs(90), || async {
        (paused(&svc).await == Some(0.0)).then_some(())
    })
    .await;
    let actors_after: Vec<(String, String)> = sqlx::query_as(
        "SELECT k8s_name, instance_actor_orchestration_id FROM toygres_cms.instances ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(actors_before, actors_after, "no actor was replaced");
    let restarts = db
        .scalar_i64(
            "SELECT count(*) FROM toygres_actors.decisions WHERE action IN ('restart', 're-lease')",
        )
        .await;
    assert_eq!(restarts, 0, "the breaker let heals through");
}
