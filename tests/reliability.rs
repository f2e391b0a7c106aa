//! Reliability suite: faults, bad input and secrets, with figures.
//!
//! The promise under test: no instance is ever silently unmonitored, and no actor is ever
//! doubled. Each fault is injected repeatedly during a stream of CMS writes; after each
//! trial we wait for convergence and count *lost* instances (should have an actor, have
//! none) and *doubled* ones (more than one live actor — sampled continuously).
//!
//! Quick form (CI): a few trials per fault. Soak: `TOYGRES_RELIABILITY_SOAK=1 cargo test
//! --release --test reliability -- --nocapture --test-threads 1` (more trials). Each test
//! prints its summary row and appends it to `$CARGO_TARGET_TMPDIR/reliability-summary.md`.
//! PostgreSQL restarts live in `tests/reliability_pg_restart.rs` (they restart the test
//! binary's own cluster).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use support::{ServiceProc, TestDb, metric, wait_until};

fn soak() -> bool {
    std::env::var_os("TOYGRES_RELIABILITY_SOAK").is_some()
}

fn trials(quick: usize, soak_n: usize) -> usize {
    if soak() { soak_n } else { quick }
}

/// One summary row: fault, trials, lost, doubled, max convergence time. A figure the trial
/// did not measure is `None` and reads "–".
fn report(
    fault: &str,
    trials: usize,
    lost: Option<usize>,
    doubled: Option<i64>,
    max_converge: Option<Duration>,
    extra: &str,
) {
    fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "–".to_string(), |v| v.to_string())
    }
    let line = format!(
        "| {fault} | {trials} | {} | {} | {} | {extra} |",
        cell(lost),
        cell(doubled),
        cell(max_converge.map(|d| format!("{:.2} s", d.as_secs_f64())))
    );
    support::append_reliability_row(&line);
}

