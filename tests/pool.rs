//! The service's CMS pool tests a connection before use only when it may have died since its last
//! test (`toygres_actors::db`): here every one of its backends is terminated behind its back.
//! At most one statement fails (the one that finds the first dead connection); it marks the
//! pool's connections suspect, and every later statement gets a tested or a new connection.

mod support;

use support::TestDb;

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
