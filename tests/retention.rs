//! Tables that stop growing: the leader's pruning pass deletes the rows of replicas gone for
//! longer than the grace window that hold no probe lease (`toygres_actors.replicas` gets a
//! row per replica name ever seen, and every replica's tick counts over it), and restart
//! requests handled longer ago than the history retention. Pending requests, live replicas,
//! recently gone ones and any name that still holds a lease stay.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{Stack, TestDb};
use toygres_actors::config;

/// Replica names registered, then expired, in the scale test.
const GONE: i64 = 1000;
/// Of them, how many expired within the grace window (kept).
const RECENT: i64 = 10;
/// Instances whose leases the two live replicas hold while the ticks are timed.
const INSTANCES: i64 = 1000;
/// Ticks timed per measurement.
const TICKS: usize = 1000;
const WARM_UP: usize = 50;

async fn names(db: &TestDb) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT name FROM toygres_actors.replicas")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Median and 90th percentile (milliseconds, client side on loopback) of `TICKS` ticks of
/// the live replica `live-a`, each its own statement and transaction as in the service,
/// after `WARM_UP` untimed ones (the first ones balance the leases and warm the caches).
async fn time_ticks(db: &TestDb) -> (f64, f64) {
    let mut conn = db.pool.acquire().await.unwrap();
    let mut took = Vec::with_capacity(TICKS);
    for i in 0..WARM_UP + TICKS {
        let started = Instant::now();
        let status: String = sqlx::query_scalar(
            "SELECT status FROM toygres_actors.replica_tick('live-a', 1, $1, $2, true)",
        )
        .bind(config::REPLICA_TTL.as_secs_f64())
        .bind(config::LEASE_MOVES_PER_TICK)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if i >= WARM_UP {
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        assert_eq!(status, "ok");
    }
    took.sort_by(f64::total_cmp);
    (took[TICKS / 2], took[TICKS * 9 / 10])
}

async fn tick_status(db: &TestDb, name: &str, epoch: i64) -> String {
    sqlx::query_scalar("SELECT status FROM toygres_actors.replica_tick($1, $2, 15, 250, true)")
        .bind(name)
        .bind(epoch)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// 1,000 replica names registered and expired: the table is pruned to the live ones, the
/// ones gone within the grace window and a long-gone name that still holds a lease; a tick
/// costs what it cost before they came. The figures are printed for the docs.
#[tokio::test]
async fn a_thousand_replica_names_come_and_go_and_the_tick_costs_what_it_did() {
    let db = TestDb::new().await;
    // Two live replicas sharing a fleet's leases.
    sqlx::raw_sql(&format!(
        "SELECT toygres_actors.replica_register('live-a', 1, 3600, 'test');
         SELECT toygres_actors.replica_register('live-b', 2, 3600, 'test');
         INSERT INTO toygres_cms.instances
                (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id)
         SELECT 'tester', 'pg-' || g, '16', 10, 'running', 'create-1'
           FROM generate_series(1, {INSTANCES}) g;
         INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, holder_epoch, expires_at)
         SELECT id, 'actor-' || id, CASE WHEN k8s_name < 'pg-5' THEN 'live-a' ELSE 'live-b' END,
                CASE WHEN k8s_name < 'pg-5' THEN 1 ELSE 2 END, now() + interval '1 hour'
           FROM toygres_cms.instances;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let before = time_ticks(&db).await;

    // A thousand names come (registered as the service does) and go: most expired two
    // hours ago, the last few ten minutes ago.
    sqlx::raw_sql(&format!(
        "SELECT toygres_actors.replica_register('gone-' || g, g, 15, 'test')
           FROM generate_series(1, {GONE}) g;
         UPDATE toygres_actors.replicas
            SET heartbeat_at = now() - interval '2 hours',
                expires_at = now() - interval '2 hours' + interval '15 seconds'
          WHERE name LIKE 'gone-%';
         UPDATE toygres_actors.replicas
            SET heartbeat_at = now() - interval '10 minutes',
                expires_at = now() - interval '10 minutes' + interval '15 seconds'
          WHERE name LIKE 'gone-%' AND epoch > {GONE} - {RECENT};"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let grown = time_ticks(&db).await;

    // A long-gone name still holding a lease (nobody claimed it yet) keeps its row.
    sqlx::query(
        "UPDATE toygres_actors.probe_leases SET holder = 'gone-1', holder_epoch = 1
          WHERE instance_id = (SELECT id FROM toygres_cms.instances WHERE k8s_name = 'pg-1')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pruned = toygres_actors::cms::prune_replicas(&db.pool, config::REPLICA_ROW_GRACE, None)
        .await
        .unwrap();
    assert_eq!(pruned, (GONE - RECENT - 1) as u64);
    let mut want: BTreeSet<String> = ["live-a", "live-b", "gone-1"]
        .into_iter()
        .map(String::from)
        .collect();
    want.extend((GONE - RECENT + 1..=GONE).map(|g| format!("gone-{g}")));
    assert_eq!(names(&db).await, want);
    // Pruning again deletes nothing more.
    let again = toygres_actors::cms::prune_replicas(&db.pool, config::REPLICA_ROW_GRACE, None)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let after = time_ticks(&db).await;
    // The deleted rows' space is reclaimed by autovacuum (990 dead rows are far over its
    // threshold of 50 + 20 %); a VACUUM here does that pass now.
    sqlx::query("VACUUM toygres_actors.replicas")
        .execute(&db.pool)
        .await
        .unwrap();
    let vacuumed = time_ticks(&db).await;

    // A replica that wakes up to no row of its name registers again ('expired'); only a row
    // of its name with another epoch means a newer process took the name.
    assert_eq!(tick_status(&db, "gone-2", 2).await, "expired");
    assert_eq!(tick_status(&db, "live-b", 7).await, "superseded");

    support::append_reliability_row(&format!(
        "| replica_tick, 2 live replicas, {INSTANCES} leases | median / p90 ms: \
         before {:.3} / {:.3}; with {GONE} expired names {:.3} / {:.3}; \
         after pruning {:.3} / {:.3}; after its vacuum {:.3} / {:.3} |",
        before.0, before.1, grown.0, grown.1, after.0, after.1, vacuumed.0, vacuumed.1
    ));
}

/// The leader's pass prunes handled restart requests older than the retention (pending ones
/// of any age stay) and the rows of replicas gone longer than the grace window.
#[tokio::test]
async fn the_pruning_pass_deletes_old_handled_requests_and_long_gone_replicas() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, Duration::from_millis(300), 1).await;
    let id = db.insert_instance("pg-req", "running", None).await;
    sqlx::query(
        "INSERT INTO toygres_cms.actor_restart_requests
                (instance_id, k8s_name, requested_at, handled_at, outcome)
         VALUES ($1, 'pg-req', now() - interval '9 days', now() - interval '8 days', 'old'),
                ($1, 'pg-req', now() - interval '2 hours', now() - interval '1 hour', 'recent'),
                ($1, 'pg-req', now() - interval '30 days', NULL, NULL)",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "SELECT toygres_actors.replica_register(n, 1, 15, 'test')
           FROM unnest(ARRAY['gone-long', 'gone-lately']) n;
         UPDATE toygres_actors.replicas SET expires_at = now() - interval '2 hours'
          WHERE name = 'gone-long';
         UPDATE toygres_actors.replicas SET expires_at = now() - interval '1 minute'
          WHERE name = 'gone-lately';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    toygres_actors::duties::prune_once(&stack.reconciler, config::DEFAULT_HISTORY_RETENTION)
        .await
        .unwrap();
    let outcomes: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT outcome FROM toygres_cms.actor_restart_requests ORDER BY requested_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec![None, Some("recent".to_string())]);
    let want: BTreeSet<String> = ["test", "gone-lately"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names(&db).await, want);
    stack.shutdown().await;
}

/// Both prunings are fenced by the leader's term as the others are: a pass under a term that
/// is over fails (`TA001`) and deletes nothing; the live term's pass deletes.
#[tokio::test]
async fn a_pruning_pass_of_a_lost_term_deletes_no_replica_and_no_request() {
    use sqlx::Connection;
    use toygres_actors::cms::{prune_replicas, prune_restart_requests};
    use toygres_actors::identity::Term;
    let db = TestDb::new().await;
    let id = db.insert_instance("pg-req", "running", None).await;
    sqlx::query(
        "INSERT INTO toygres_cms.actor_restart_requests (instance_id, k8s_name, handled_at)
         VALUES ($1, 'pg-req', now() - interval '8 days')",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "SELECT toygres_actors.replica_register('gone', 1, 15, 'test');
         UPDATE toygres_actors.replicas SET expires_at = now() - interval '2 hours';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // The leader's session holds its term the way the service's does (the legacy lock key
    // is a test's own).
    let mut session = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let term: i64 = sqlx::query_scalar(toygres_actors::sql::LEADER_TICK)
        .bind("p")
        .bind(1i64)
        .bind(10f64)
        .bind(0x5eed_1eaf_i64)
        .fetch_one(&mut session)
        .await
        .unwrap();
    let count = |table: &'static str| db.scalar_i64(table);
    let retention = config::DEFAULT_HISTORY_RETENTION;
    let lost = Term {
        name: "p".into(),
        epoch: 1,
        term: term - 1,
    };
    let e = prune_replicas(&db.pool, config::REPLICA_ROW_GRACE, Some(&lost))
        .await
        .expect_err("a lost term's pass must fail");
    assert!(e.to_string().contains("is over"), "{e}");
    let e = prune_restart_requests(&db.pool, retention, Some(&lost))
        .await
        .expect_err("a lost term's pass must fail");
    assert!(e.to_string().contains("is over"), "{e}");
    let replicas = "SELECT count(*) FROM toygres_actors.replicas";
    let requests = "SELECT count(*) FROM toygres_cms.actor_restart_requests";
    assert_eq!((count(replicas).await, count(requests).await), (1, 1));
    let live = Term {
        name: "p".into(),
        epoch: 1,
        term,
    };
    let gone = prune_replicas(&db.pool, config::REPLICA_ROW_GRACE, Some(&live))
        .await
        .unwrap();
    let handled = prune_restart_requests(&db.pool, retention, Some(&live))
        .await
        .unwrap();
    assert_eq!((gone, handled), (1, 1));
    assert_eq!((count(replicas).await, count(requests).await), (0, 0));
}
