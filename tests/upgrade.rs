//! Rolling upgrade from the previous release, with that release's real binary.
//!
//! The previous release led through a session advisory lock; this one leads through a
//! leader row with terms, and also takes the old lock (see `migrations/0004`). The test runs
//! the previous release's binary (built from git history by `scripts/test.sh`, path in
//! `TOYGRES_ACTORS_PREV_BIN`) beside this release's, in the documented upgrade order, and
//! samples both replicas' leadership the whole time: there must never be two reconcilers.
//!
//! It is also the move of the Duroxide store: the previous release ran its store on
//! `toygres_duroxide` (toygres' own server's schema); this one runs on `toygres_actors_duroxide`
//! and adopts the actors the previous release left in `toygres_duroxide` (ours started in the
//! new store, the old ones deleted there), touching nothing of toygres' that lives there.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{ServiceProc, TestDb, wait_until};

fn previous_release() -> std::path::PathBuf {
    let path = std::env::var_os("TOYGRES_ACTORS_PREV_BIN").unwrap_or_else(|| {
        panic!(
            "TOYGRES_ACTORS_PREV_BIN is not set: run the suite with scripts/test.sh, which builds \
             the previous release from git history"
        )
    });
    let path = std::path::PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} does not exist: run scripts/test.sh",
        path.display()
    );
    path
}

async fn is_leader(http: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    match client.get(format!("{http}/readyz")).send().await {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .map(|v| v["leader"] == true)
            .unwrap_or(false),
        Err(_) => false,
    }
}

