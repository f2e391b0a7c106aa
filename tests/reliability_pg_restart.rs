//! Reliability: the test binary's own PostgreSQL restarted (`pg_ctl restart -m fast` and
//! `-m immediate`) under load. The service stays up, reconnects, converges, and no CMS
//! data it wrote is lost. In its own test binary because it restarts that binary's cluster.

mod support;

use std::time::{Duration, Instant};

use support::{ServiceProc, TestDb, wait_until};

#[tokio::test]
async fn postgres_restarted_under_load() {
    if support::server().embedded.is_none() {
        eprintln!("TEST_DATABASE_URL points at an external server: cannot restart it; skipped");
        return;
    }
    let db = TestDb::new().await;
    let mut svc =
        ServiceProc::start(&db, &["--check-interval", "500ms", "--stale-after", "10s"]).await;
    for i in 0..20 {
        db.insert_instance(
            &format!("pg-load-{i}"),
            "running",
            Some(&support::reachable_target()),
        )
        .await;
    }
    wait_until("checks flowing", Duration::from_secs(30), || async {
        (db.scalar_i64(
            "SELECT count(DISTINCT instance_id) FROM toygres_cms.instance_health_checks",
        )
        .await
            >= 20)
            .then_some(())
    })
    .await;
    let mut rows = Vec::new();
    for mode in ["fast", "immediate", "fast", "immediate"] {
        let before: i64 = db
            .scalar_i64("SELECT count(*) FROM toygres_cms.instance_health_checks")
            .await;
        let t = Instant::now();
        tokio::task::spawn_blocking({
            let mode = mode.to_string();
            move || {
                support::server()
                    .embedded
                    .as_ref()
                    .unwrap()
                    .restart(&mode)
                    .unwrap();
            }
        })
        .await
        .unwrap();
        // New rows during the outage go in once it is back.
        let name = format!("pg-after-{mode}-{}", rows.len());
        wait_until("database back", Duration::from_secs(30), || async {
            sqlx::query("SELECT 1")
                .execute(&db.pool)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        db.insert_instance(&name, "running", Some(&support::reachable_target()))
            .await;
        // The leader reconnects as soon as the server is back (its term outlives the outage),
        // so an insert made then gets its actor within a second, not after a reconnect pause.
        let back = Instant::now();
        wait_until("the new row's actor", Duration::from_secs(60), || async {
            db.actor_id(&name).await.map(|_| ())
        })
        .await;
        let to_actor = back.elapsed();
        assert!(
            to_actor <= Duration::from_secs(1),
            "an insert made once PostgreSQL was back ({mode}) waited {to_actor:?} for its actor"
        );
        // The service reconnects and converges: checks resume, the new instance gets an actor.
        wait_until("service recovered", Duration::from_secs(60), || async {
            let after = db
                .scalar_i64("SELECT count(*) FROM toygres_cms.instance_health_checks")
                .await;
            (after >= before + 20
                && db.checks_of(&name).await >= 1
                && db.live_actors(&name).await.len() == 1)
                .then_some(())
        })
        .await;
        let took = t.elapsed();
        let after: i64 = db
            .scalar_i64("SELECT count(*) FROM toygres_cms.instance_health_checks")
            .await;
        assert!(
            after >= before,
            "health history lost across a {mode} restart: {before} → {after}"
        );
        assert!(
            svc.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "service stayed up"
        );
        rows.push((mode, took, to_actor));
    }
    let max = rows.iter().map(|r| r.1).max().unwrap();
    let to_actor = rows.iter().map(|r| r.2).max().unwrap();
    let line = format!(
        "| PostgreSQL restart (pg_ctl -m fast ×2, -m immediate ×2) under load | {} | 0 | 0 | {:.2} s | service stayed up; no CMS rows lost; an insert made once the server was back had its actor within {:.0} ms |",
        rows.len(),
        max.as_secs_f64(),
        to_actor.as_secs_f64() * 1000.0
    );
    support::append_reliability_row(&line);
    let (code, _) = svc.get("/healthz").await;
    assert_eq!(code, 200);
}
