//! One clock: the database's. A leading replica whose wall clock is two minutes fast (or
//! slow), through libfaketime with the monotonic clock left true, beside a replica with a
//! true clock, both at production timers: nothing is judged stale, lagging or missing, nothing
//! is healed or restarted, checks keep their 30 s rhythm by the database's clock, and a new
//! row gets its actor at once.

mod support;

use std::time::{Duration, Instant};

use support::{ServiceProc, TestDb, wait_until};

const FLEET: usize = 20;

async fn skewed_leader_changes_nothing(skew: &str) {
    let db = TestDb::new().await;
    let target = support::reachable_target();
    let skewed =
        ServiceProc::start_production_skewed(&db.url, &["--replica", "skewed"], skew).await;
    wait_until(
        "the skewed replica leads",
        Duration::from_secs(30),
        || async { skewed.is_leader().await.then_some(()) },
    )
    .await;
    let other = ServiceProc::start_production(&db.url, &["--replica", "true-clock"]).await;
    for i in 0..FLEET {
        db.insert_instance(&format!("pg-clock-{i}"), "running", Some(&target))
            .await;
    }
    wait_until(
        "every instance checked",
        Duration::from_secs(40),
        || async {
            (db.scalar_i64(
                "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NULL",
            )
            .await
                == 0)
                .then_some(())
        },
    )
    .await;

    // Past a resync (60 s) and two check intervals: every verdict and gauge has been computed
    // many times by both replicas.
    let since = Instant::now();
    wait_until("75 s of service", Duration::from_secs(80), || async {
        (since.elapsed() >= Duration::from_secs(75)).then_some(())
    })
    .await;

    // An insert gets its actor at once.
    let t0 = Instant::now();
    db.insert_instance("pg-clock-new", "running", Some(&target))
        .await;
    wait_until(
        "pg-clock-new has an actor within 1 s",
        Duration::from_secs(1),
        || async { db.actor_id("pg-clock-new").await.map(|_| ()) },
    )
    .await;
    eprintln!("skew {skew}: insert → actor {:?}", t0.elapsed());

    let healed = db
        .scalar_i64("SELECT count(*) FROM toygres_actors.decisions WHERE action <> 'start'")
        .await;
    assert_eq!(healed, 0, "skew {skew}: something was healed or restarted");
    let oldest: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(now() - last_health_check))::float8
           FROM toygres_cms.instances WHERE k8s_name LIKE 'pg-clock-%' AND k8s_name <> 'pg-clock-new'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    eprintln!("skew {skew}: oldest last check {oldest:.1} s by the database's clock");
    assert!(
        oldest <= 45.0,
        "skew {skew}: a last check is {oldest:.1} s old"
    );
    for svc in [&skewed, &other] {
        let lagging = support::metric(svc, "toygres_actors_checks_lagging", &[]).await;
        let oldest_gauge =
            support::metric(svc, "toygres_actors_oldest_check_age_seconds", &[]).await;
        let bad = support::metric(svc, "toygres_actors_instances", &["verdict=\"stale\""]).await
            + support::metric(svc, "toygres_actors_instances", &["verdict=\"missing\""]).await
            + support::metric(svc, "toygres_actors_instances", &["verdict=\"zombie\""]).await;
        eprintln!(
            "skew {skew}: lagging {lagging}, oldest-check gauge {oldest_gauge:.1} s, stale/missing/zombie {bad}"
        );
        assert_eq!(
            lagging, 0.0,
            "skew {skew}: a replica reports lagging checks"
        );
        assert_eq!(
            bad, 0.0,
            "skew {skew}: a replica reports stale, missing or zombie actors"
        );
        assert!(
            oldest_gauge <= 45.0,
            "skew {skew}: oldest check age gauge {oldest_gauge}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_two_minutes_fast_changes_nothing() {
    skewed_leader_changes_nothing("+2m").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_two_minutes_slow_changes_nothing() {
    skewed_leader_changes_nothing("-2m").await;
}
