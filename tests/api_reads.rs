//! The API's reads under load and off loopback (issue #32, item 3), with a real service on
//! a real PostgreSQL:
//!
//! * `GET /api/actors` × 200 at once on a 10,000-instance fleet: every request answers 200
//!   within the time limit, and the CMS does no more work than the fleet poll's own (the
//!   list comes from the poll's snapshot, not from a fleet query per request): measured as
//!   the rows read from `toygres_cms.instances` in the test's own database
//!   (`pg_stat_user_tables`) and the CPU time of that database's backends (`/proc`);
//! * bound to `0.0.0.0`, every read of the fleet without the token is refused (401), also
//!   when it arrives through 127.0.0.1: the rule keys on the bind address, not the peer;
//! * the router's bounds: a request over `--http-timeout` answers a JSON 503, and requests
//!   beyond `--http-concurrency` wait for a slot while `/healthz` answers at once.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ServiceProc, TestDb, wait_until};

const FLEET: i64 = 10_000;
const CONCURRENT: usize = 200;
const API_TOKEN: &str = "tok-W9x-api-secret";
const READ_TOKEN: &str = "tok-R7q-read-secret";
/// The service's default `--http-timeout`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows read from `toygres_cms.instances` by every backend of this database so far.
async fn instance_rows_read(db: &TestDb) -> i64 {
    db.scalar_i64(
        "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::int8
           FROM pg_stat_user_tables
          WHERE schemaname = 'toygres_cms' AND relname = 'instances'",
    )
    .await
}

