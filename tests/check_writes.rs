//! The batched writes of checks (`src/check_writes.rs`, `migrations/0016`) on a real
//! PostgreSQL: checks gathered together are written by one statement, each with its own
//! fences and answer, and a row someone holds delays its own check only.

mod support;

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use support::TestDb;
use toygres_actors::check_writes::{CheckWrites, Pace};
use toygres_actors::cms::{CheckCommit, Fenced, HealthRecord, Seen};
use uuid::Uuid;

/// Replica r1 (epoch 1, live for an hour).
async fn replica_r1(db: &TestDb) {
    sqlx::query(
        "INSERT INTO toygres_actors.replicas (name, epoch, expires_at)
         VALUES ('r1', 1, now() + interval '1 hour') ON CONFLICT (name) DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// An instance `name` whose row names `actor-<name>`, leased to `holder` (epoch 1).
async fn leased(db: &TestDb, name: &str, holder: &str) -> Uuid {
    let id = db.insert_instance(name, "running", Some("host=h")).await;
    let actor = format!("actor-{name}");
    sqlx::query(
        "UPDATE toygres_cms.instances SET instance_actor_orchestration_id = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(&actor)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, holder_epoch, expires_at)
         VALUES ($1, $2, $3, 1, now() + interval '1 hour')",
    )
    .bind(id)
    .bind(&actor)
    .bind(holder)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

fn seen(target: &str) -> Seen {
    Seen {
        state: "running".into(),
        target: Some(target.into()),
    }
}

/// Write one check of `name` through `writes` as replica r1 would.
async fn write(
    writes: &CheckWrites,
    id: Uuid,
    name: &str,
    observed: &str,
    target: &str,
) -> Result<Fenced, toygres_actors::db::DbError> {
    let actor = format!("actor-{name}");
    let rec = HealthRecord {
        instance_id: id,
        actor_id: &actor,
        observed,
        keep_status: false,
        postgres_version: Some("16.1"),
        response_time_ms: Some(3),
        error: None,
    };
    writes
        .write(&rec, ("r1", 1), &seen(target), Pace::Gathered)
        .await
}

/// Twenty periodic checks finishing together: one statement writes them (one database
/// timestamp on every history row), each answered as the single-check write would answer
/// it — written with its previous status, a changed row returned as it is now, a lease held
/// by another replica refused — and a status that changed is announced on toygres_health.
#[tokio::test]
async fn checks_finishing_together_are_written_by_one_statement_each_with_its_fences() {
    let db = TestDb::new().await;
    replica_r1(&db).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(leased(&db, &format!("pg-{i}"), "r1").await);
    }
    // pg-moved's target changed after its probe; pg-theirs' lease is another replica's.
    let moved = leased(&db, "pg-moved", "r1").await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET dns_connection_string = 'host=new' WHERE id = $1",
    )
    .bind(moved)
    .execute(&db.pool)
    .await
    .unwrap();
    let theirs = leased(&db, "pg-theirs", "r2").await;
    let mut health = PgListener::connect_with(&db.pool).await.unwrap();
    health.listen("toygres_health").await.unwrap();

    let writes = CheckWrites::start(db.pool.clone(), CheckCommit::Async);
    let names: Vec<String> = (0..ids.len()).map(|i| format!("pg-{i}")).collect();
    let all = ids
        .iter()
        .zip(&names)
        .map(|(id, name)| write(&writes, *id, name, "healthy", "host=h"));
    let (answers, moved_answer, theirs_answer) = tokio::join!(
        futures::future::join_all(all),
        write(&writes, moved, "pg-moved", "healthy", "host=h"),
        write(&writes, theirs, "pg-theirs", "healthy", "host=h"),
    );
    for a in answers {
        match a.unwrap() {
            Fenced::Written { previous, now } => {
                assert_eq!(previous, "unknown");
                assert_eq!(now, seen("host=h"));
            }
            other => panic!("a leased, unchanged check was answered {other:?}"),
        }
    }
    assert_eq!(moved_answer.unwrap(), Fenced::Changed(seen("host=new")));
    assert_eq!(theirs_answer.unwrap(), Fenced::Refused);

    let (rows, stamps): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT checked_at) FROM toygres_cms.instance_health_checks",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows, 20,
        "a history row for each written check, none for the others"
    );
    assert_eq!(stamps, 1, "the twenty checks were written by one statement");
    let healthy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instances
          WHERE health_status::text = 'healthy' AND last_health_check IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(healthy, 20);
    let mut announced = std::collections::HashSet::new();
    while announced.len() < 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), health.recv())
            .await
            .expect("a toygres_health notification for each changed status")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        assert_eq!(
            (v["old"].as_str(), v["new"].as_str()),
            (Some("unknown"), Some("healthy"))
        );
        announced.insert(v["k8s_name"].as_str().unwrap().to_string());
    }
}