/// Instances whose actor situation is wrong right now: (lost — no live actor named by the row,
/// or no check for more than 2x the interval —, doubled-now, wrong-in-other-ways).
async fn audit(db: &TestDb) -> (Vec<String>, i64, Vec<String>) {
    // `overdue`: should be checked, and no check for more than 2x the suite's 30 s interval
    // (counted from its creation when it never had one).
    let rows: Vec<(uuid::Uuid, String, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, k8s_name, state::text, instance_actor_orchestration_id,
                COALESCE(last_health_check, created_at) < now() - interval '60 seconds'
           FROM toygres_cms.instances",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT i.instance_id FROM toygres_actors_duroxide.instances i
           JOIN toygres_actors_duroxide.executions e
             ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          WHERE e.status = 'Running'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for a in live {
        if a.len() >= 42 {
            by.entry(a[6..42].to_string()).or_default().push(a);
        }
    }
    let mut lost = Vec::new();
    let mut wrong = Vec::new();
    let doubled = by.values().map(|v| v.len() as i64).max().unwrap_or(0);
    for (id, name, state, actor, overdue) in rows {
        let live = by.remove(&id.to_string()).unwrap_or_default();
        let wanted = state == "creating" || state == "running";
        if wanted && (overdue || !live.iter().any(|a| Some(a) == actor.as_ref())) {
            lost.push(name);
        } else if !wanted && !live.is_empty() {
            wrong.push(format!("{name} ({state}) still has {live:?}"));
        }
    }
    for (id, live) in by {
        wrong.push(format!("deleted {id} still has {live:?}"));
    }
    (lost, doubled, wrong)
}

/// Wait for convergence; returns (time taken, lost at the deadline).
async fn converge(db: &TestDb, within: Duration) -> (Duration, usize) {
    let start = Instant::now();
    loop {
        let (lost, doubled, wrong) = audit(db).await;
        if lost.is_empty() && wrong.is_empty() && doubled <= 1 {
            return (start.elapsed(), 0);
        }
        if start.elapsed() > within {
            eprintln!("not converged: lost {lost:?}, wrong {wrong:?}");
            return (start.elapsed(), lost.len() + wrong.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the maximum number of live actors of one instance until stopped.
struct DoubleSampler {
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicI64>,
    handle: tokio::task::JoinHandle<()>,
}

impl DoubleSampler {
    fn start(db: &TestDb) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicI64::new(0));
        let (s, w, pool) = (stop.clone(), worst.clone(), db.pool.clone());
        let handle = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(max(n), 0) FROM (SELECT substr(i.instance_id, 7, 36), count(*) n
                       FROM toygres_actors_duroxide.instances i JOIN toygres_actors_duroxide.executions e
                         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                      WHERE e.status = 'Running' GROUP BY 1) x",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                w.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        DoubleSampler {
            stop,
            worst,
            handle,
        }
    }

    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        self.worst.load(Ordering::Relaxed)
    }
}

/// A stream of CMS writes: inserts, state flips, deletes, keyed by `round`.
async fn write_burst(db: &TestDb, round: usize, n: usize) {
    for i in 0..n {
        let name = format!("r{round}-{i}");
        sqlx::query(
            "INSERT INTO toygres_cms.instances (user_name, k8s_name, postgres_version, storage_size_gb, state, create_orchestration_id)
             VALUES ('u', $1, '16', 1, 'running', 'c')",
        )
        .bind(&name)
        .execute(&db.pool)
        .await
        .unwrap();
        match i % 4 {
            1 => {
                sqlx::query(
                    "UPDATE toygres_cms.instances SET state = 'stopped' WHERE k8s_name = $1",
                )
                .bind(&name)
                .execute(&db.pool)
                .await
                .unwrap();
            }
            2 => {
                sqlx::query("DELETE FROM toygres_cms.instances WHERE k8s_name = $1")
                    .bind(&name)
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
            3 if round > 0 => {
                // Bring back an instance stopped in an earlier round.
                sqlx::query(
                    "UPDATE toygres_cms.instances SET state = 'running' WHERE k8s_name = $1",
                )
                .bind(format!("r{}-1", round - 1))
                .execute(&db.pool)
                .await
                .unwrap();
            }
            _ => {}
        }
    }
}

const SERVICE_FLAGS: &[&str] = &[
    "--check-interval",
    "30s",
    "--stale-after",
    "120s",
    "--resync-interval",
    "600s",
];

#[tokio::test]
async fn listener_killed_at_random_moments() {
    let db = TestDb::new().await;
    let _svc = ServiceProc::start(&db, SERVICE_FLAGS).await;
    let sampler = DoubleSampler::start(&db);
    let n = trials(6, 50);
    let (mut lost, mut worst) = (0, Duration::ZERO);
    for round in 0..n {
        let writes = {
            let pool = db.pool.clone();
            let name = db.name.clone();
            let url = db.url.clone();
            tokio::spawn(async move {
                let db = TestDb { name, url, pool };
                write_burst(&db, round, 12).await;
            })
        };
        // A "random" moment inside the burst: vary the delay per round.
        tokio::time::sleep(Duration::from_millis(((round * 37) % 40) as u64)).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'toygres-actors-listener' AND datname = current_database()",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        writes.await.unwrap();
        let (took, l) = converge(&db, Duration::from_secs(30)).await;
        lost += l;
        worst = worst.max(took);
    }
    let doubled = sampler.finish().await.max(1) - 1;
    report(
        "listener backend killed (pg_terminate_backend) mid-stream",
        n,
        Some(lost),
        Some(doubled),
        Some(worst),
        "",
    );
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
}

#[tokio::test]
async fn service_killed_with_sigkill_mid_stream() {
    let db = TestDb::new().await;
    let mut svc = ServiceProc::start(&db, SERVICE_FLAGS).await;
    let sampler = DoubleSampler::start(&db);
    let n = trials(4, 20);
    let (mut lost, mut worst) = (0, Duration::ZERO);
    for round in 0..n {
        let writes = {
            let (pool, name, url) = (db.pool.clone(), db.name.clone(), db.url.clone());
            tokio::spawn(async move { write_burst(&TestDb { name, url, pool }, round, 12).await })
        };
        tokio::time::sleep(Duration::from_millis(((round * 53) % 60) as u64)).await;
        svc.kill();
        writes.await.unwrap();
        svc.restart().await;
        let (took, l) = converge(&db, Duration::from_secs(30)).await;
        lost += l;
        worst = worst.max(took);
    }
    let doubled = sampler.finish().await.max(1) - 1;
    report(
        "service killed (SIGKILL) mid-stream, restarted",
        n,
        Some(lost),
        Some(doubled),
        Some(worst),
        "restart to converged",
    );
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
}

#[tokio::test]
async fn leader_killed_repeatedly_between_two_replicas() {
    let db = TestDb::new().await;
    let mut a = ServiceProc::start(&db, SERVICE_FLAGS).await;
    let mut b = ServiceProc::start(&db, SERVICE_FLAGS).await;
    let sampler = DoubleSampler::start(&db);
    let n = trials(3, 10);
    let (mut lost, mut worst) = (0, Duration::ZERO);
    let mut failovers = Vec::new();
    for round in 0..n {
        let a_leads = wait_until("a leader", Duration::from_secs(30), || async {
            let (la, lb) = (a.is_leader().await, b.is_leader().await);
            (la != lb).then_some(la)
        })
        .await;
        let (leader, follower) = if a_leads {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        leader.kill();
        let t = Instant::now();
        write_burst(&db, round, 8).await;
        wait_until("follower takes over", Duration::from_secs(10), || async {
            follower.is_leader().await.then_some(())
        })
        .await;
        failovers.push(t.elapsed());
        let (took, l) = converge(&db, Duration::from_secs(30)).await;
        lost += l;
        worst = worst.max(took);
        leader.restart().await;
    }
    let doubled = sampler.finish().await.max(1) - 1;
    failovers.sort();
    let p50 = failovers[failovers.len() / 2];
    let max = *failovers.last().unwrap();
    report(
        "leader killed (SIGKILL), two replicas",
        n,
        Some(lost),
        Some(doubled),
        Some(worst),
        &format!(
            "failover p50 {:.2} s, max {:.2} s",
            p50.as_secs_f64(),
            max.as_secs_f64()
        ),
    );
    assert!(max < Duration::from_secs(10));
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
}

/// Probe targets that are not healthy PostgreSQL servers, each with a clear outcome.
#[tokio::test]
async fn bad_targets_and_names_get_clear_outcomes_and_nothing_crashes() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    // Speaks garbage: not PostgreSQL.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot postgres")
                .await;
        }
    });
    // Accepts, then hangs.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // Never accepts (the kernel completes handshakes into a backlog nobody drains).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let pw = support::TARGET_PASSWORD;
    let targets = [
        (
            "pg-garbage",
            format!("postgres://u:{pw}@127.0.0.1:{garbage_port}/db"),
        ),
        (
            "pg-hangs",
            format!("postgres://u:{pw}@127.0.0.1:{hang_port}/db"),
        ),
        (
            "pg-silent",
            format!("postgres://u:{pw}@127.0.0.1:{silent_port}/db"),
        ),
        (
            "pg-nonsense",
            "this is not a connection string password=hunter2-secret".to_string(),
        ),
    ];
    let svc = ServiceProc::start(
        &db,
        &[
            "--probe-connect-timeout",
            "1s",
            "--probe-query-timeout",
            "1s",
        ],
    )
    .await;
    let sampler = DoubleSampler::start(&db);
    for (name, target) in &targets {
        db.insert_instance(name, "running", Some(target)).await;
    }
    // Odd names through NOTIFY, HTTP and the CLI.
    let odd = ["q'uote", "semi;colon --", "ünï😀code", &"n".repeat(255)];
    for name in odd {
        db.insert_instance(name, "running", None).await;
    }
    for (name, _) in &targets {
        wait_until(
            &format!("{name} recorded unhealthy"),
            Duration::from_secs(30),
            || async { (db.health_of(name).await.0 == "unhealthy").then_some(()) },
        )
        .await;
    }
    let errors: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (i.k8s_name) i.k8s_name, h.error_message FROM toygres_cms.instance_health_checks h
           JOIN toygres_cms.instances i ON i.id = h.instance_id WHERE h.error_message IS NOT NULL
          ORDER BY i.k8s_name, h.checked_at DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let err_of = |n: &str| {
        errors
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    };
    assert!(
        err_of("pg-hangs").contains("timed out"),
        "{}",
        err_of("pg-hangs")
    );
    assert!(
        err_of("pg-silent").contains("timed out"),
        "{}",
        err_of("pg-silent")
    );
    assert!(!err_of("pg-garbage").is_empty());
    assert!(
        err_of("pg-nonsense").contains("invalid connection string"),
        "{}",
        err_of("pg-nonsense")
    );
    for (_, e) in &errors {
        assert!(
            !e.contains(pw) && !e.contains("hunter2-secret"),
            "secret in error: {e}"
        );
    }
    const CONTROL: &str = r#"channel="toygres_actor_control""#;
    let restarts_before = metric(
        &svc,
        "toygres_actors_notifications_total",
        &[CONTROL, r#"op="restart""#],
    )
    .await;
    let mut restarted = Vec::new();
    for name in odd {
        // Each odd-named instance has its one live actor; a raw NOTIFY restarts it: a new
        // actor named by the row, and the decision log says restart, from the old to the new.
        let before = wait_until(
            &format!("{name}: a live actor"),
            Duration::from_secs(30),
            || async {
                let a = db.actor_id(name).await?;
                (db.live_actors(name).await == vec![a.clone()]).then_some(a)
            },
        )
        .await;
        sqlx::query("SELECT pg_notify('toygres_actor_control', $1)")
            .bind(format!("restart {name}"))
            .execute(&db.pool)
            .await
            .unwrap();
        let after = wait_until(
            &format!("{name}: restarted by its NOTIFY (a new actor, logged as a restart)"),
            Duration::from_secs(30),
            || async {
                let a = db.actor_id(name).await.filter(|a| *a != before)?;
                let logged: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM toygres_actors.decisions
                      WHERE k8s_name = $1 AND action = 'restart' AND old_actor_id = $2 AND new_actor_id = $3",
                )
                .bind(name)
                .bind(&before)
                .bind(&a)
                .fetch_one(&db.pool)
                .await
                .ok()?;
                (logged == 1 && db.live_actors(name).await == vec![a.clone()]).then_some(a)
            },
        )
        .await;
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (code, body) = svc.get(&format!("/api/instances/{encoded}/actor")).await;
        assert_eq!(code, 200, "{name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["k8s_name"].as_str(), v["actor_id"].as_str()),
            (Some(name), Some(after.as_str())),
            "{name}: the API shows the restarted actor: {body}"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
            .args(["explain", name])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&after),
            "{name}: explain shows the restarted actor {after}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        restarted.push((name, after));
    }
    // Bad ones: a name over the 255-character limit, and an odd name no row has. Each is
    // counted invalid and changes nothing. `reconcile *` after them is a barrier: the listener
    // handles one channel's notifications in order.
    let bad = [
        format!("restart {}", "n".repeat(256)),
        "restart q'uote-no such;row".to_string(),
    ];
    let invalid_before = metric(
        &svc,
        "toygres_actors_notifications_invalid_total",
        &[CONTROL],
    )
    .await;
    let reconciles_before = metric(
        &svc,
        "toygres_actors_notifications_total",
        &[CONTROL, r#"op="reconcile""#],
    )
    .await;
    for payload in bad.iter().map(String::as_str).chain(["reconcile *"]) {
        sqlx::query("SELECT pg_notify('toygres_actor_control', $1)")
            .bind(payload)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    wait_until(
        "the barrier `reconcile *` handled",
        Duration::from_secs(30),
        || async {
            (metric(
                &svc,
                "toygres_actors_notifications_total",
                &[CONTROL, r#"op="reconcile""#],
            )
            .await
                > reconciles_before)
                .then_some(())
        },
    )
    .await;
    let invalid = metric(
        &svc,
        "toygres_actors_notifications_invalid_total",
        &[CONTROL],
    )
    .await
        - invalid_before;
    let restarts = metric(
        &svc,
        "toygres_actors_notifications_total",
        &[CONTROL, r#"op="restart""#],
    )
    .await
        - restarts_before;
    assert_eq!(
        (invalid, restarts),
        (bad.len() as f64, odd.len() as f64),
        "(invalid, valid restart) control notifications counted"
    );
    let log = svc.log_text();
    assert!(
        log.contains("name longer than 255 characters") && log.contains("unknown instance"),
        "the reasons are logged"
    );
    // Every odd-named instance ends with exactly one actor (the one its restart made); the
    // service is still up.
    let (took, lost) = converge(&db, Duration::from_secs(30)).await;
    for (name, after) in &restarted {
        assert_eq!(
            db.actor_id(name).await.as_deref(),
            Some(after.as_str()),
            "{name}"
        );
    }
    let doubled = sampler.finish().await.max(1) - 1;
    let (code, _) = svc.get("/healthz").await;
    assert_eq!(code, 200, "service alive");
    report(
        "bad targets (garbage, hangs, never accepts, unparsable) and odd names",
        targets.len() + odd.len(),
        Some(lost),
        Some(doubled),
        Some(took),
        &format!(
            "each target: unhealthy with a timeout/parse error; {} odd-name restarts done, {} bad ones counted invalid",
            restarted.len(),
            invalid
        ),
    );
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
}

/// A password in every connection string of the run; none in logs, metrics, API or CLI.
#[tokio::test]
async fn secrets_never_leave_the_process() {
    let db = TestDb::new().await;
    let pw = support::TARGET_PASSWORD;
    let svc = ServiceProc::start(&db, &["--api-token", "tok-Secret-123"]).await;
    db.insert_instance("pg-s1", "running", Some(&support::reachable_target()))
        .await;
    db.insert_instance("pg-s2", "running", Some(&support::closed_port_target()))
        .await;
    sqlx::query(
        "UPDATE toygres_cms.instances SET ip_connection_string = $1 WHERE k8s_name = 'pg-s1'",
    )
    .bind(format!("host=127.0.0.1 port=1 user=u password={pw}"))
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until("checks of both", Duration::from_secs(30), || async {
        (db.checks_of("pg-s1").await >= 2 && db.checks_of("pg-s2").await >= 2).then_some(())
    })
    .await;
    let mut seen = String::new();
    for path in [
        "/metrics",
        "/api/actors",
        "/api/instances/pg-s1/actor",
        "/api/instances/pg-s2/actor",
        "/readyz",
    ] {
        seen.push_str(&svc.get(path).await.1);
    }
    let client = reqwest::Client::new();
    for action in ["restart", "cancel", "start"] {
        let r = client
            .post(format!("{}/api/instances/pg-s2/actor/{action}", svc.http))
            .bearer_auth("tok-Secret-123")
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["explain", "pg-s2"],
        vec!["explain", "pg-s2", "--json"],
        vec!["heal", "--dry-run"],
        vec!["heal", "--dry-run", "--json"],
        vec!["actor", "start", "pg-s2", "--json"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toygres-actors"))
            .args(&args)
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    seen.push_str(&svc.log_text());
    let hits = seen.matches(pw).count() + seen.matches("tok-Secret-123").count();
    // Not a fault trial: nothing here counts lost or doubled actors or convergence.
    report(
        "secrets: password in every connection string",
        1,
        None,
        None,
        None,
        &format!("{hits} hits in logs, /metrics, API, CLI"),
    );
    assert_eq!(hits, 0, "a secret leaked");
    assert!(seen.contains("pg-s2"), "we did look at real output");
}