/// The backends serving this database (other than the asking one).
async fn backends(db: &TestDb) -> BTreeSet<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&db.pool)
    .await
    .expect("pg_stat_activity")
    .into_iter()
    .collect()
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`; `None` when it is
/// gone or not on this machine.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the 3rd field of the
    // line, utime the 14th and stime the 15th.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(ticks as f64 / per_second as f64)
}

/// One GET; the body is counted as it streams (200 bodies of megabytes are not kept).
async fn timed_get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, usize, Duration) {
    let started = Instant::now();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut r = req.send().await.expect("HTTP request");
    let status = r.status().as_u16();
    let mut len = 0;
    while let Some(chunk) = r.chunk().await.expect("body") {
        len += chunk.len();
    }
    (status, len, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_list_on_a_10k_fleet_takes_200_concurrent_reads_without_loading_the_cms() {
    let db = TestDb::new().await;
    // The fleet, in one statement, before the service starts (no insert hints to handle).
    // Stopped instances call for no actor: the fleet query and the list are as large as for
    // running ones, without 10,000 actors to start on a test machine.
    sqlx::query(
        "INSERT INTO toygres_cms.instances
             (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id)
         SELECT 'tester', 'pg-load-' || g, '16', 10, 'stopped', 'create-1'
           FROM generate_series(1, $1::int8) g",
    )
    .bind(FLEET)
    .execute(&db.pool)
    .await
    .expect("bulk insert");

    // Bound beyond loopback, with both tokens; production timers (the fast ones would
    // reconcile the whole fleet every 2 s).
    let svc = ServiceProc::start_bound(
        &db,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        &[
            "--api-token",
            API_TOKEN,
            "--api-read-token",
            READ_TOKEN,
            "--check-interval",
            "30s",
            "--stale-after",
            "5m",
            "--resync-interval",
            "60s",
            "--fleet-poll-interval",
            "5s",
            "--lease-renew-interval",
            "4m",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let actors_url = format!("{}/api/actors", svc.http);

    let first = wait_until(
        "the fleet snapshot lists every instance",
        Duration::from_secs(120),
        || async {
            let r = client
                .get(&actors_url)
                .bearer_auth(READ_TOKEN)
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            (v["actors"].as_array()?.len() == FLEET as usize).then_some(v)
        },
    )
    .await;
    assert!(
        first["as_of"].is_string(),
        "the snapshot's time: {}",
        first["as_of"]
    );
    let entry = &first["actors"][0];
    for key in [
        "k8s_name",
        "instance_id",
        "state",
        "health_status",
        "actor_status",
        "verdict",
        "reason",
    ] {
        assert!(!entry[key].is_null(), "{key} missing in {entry}");
    }
    assert_eq!(entry["verdict"], "idle", "{entry}");
    let (status, full_len, _) = timed_get(&client, &actors_url, Some(READ_TOKEN)).await;
    assert_eq!(status, 200);

    // Without the token, every read of the fleet is refused, though the request comes
    // through 127.0.0.1: the server is bound to 0.0.0.0.
    let reads = [
        "/metrics",
        "/api/actors",
        "/api/actors?verdict=idle",
        "/api/replicas",
        "/api/instances/pg-load-1/actor",
        "/api/instances/no-such/actor",
    ];
    for path in reads {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic tok-R7q-read-secret"),
        ] {
            let mut req = client.get(format!("{}{path}", svc.http));
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {auth:?}");
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("pg-load"),
                "{path}: a refused read shows the fleet: {body}"
            );
        }
        // Either token reads.
        for token in [READ_TOKEN, API_TOKEN] {
            let r = client
                .get(format!("{}{path}", svc.http))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let want = if path.contains("no-such") { 404 } else { 200 };
            assert_eq!(r.status(), want, "{path}");
        }
    }
    // The read token cannot act; the probes need no token.
    let r = client
        .post(format!(
            "{}/api/instances/pg-load-1/actor/restart",
            svc.http
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a POST with the read token");
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = timed_get(&client, &format!("{}{path}", svc.http), None).await;
        assert_eq!(status, 200, "{path} without a token");
    }

    // The burst: 200 reads of the list with the token and 200 without, all at once.
    let pids_before = backends(&db).await;
    let cpu_before: f64 = pids_before.iter().filter_map(|p| cpu_seconds(*p)).sum();
    let rows_before = instance_rows_read(&db).await;
    let started = Instant::now();
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for i in 0..2 * CONCURRENT {
        let (client, url) = (client.clone(), actors_url.clone());
        let token = (i % 2 == 0).then_some(READ_TOKEN);
        tasks.push(tokio::spawn(async move {
            (token.is_some(), timed_get(&client, &url, token).await)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        let (authorized, (status, len, took)) = t.await.unwrap();
        if authorized {
            assert_eq!(status, 200, "an authorized read failed");
            assert_eq!(len, full_len, "an authorized read got another body");
            assert!(
                took < HTTP_TIMEOUT,
                "a read took {took:?}, over the time limit"
            );
            latencies.push(took);
        } else {
            assert_eq!(status, 401, "a read without the token was not refused");
        }
    }
    let burst = started.elapsed();
    let pids_after = backends(&db).await;
    let cpu_after: f64 = pids_after.iter().filter_map(|p| cpu_seconds(*p)).sum();
    let gone = pids_before.difference(&pids_after).count();

    // Backends flush their statistics when they exit: stop the service, then read them.
    let log = svc.log_text();
    let mut svc = svc;
    assert!(svc.stop().success(), "the service stopped cleanly");
    let rows_read = instance_rows_read(&db).await - rows_before;

    // What one request cost the CMS when it ran the fleet's two queries itself: one
    // backend's CPU for them, here, on the same fleet.
    let per_request_cpu = {
        let mut conn = db.pool.acquire().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let before = cpu_seconds(pid);
        let schema = toygres_actors::config::DEFAULT_DUROXIDE_SCHEMA;
        let rows = sqlx::query(&toygres_actors::sql::with_duroxide_schema(
            toygres_actors::sql::FLEET,
            schema,
        ))
        .fetch_all(&mut *conn)
        .await
        .expect("the fleet query");
        assert_eq!(rows.len() as i64, FLEET);
        sqlx::query(&toygres_actors::sql::with_duroxide_schema(
            toygres_actors::sql::LIVE_ACTORS,
            schema,
        ))
        .bind(toygres_actors::config::ACTOR_ORCHESTRATION)
        .fetch_all(&mut *conn)
        .await
        .expect("the live-actor query");
        before.zip(cpu_seconds(pid)).map(|(b, a)| a - b)
    };

    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    let fleet_reads = rows_read as f64 / FLEET as f64;
    let cpu = cpu_after - cpu_before;
    support::append_reliability_row(&format!(
        "api_reads: {CONCURRENT} concurrent GET /api/actors ({:.1} MB each) + {CONCURRENT} without a token, {FLEET} instances: \
         burst {:.2} s, p50 {} ms, max {} ms (limit {} s); CMS rows read from instances {rows_read} \
         (= {fleet_reads:.1} fleet reads, a per-request query would be >= {CONCURRENT}); \
         CMS backend CPU {cpu:.2} s over {} backends ({gone} exited during the burst); \
         one fleet read (the per-request cost before) {} s of backend CPU",
        full_len as f64 / 1e6,
        burst.as_secs_f64(),
        p50.as_millis(),
        max.as_millis(),
        HTTP_TIMEOUT.as_secs(),
        pids_after.len(),
        per_request_cpu.map_or("(not measurable here)".to_string(), |c| format!("{c:.3}")),
    ));
    // The window counts the poll's own reads (every 5 s or 20x the query's time, plus what
    // the startup reads left unflushed): a handful of fleet reads, far below one per request.
    assert!(
        fleet_reads <= 20.0,
        "{rows_read} rows of instances read during the burst ({fleet_reads:.1} fleet reads) for {CONCURRENT} requests"
    );
    // The backends' CPU during the burst: below an eighth of what the requests' own fleet
    // queries would have cost (the poll's own reads fall in the window too).
    if let Some(one) = per_request_cpu
        && !pids_after.is_empty()
        && pids_after.iter().all(|p| cpu_seconds(*p).is_some())
    {
        let per_request_total = CONCURRENT as f64 * one.max(0.01);
        assert!(
            cpu < per_request_total / 8.0,
            "the CMS backends used {cpu:.2} s of CPU during the burst; {CONCURRENT} fleet reads cost {per_request_total:.2} s"
        );
    }
    assert!(
        !log.contains(API_TOKEN) && !log.contains(READ_TOKEN),
        "a token is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_slot_and_answer_503_past_the_time_limit() {
    let db = TestDb::new().await;
    db.insert_instance("pg-slow", "stopped", None).await;
    let svc = ServiceProc::start(&db, &["--http-concurrency", "2", "--http-timeout", "2s"]).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", svc.http);
    let (status, _, _) = timed_get(&client, &url("/metrics"), None).await;
    assert_eq!(status, 200);

    // Reads of the instance block behind an exclusive lock on its table, holding both slots.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE toygres_cms.instances IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let sent_at = Instant::now();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let (client, u) = (client.clone(), url("/api/instances/pg-slow/actor"));
            tokio::spawn(async move {
                let r = client.get(&u).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get(reqwest::header::RETRY_AFTER).is_some();
                (status, retry, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    wait_until(
        "two API requests waiting on the lock",
        Duration::from_secs(10),
        || async {
            let waiting = db
                .scalar_i64(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'
                        AND query LIKE '%NAME is a k8s_name%'",
                )
                .await;
            (waiting >= 2).then_some(())
        },
    )
    .await;

    // /metrics reads no database: it waits only for a slot, which it gets when a blocked
    // request gives up at the time limit (2 s after it arrived, so after `sent_at` + 2 s).
    let third = {
        let (client, u) = (client.clone(), url("/metrics"));
        tokio::spawn(async move {
            let (status, _, took) = timed_get(&client, &u, None).await;
            (status, took, Instant::now())
        })
    };
    // Meanwhile the probes, which take no slot, answer at once.
    let (status, _, took) = timed_get(&client, &url("/healthz"), None).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(500),
        "/healthz waited {took:?}"
    );
    for t in blocked {
        let (status, retry, body) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a request blocked in the database answers within the time limit")
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(retry, "a 503 says when to retry");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains("longer than"), "{body}");
    }
    let (status, took, done) = third.await.unwrap();
    assert_eq!(status, 200, "/metrics once a slot is free");
    assert!(
        done >= sent_at + Duration::from_secs(2),
        "/metrics answered {:?} after the blocked requests were sent (in {took:?}), before a slot was free",
        done - sent_at
    );
    lock.rollback().await.unwrap();
    wait_until("the API answers again", Duration::from_secs(10), || async {
        let (status, _, _) = timed_get(&client, &url("/api/instances/pg-slow/actor"), None).await;
        (status == 200).then_some(())
    })
    .await;
}
