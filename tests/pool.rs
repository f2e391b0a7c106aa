//! The service's CMS pool tests a connection before use only when it may have died since its last
//! test (`toygres_actors::db`): here every one of its backends is terminated behind its back.
//! At most one statement fails (the one that finds the first dead connection); it marks the
//! pool's connections suspect, and every later statement gets a tested or a new connection.

mod support;

use support::{TestDb, wait_until};

#[tokio::test]
async fn backends_killed_behind_the_pools_back_cost_at_most_one_statement() {
    let db = TestDb::new().await;
    let pool = toygres_actors::db::watched_cms_pool(&db.url, 4)
        .await
        .unwrap();
    // Four connections in the pool, all used and back.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    // The test's own pool shares the application name: kill only the new pool's backends.
    let ours: Vec<i32> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let mut c = pool.acquire().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            v.push(pid);
            drop(c);
        }
        v
    };
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p) x",
    )
    .bind(&ours)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(killed >= 1);
    // Wait until the server has let them go.
    support::wait_until(
        "backends gone",
        std::time::Duration::from_secs(10),
        || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&ours)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;

    let mut failed = 0;
    for i in 0..20 {
        let r: Result<i32, toygres_actors::db::DbError> = sqlx::query_scalar("SELECT $1")
            .bind(i)
            .fetch_one(&pool)
            .await
            .map_err(Into::into);
        match r {
            Ok(v) => assert_eq!(v, i),
            Err(e) => {
                assert!(failed == 0, "a second statement failed: {e}");
                failed += 1;
            }
        }
    }
    eprintln!("statements failed after the kill: {failed}");
    pool.close().await;
}

/// After a burst a pool keeps its size for good under light load (sqlx hands out idle
/// connections first in, first out, so none idles long enough to time out); the trimmer
/// closes what was not needed over its window, keeping the peak in use plus a spare, and
/// never a connection in use.
#[tokio::test]
async fn a_pool_is_trimmed_to_its_recent_need_after_a_burst() {
    let db = TestDb::new().await;
    let pool = toygres_actors::db::watched_cms_pool(&db.url, 8)
        .await
        .unwrap();
    let mut trimmer = toygres_actors::db::PoolTrimmer::new(pool.clone(), "cms");
    // A burst: eight at once, all seen in use by the trimmer.
    let mut held = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..8 {
        let mut c = pool.acquire().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        pids.push(pid);
        held.push(c);
    }
    trimmer.sample();
    drop(held);
    wait_until(
        "all eight back",
        std::time::Duration::from_secs(10),
        || async { (pool.num_idle() == 8).then_some(()) },
    )
    .await;
    assert_eq!(
        trimmer.trim().await,
        0,
        "the burst's window needed all eight"
    );
    assert_eq!(pool.size(), 8);

    // Then light load: one statement at a time (every connection still used in turn), and
    // one connection held across the trim.
    let mut kept = pool.acquire().await.unwrap();
    let kept_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *kept)
        .await
        .unwrap();
    // sqlx returns a dropped connection to the pool in a task of its own: the service
    // samples at instants unrelated to its statements, so here each sample waits for that.
    let settled = || async { (pool.num_idle() + 1 == pool.size() as usize).then_some(()) };
    for _ in 0..20 {
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        wait_until(
            "the statement's connection back",
            std::time::Duration::from_secs(10),
            settled,
        )
        .await;
        trimmer.sample();
    }
    let closed = trimmer.trim().await;
    assert_eq!(
        (closed, pool.size()),
        (5, 3),
        "peak 1 in use + 2 spare are kept of eight"
    );
    // The held connection was not touched, and the closed backends are gone.
    let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
        .bind(kept_pid)
        .fetch_one(&mut *kept)
        .await
        .unwrap();
    assert_eq!(alive, 1);
    drop(kept);
    wait_until(
        "the pool's backends down to three",
        std::time::Duration::from_secs(10),
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&pids)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (n == 3).then_some(())
        },
    )
    .await;
}

/// The priority lane's connections serve rare explicit restarts: one idle for
/// `LANE_IDLE_TIMEOUT` (60 s) is closed by the pool's reaper (which runs as often), so an
/// idle service holds none of them; sqlx's default would keep it 10 minutes.
#[tokio::test]
async fn the_lanes_connections_close_after_a_minute_idle() {
    let db = TestDb::new().await;
    let pool = toygres_actors::db::lane_cms_pool(&db.url, 4).await.unwrap();
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    let lane_sessions = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'toygres-actors-lane' AND datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n
    };
    assert!(lane_sessions().await >= 1, "the lane's pool is connected");
    let t0 = std::time::Instant::now();
    wait_until(
        "the lane's idle connections closed",
        toygres_actors::config::LANE_IDLE_TIMEOUT * 2 + std::time::Duration::from_secs(20),
        || async { (pool.size() == 0 && lane_sessions().await == 0).then_some(()) },
    )
    .await;
    eprintln!("the lane's connections closed after {:?}", t0.elapsed());
    // The next restart still finds a connection.
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
}
