//! A new instance's first probe runs while the actor's start commits (`Prober::prepare`:
//! connect, then the probe query), and the first check takes its answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{TestDb, reachable_target, url_for_db, wait_until};
use toygres_actors::probe::{ProbeSettings, Prober};

/// Probe backends connected to this test's own database.
async fn probe_backends(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = $1 AND application_name = 'toygres-actors-probe' ORDER BY pid",
    )
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// A prober keeping connections, as the service's.
fn prober() -> Arc<Prober> {
    Arc::new(Prober::new(ProbeSettings {
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        keep_connections: 16,
        max_concurrent: 4,
    }))
}

/// A test database as the target, and a prober that has prepared `instance`'s probe of it.
async fn prepared() -> (TestDb, String, Arc<Prober>, uuid::Uuid) {
    let db = TestDb::new().await;
    let target = url_for_db(&reachable_target(), &db.name);
    let prober = prober();
    let instance = uuid::Uuid::new_v4();
    prober.prepare(instance, &target);
    (db, target, prober, instance)
}

/// The one probe backend on the test's database once `prepare` has opened it.
async fn prepared_backend(db: &TestDb) -> i32 {
    wait_until(
        "the prepared connection",
        Duration::from_secs(20),
        || async {
            match probe_backends(db).await.as_slice() {
                [pid] => Some(*pid),
                _ => None,
            }
        },
    )
    .await
}