/// A CMS session holds one instance's row: that check waits (at most the 2 s lock bound of
/// the single-check write it falls back to), the others gathered with it are written at
/// once.
#[tokio::test]
async fn a_held_row_delays_its_own_check_only() {
    let db = TestDb::new().await;
    replica_r1(&db).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(leased(&db, &format!("pg-{i}"), "r1").await);
    }
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM toygres_cms.instances WHERE id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *holder)
        .await
        .unwrap();

    let writes = CheckWrites::start(db.pool.clone(), CheckCommit::Async);
    let started = Instant::now();
    let held = tokio::spawn({
        let writes = writes.clone();
        let id = ids[0];
        async move {
            let answer = write(&writes, id, "pg-0", "healthy", "host=h").await;
            (answer, started.elapsed())
        }
    });
    let others = futures::future::join_all(ids.iter().enumerate().skip(1).map(|(i, id)| {
        let writes = writes.clone();
        let id = *id;
        async move { write(&writes, id, &format!("pg-{i}"), "healthy", "host=h").await }
    }))
    .await;
    let others_took = started.elapsed();
    for a in others {
        assert!(matches!(a.unwrap(), Fenced::Written { .. }));
    }
    assert!(
        others_took < Duration::from_millis(1500),
        "the others were written in {others_took:?}, not after the held row's lock bound"
    );
    assert!(
        !held.is_finished(),
        "the held row's check is still waiting for it"
    );
    let (answer, took) = held.await.unwrap();
    assert!(answer.is_err(), "the held row's check gives up: {answer:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "it gave up after {took:?}"
    );
    holder.rollback().await.unwrap();
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM toygres_cms.instance_health_checks")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(written, 9);
}

/// As many held rows as there are batch slots, each met by a batch of its own: the batch
/// statement skips the held row, and its check waits for it (up to its 2 s bound) written
/// alone, holding no batch slot, so the checks gathered meanwhile are written at once.
#[tokio::test]
async fn checks_waiting_for_held_rows_hold_no_batch_slot() {
    let db = TestDb::new().await;
    replica_r1(&db).await;
    let held_n = toygres_actors::check_writes::MAX_IN_FLIGHT;
    let mut ids = Vec::new();
    for i in 0..held_n + 10 {
        ids.push(leased(&db, &format!("pg-{i}"), "r1").await);
    }
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM toygres_cms.instances WHERE id = ANY($1) FOR UPDATE")
        .bind(&ids[..held_n])
        .execute(&mut *holder)
        .await
        .unwrap();
    let writes = CheckWrites::start(db.pool.clone(), CheckCommit::Async);
    let mut waiting = Vec::new();
    for (i, id) in ids.iter().enumerate().take(held_n) {
        let (writes, id, name) = (writes.clone(), *id, format!("pg-{i}"));
        waiting.push(tokio::spawn(async move {
            write(&writes, id, &name, "healthy", "host=h").await
        }));
        // One at a time: each is its own batch, now waiting for its row.
        let name = db.name.clone();
        support::wait_until(
            "the check waiting for its held row",
            Duration::from_secs(10),
            || {
                let (pool, name) = (db.pool.clone(), name.clone());
                async move {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = $1 AND wait_event_type = 'Lock'",
                    )
                    .bind(name)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    (n as usize == i + 1).then_some(())
                }
            },
        )
        .await;
    }
    let started = Instant::now();
    let names: Vec<String> = (held_n..ids.len()).map(|i| format!("pg-{i}")).collect();
    let others = futures::future::join_all(
        ids[held_n..]
            .iter()
            .zip(&names)
            .map(|(id, name)| write(&writes, *id, name, "healthy", "host=h")),
    )
    .await;
    let took = started.elapsed();
    for a in others {
        assert!(matches!(a.unwrap(), Fenced::Written { .. }));
    }
    assert!(
        took < Duration::from_millis(1500),
        "the others took {took:?}: they waited for a slot a held row's check kept"
    );
    for w in waiting {
        assert!(w.await.unwrap().is_err(), "a held row's check gives up");
    }
    holder.rollback().await.unwrap();
}
