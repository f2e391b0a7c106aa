//! No lock of ours outlives its owner, and a CMS row someone else holds delays that one
//! instance, never the fleet (migrations/0013). Two replicas at production timers (30 s
//! checks, 10 s leader TTL); the fault sits in the middle of a fenced transaction: the
//! leader's restart of an instance waits on that instance's row, held by a CMS session.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{ServiceProc, TestDb, wait_until};

/// The leader row: holder and term.
async fn leader(db: &TestDb) -> Option<(String, i64)> {
    sqlx::query_as("SELECT holder, term FROM toygres_actors.leader WHERE id = 1")
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Two replicas at the shipped defaults, `a` leading; returns them. The restart minimum
/// interval (30 s: a young actor is not replaced) is lifted so that the restart is asked of
/// an actor a few seconds old; every timer the faults depend on keeps its production value.
async fn two_replicas(db: &TestDb) -> (ServiceProc, ServiceProc) {
    let a =
        ServiceProc::start_production(&db.url, &["--replica", "a", "--restart-min-interval", "0s"])
            .await;
    wait_until("a leads", Duration::from_secs(30), || async {
        a.is_leader().await.then_some(())
    })
    .await;
    let b =
        ServiceProc::start_production(&db.url, &["--replica", "b", "--restart-min-interval", "0s"])
            .await;
    (a, b)
}

/// A CMS transaction that updated the instance's row and has not committed (as an open psql
/// session or a slow CMS transaction would): the row is held FOR NO KEY UPDATE.
async fn hold_row(db: &TestDb, name: &str) -> (sqlx::Transaction<'static, sqlx::Postgres>, i32) {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE toygres_cms.instances SET tags = tags WHERE k8s_name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (tx, pid)
}

/// How many sessions of this database named `application` wait on `holder`'s locks
/// (`pg_stat_activity` is cluster-wide: other tests' services have the same names).
async fn blocked_by(db: &TestDb, holder: i32, application: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = '{application}'
            AND {holder} = ANY(pg_blocking_pids(pid))"
    ))
    .await
}

/// The priority lane's sessions: explicit restarts run there.
const LANE: &str = "toygres-actors-lane";

async fn has_actor(db: &TestDb, name: &str) -> bool {
    db.actor_id(name).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_cms_row_delays_its_instance_only_and_never_costs_the_term() {
    let db = TestDb::new().await;
    let target = support::reachable_target();
    let (a, _b) = two_replicas(&db).await;
    db.insert_instance("pg-held", "running", Some(&target))
        .await;
    wait_until("pg-held checked", Duration::from_secs(30), || async {
        (db.checks_of("pg-held").await > 0).then_some(())
    })
    .await;
    let before = db.actor_id("pg-held").await.expect("an actor");
    let term = leader(&db).await.expect("a leader row");
    assert_eq!(term.0, "a");

    let (tx, holder) = hold_row(&db, "pg-held").await;
    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-held')")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(
        "the restart waits on the held row",
        Duration::from_secs(10),
        || async { (blocked_by(&db, holder, LANE).await > 0).then_some(()) },
    )
    .await;

    // 90 s of hold: the leader keeps its term, and every insert elsewhere gets its actor
    // within a second.
    let held_at = Instant::now();
    let mut n = 0;
    let mut slowest = Duration::ZERO;
    while held_at.elapsed() < Duration::from_secs(90) {
        let name = format!("pg-other-{n}");
        n += 1;
        let t0 = Instant::now();
        db.insert_instance(&name, "running", Some(&target)).await;
        wait_until(
            &format!("{name} gets an actor within 1 s while pg-held is held"),
            Duration::from_secs(1),
            || async { has_actor(&db, &name).await.then_some(()) },
        )
        .await;
        slowest = slowest.max(t0.elapsed());
        assert_eq!(
            leader(&db).await,
            Some(term.clone()),
            "the leader lost its term while a CMS row was held"
        );
        assert!(a.is_leader().await, "a stepped down during the hold");
        // One insert every ~5 s: the wait is a condition on the clock, not a sleep.
        let next = t0 + Duration::from_secs(5);
        wait_until("the next insert's turn", Duration::from_secs(6), || async {
            (Instant::now() >= next).then_some(())
        })
        .await;
    }
    eprintln!("{n} inserts during the 90 s hold, slowest insert → actor {slowest:?}");
    assert_eq!(
        db.actor_id("pg-held").await.as_deref(),
        Some(before.as_str())
    );

    // Released: the held instance is restarted within 2 s.
    tx.commit().await.unwrap();
    let released = Instant::now();
    wait_until(
        "pg-held restarted within 2 s of the release",
        Duration::from_secs(2),
        || async {
            (db.actor_id("pg-held").await.as_deref() != Some(before.as_str())).then_some(())
        },
    )
    .await;
    eprintln!(
        "pg-held restarted {:?} after the release",
        released.elapsed()
    );
    assert_eq!(leader(&db).await, Some(term), "one term throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_in_a_fenced_transaction_is_replaced_and_writes_nothing() {
    let db = TestDb::new().await;
    let target = support::reachable_target();
    let (a, b) = two_replicas(&db).await;
    db.insert_instance("pg-held", "running", Some(&target))
        .await;
    wait_until("pg-held has its actor", Duration::from_secs(30), || async {
        has_actor(&db, "pg-held").await.then_some(())
    })
    .await;
    let (_, old_term) = leader(&db).await.expect("a leader row");

    // The leader's restart of pg-held waits on the held row, inside its fenced transaction
    // (after assert_term, before its commit); the leader freezes there.
    let (tx, holder) = hold_row(&db, "pg-held").await;
    sqlx::query("SELECT toygres_cms.request_actor_restart('pg-held')")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(
        "the leader's fenced restart waits on the held row",
        Duration::from_secs(10),
        || async { (blocked_by(&db, holder, LANE).await > 0).then_some(()) },
    )
    .await;
    a.signal(Signal::SIGSTOP);
    let frozen_at = chrono::Utc::now();
    let frozen = Instant::now();
    tx.commit().await.unwrap();

    // Another replica leads, and a new instance gets a live actor within 20 s of the freeze.
    db.insert_instance("pg-after", "running", Some(&target))
        .await;
    wait_until(
        "pg-after gets an actor from another leader",
        Duration::from_secs(20),
        || async { has_actor(&db, "pg-after").await.then_some(()) },
    )
    .await;
    let took = frozen.elapsed();
    eprintln!("a new leader started pg-after's actor {took:?} after the leader froze");
    assert!(took <= Duration::from_secs(20));
    let (holder_now, term_now) = leader(&db).await.expect("a leader row");
    assert_eq!(holder_now, "b");
    assert!(term_now > old_term);
    assert!(b.is_leader().await);

    // Woken, the old leader notices it lost its term and writes nothing.
    a.signal(Signal::SIGCONT);
    wait_until(
        "a knows it does not lead",
        Duration::from_secs(15),
        || async { (!a.is_leader().await).then_some(()) },
    )
    .await;
    // The restart request is honoured once, by the new leader.
    wait_until(
        "the pending restart honoured",
        Duration::from_secs(30),
        || async {
            (db.scalar_i64(
                "SELECT count(*) FROM toygres_cms.actor_restart_requests WHERE handled_at IS NOT NULL",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    let by_a = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM toygres_actors.decisions
              WHERE replica = 'a' AND decided_at > '{}'::timestamptz",
            frozen_at.to_rfc3339()
        ))
        .await;
    assert_eq!(
        by_a, 0,
        "the frozen leader wrote decisions after it lost its term"
    );
    assert!(b.is_leader().await, "one leader after the old one woke");
}