/// The probe backend's last query and when it started (the database's clock), once it has
/// answered the probe query and sits idle.
async fn answered_probe(db: &TestDb) -> (i32, chrono::DateTime<chrono::Utc>) {
    wait_until(
        "the prepared probe's query answered",
        Duration::from_secs(20),
        || async {
            sqlx::query_as(
                "SELECT pid, query_start FROM pg_stat_activity
                  WHERE datname = $1 AND application_name = 'toygres-actors-probe'
                    AND state = 'idle' AND query LIKE '%pg_is_in_recovery()%'",
            )
            .bind(&db.name)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await
}

/// `prepare` asks the probe query itself, before any check does; a check that comes within
/// the second takes that answer and asks nothing more (the backend's last query is still the
/// prepared one), on the connection it opened.
#[tokio::test]
async fn the_first_probe_asks_its_query_before_the_check_does() {
    let (db, target, prober, instance) = prepared().await;
    let (pid, asked) = answered_probe(&db).await;
    let seen = std::time::Instant::now();
    let result = prober.probe(instance, &target).await;
    assert!(result.ok, "{:?}", result.error);
    let after = answered_probe(&db).await;
    assert_eq!(after.0, pid, "the check used the prepared connection");
    // The answer came before we saw it; a check within half a second of that is within the
    // second the answer stays fresh (a slower machine only skips this assertion).
    if seen.elapsed() < Duration::from_millis(500) {
        assert_eq!(after.1, asked, "the check asked the probe query again");
    }
}

/// An answer older than a second is no check's observation: the check asks again, on the
/// connection the prepared probe opened.
#[tokio::test]
async fn a_prepared_answer_older_than_a_second_is_asked_again() {
    let (db, target, prober, instance) = prepared().await;
    let (pid, asked) = answered_probe(&db).await;
    wait_until(
        "the prepared answer older than 1.2 s",
        Duration::from_secs(20),
        || async {
            let age: f64 =
                sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp() - $1)::float8")
                    .bind(asked)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (age > 1.2).then_some(())
        },
    )
    .await;
    let result = prober.probe(instance, &target).await;
    assert!(result.ok, "{:?}", result.error);
    let (again_pid, again) = answered_probe(&db).await;
    assert_eq!(again_pid, pid, "asked again on the prepared connection");
    assert!(again > asked, "the check asked the probe query again");
}

/// The connection `prepare` opened is the one the probe uses: after the probe there is
/// still exactly one probe backend on the target, the prepared one (a probe that connected
/// itself would have left a second).
#[tokio::test]
async fn the_first_probe_runs_on_the_connection_prepared_for_it() {
    let (db, target, prober, instance) = prepared().await;
    let prepared = prepared_backend(&db).await;
    let result = prober.probe(instance, &target).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(probe_backends(&db).await, vec![prepared]);
    // Preparing again while that connection is kept opens nothing.
    prober.prepare(instance, &target);
    let again = prober.probe(instance, &target).await;
    assert!(again.ok);
    assert_eq!(probe_backends(&db).await, vec![prepared]);
}

/// A connection prepared for one target is not used for another: the probe connects itself.
#[tokio::test]
async fn a_prepared_connection_serves_only_its_own_target() {
    let (db, target, prober, instance) = prepared().await;
    let prepared = prepared_backend(&db).await;
    let other = format!("{target}?sslmode=disable");
    let result = prober.probe(instance, &other).await;
    assert!(result.ok, "{:?}", result.error);
    // The other target's probe connected itself and is kept; the prepared one was dropped.
    let after = wait_until(
        "the unused prepared connection closed",
        Duration::from_secs(20),
        || async {
            let b = probe_backends(&db).await;
            (b.len() == 1).then_some(b)
        },
    )
    .await;
    assert_ne!(after, vec![prepared]);
}

/// A target that accepts and never answers: the prepared connection's failure is the first
/// probe's, so the probe fails after one connect timeout, not after the prepared attempt's and
/// then its own.
#[tokio::test]
async fn a_hanging_target_costs_the_first_probe_one_connect_timeout() {
    let (hang, _black_hole) = support::black_hole().await;
    let timeout = Duration::from_secs(2);
    let prober = Arc::new(Prober::new(ProbeSettings {
        connect_timeout: timeout,
        query_timeout: timeout,
        keep_connections: 16,
        max_concurrent: 4,
    }));
    let instance = uuid::Uuid::new_v4();
    let started = std::time::Instant::now();
    prober.prepare(instance, &hang);
    let result = prober.probe(instance, &hang).await;
    let took = started.elapsed();
    assert!(!result.ok);
    assert!(
        took < timeout + timeout / 2,
        "the probe took {took:?}, more than one connect timeout ({timeout:?})"
    );
}

/// A single start's first Duroxide turn waits for its first check (`src/first_checks.rs`):
/// the replica's orchestration fetch held (`toygres_actors_duroxide_fetch_held_seconds`) and,
/// unless the hold ran into its 50 ms bound (a slow machine), the actor's first history
/// event is no older than the first health row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_starts_first_turn_comes_after_its_first_health_row() {
    let db = TestDb::new().await;
    let svc = support::ServiceProc::start(&db, &[]).await;
    wait_until("leader", Duration::from_secs(30), || async {
        svc.is_leader().await.then_some(())
    })
    .await;
    let target = url_for_db(&reachable_target(), &db.name);
    let id = db
        .insert_instance("pg-first", "running", Some(&target))
        .await;
    let actor = wait_until(
        "the first health row and the actor's first turn",
        Duration::from_secs(30),
        || async {
            let actor = db.actor_id("pg-first").await?;
            let (health, _) = db.health_of("pg-first").await;
            let (status, _) = db.orchestration_status(&actor).await?;
            (health == "healthy" && status == "Running").then_some(actor)
        },
    )
    .await;
    let holds = support::metric(
        &svc,
        "toygres_actors_duroxide_fetch_held_seconds_count",
        &[],
    )
    .await;
    let held = support::metric(&svc, "toygres_actors_duroxide_fetch_held_seconds_sum", &[]).await;
    assert!(
        holds >= 1.0,
        "no orchestration fetch waited for the first check"
    );
    let (first_row, first_turn): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT (SELECT min(checked_at) FROM toygres_cms.instance_health_checks
                      WHERE instance_id = $1),
                    (SELECT min(created_at) FROM toygres_actors_duroxide.history
                      WHERE instance_id = $2)",
        )
        .bind(id)
        .bind(&actor)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    if held < toygres_actors::first_checks::HOLD_AT_MOST.as_secs_f64() * holds {
        assert!(
            first_turn >= first_row,
            "the first turn ({first_turn}) came before the first health row ({first_row})"
        );
    }
}