async fn decided_by(db: &TestDb, k8s_name: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT replica FROM toygres_actors.decisions
          WHERE k8s_name = $1 AND action = 'start' AND error IS NULL
          ORDER BY decided_at LIMIT 1",
    )
    .bind(k8s_name)
    .fetch_optional(&db.pool)
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_upgrade_from_the_previous_release_never_runs_two_reconcilers() {
    let prev = previous_release();
    // The previous release migrates the database it finds: start from an empty one.
    let db = TestDb::empty().await;
    let target = support::reachable_target();
    let mut old = ServiceProc::start_binary(&prev, &db.url, &["--replica", "old-release"]).await;
    wait_until(
        "the previous release leads",
        Duration::from_secs(30),
        || async { is_leader(&old.http).await.then_some(()) },
    )
    .await;
    for i in 0..10 {
        db.insert_instance(&format!("pg-up-{i}"), "running", Some(&target))
            .await;
    }
    wait_until(
        "the previous release started every actor",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check IS NOT NULL",
            )
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (n == 10).then_some(())
        },
    )
    .await;

    // Upgrade order: this release starts beside it (and migrates first).
    let new = ServiceProc::start_production(&db.url, &["--replica", "new-release"]).await;

    // Sample both replicas' leadership for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let both = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, both, samples) = (stop.clone(), both.clone(), samples.clone());
        let (old_http, new_http) = (old.http.clone(), new.http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let (a, b) = tokio::join!(is_leader(&old_http), is_leader(&new_http));
                samples.fetch_add(1, Ordering::SeqCst);
                if a && b {
                    both.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    // While the previous release holds its lock, the new one never leads: events go to the
    // old reconciler only. Several of the new replica's leader ticks (2 s) pass meanwhile.
    let watch_from = Instant::now();
    db.insert_instance("pg-up-during", "running", Some(&target))
        .await;
    wait_until(
        "the old reconciler handles an insert",
        Duration::from_secs(30),
        || async { decided_by(&db, "pg-up-during").await },
    )
    .await;
    wait_until(
        "ten seconds beside the previous release",
        Duration::from_secs(20),
        || async {
            assert!(
                !is_leader(&new.http).await,
                "the new release leads while the previous one holds its lock"
            );
            (watch_from.elapsed() >= Duration::from_secs(10)).then_some(())
        },
    )
    .await;
    assert_eq!(
        decided_by(&db, "pg-up-during").await.as_deref(),
        Some("old-release")
    );

    // The previous release is stopped (rolled): the new one takes over within 15 s.
    let stopped = Instant::now();
    let stopped_at = chrono::Utc::now();
    old.stop();
    // toygres' own server has work in its store (a create nobody ran yet): never ours to touch.
    let toygres_store = std::sync::Arc::new(
        duroxide_pg::PostgresProvider::new_with_schema(&db.url, Some("toygres_duroxide"))
            .await
            .expect("toygres' store"),
    );
    duroxide::Client::new(toygres_store)
        .start_orchestration(
            "create-pg-toygres",
            "toygres-orchestrations::orchestration::create-instance",
            "{}",
        )
        .await
        .expect("enqueue toygres' work");
    wait_until("the new release leads", Duration::from_secs(15), || async {
        is_leader(&new.http).await.then_some(())
    })
    .await;
    eprintln!(
        "new release leads {:?} after the old one stopped",
        stopped.elapsed()
    );
    db.insert_instance("pg-up-after", "running", Some(&target))
        .await;
    wait_until(
        "the new reconciler handles an insert",
        Duration::from_secs(20),
        || async { decided_by(&db, "pg-up-after").await },
    )
    .await;
    assert_eq!(
        decided_by(&db, "pg-up-after").await.as_deref(),
        Some("new-release")
    );

    // Everything the old release started goes on under the new one: one live actor each,
    // checks flowing (the old replica's probe leases are claimed: it has no heartbeat).
    let after = chrono::Utc::now();
    wait_until(
        "every instance checked by the new release",
        Duration::from_secs(60),
        || async {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_cms.instances
              WHERE last_health_check IS NULL OR last_health_check < $1",
            )
            .bind(after)
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (behind == 0).then_some(())
        },
    )
    .await;
    let doubled = support::doubled_live_actors(&db).await;
    assert_eq!(doubled, 0, "an instance has two live actors");

    // The store moved: every row names a live actor in the new store, none of ours lives on in
    // toygres_duroxide, and each move is an `adopt` decision.
    wait_until(
        "every actor moved to the new store",
        Duration::from_secs(60),
        || async {
            let moved = db
                .scalar_i64(
                    "SELECT count(*) FROM toygres_cms.instances c
                       JOIN toygres_actors_duroxide.executions e
                         ON e.instance_id = c.instance_actor_orchestration_id AND e.status = 'Running'",
                )
                .await;
            let left = support::alive_in(&db, "toygres_duroxide", "toygres::InstanceActor").await;
            (moved == 12 && left == 0).then_some(())
        },
    )
    .await;
    let adopted = db
        .scalar_i64(
            "SELECT count(DISTINCT instance_id) FROM toygres_actors.decisions
              WHERE action = 'adopt' AND error IS NULL AND replica = 'new-release'",
        )
        .await;
    assert!(adopted >= 11, "adopt decisions for {adopted} instances");
    // Nothing of toygres' touched: its queued start was never fetched.
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempt_count FROM toygres_duroxide.orchestrator_queue
          WHERE instance_id = 'create-pg-toygres'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("toygres' start still queued");
    assert_eq!(attempts, 0, "toygres' work was fetched");
    // No instance went unchecked longer than the handoff bound across the move.
    let gap: f64 = sqlx::query_scalar(
        "SELECT coalesce(max(gap), 0)::float8 FROM (
             SELECT extract(epoch FROM checked_at - lag(checked_at)
                        OVER (PARTITION BY instance_id ORDER BY checked_at)) AS gap
               FROM toygres_cms.instance_health_checks
              WHERE checked_at > $1 - interval '40 seconds') g",
    )
    .bind(stopped_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    eprintln!("longest gap between two checks of an instance across the move: {gap:.1} s");
    assert!(
        gap <= toygres_actors::config::HANDOFF_BOUND.as_secs_f64(),
        "an instance went {gap:.1} s without a check across the move"
    );

    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    let (n, overlap) = (samples.load(Ordering::SeqCst), both.load(Ordering::SeqCst));
    eprintln!("leadership sampled {n} times, both leading {overlap} times");
    assert!(n > 50, "too few samples ({n})");
    assert_eq!(overlap, 0, "both releases led at the same time");
}
