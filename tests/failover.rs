//! Failover at production timings: replicas stop, die, freeze and get cut off, and every
//! instance keeps being checked within the documented bounds.
//!
//! Every timer these scenarios depend on runs at its shipped default (check interval 30 s,
//! lease renewal 4 min, replica heartbeat 2.5 s / TTL 15 s, leader tick 2 s / TTL 10 s,
//! balancing 250 leases per tick): the services are started with no timing flag at all.
//! Probes hit a real PostgreSQL (a cluster of its own, sized for the kept probe
//! connections) and every check counted must be `healthy`.
//!
//! "Lost", here and in the reliability table: an instance that should be checked and had no
//! check for more than 2x the interval.
//!
//! Two tests run side by side: the rolling restart (1,000 instances) and the four leader and
//! outage scenarios (100 instances each, each in its own database with its own services),
//! joined in one test. They wait on production timers, not on the CPU.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{ServiceProc, TestDb, wait_until};
use toygres_actors::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

const INTERVAL: f64 = 30.0;

/// A PostgreSQL cluster the probes connect to: 1,000 instances keep 1,000 connections.
fn targets() -> &'static EmbeddedPostgres {
    static PG: OnceLock<EmbeddedPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        let mut opts = EmbeddedOptions::ephemeral_temp("targets");
        opts.max_connections = 1500;
        EmbeddedPostgres::start(&opts).expect("start the probe target cluster")
    })
}

fn target_url() -> String {
    targets().url("postgres")
}

/// Probe connections a replica keeps open here. The four tests of this binary run at once and
/// every instance probes the one target cluster: with the default (1,024 per replica) the
/// 1,000-instance fleet's kept connections, while a restarted replica's backends linger, can
/// exhaust the cluster's 1,500 and a probe is then refused ("too many clients"), which is
/// recorded, rightly, as unhealthy. Not a timer: the faults tested here do not depend on it.
const KEEP_CONNECTIONS: &str = "200";

/// A replica at production settings (every timer at its default).
async fn replica(url: &str, extra: &[&str]) -> ServiceProc {
    let mut args = vec!["--probe-keep-connections", KEEP_CONNECTIONS];
    args.extend_from_slice(extra);
    ServiceProc::start_production(url, &args).await
}

/// Insert `n` running instances spread over one check interval (a batch a second), so their
/// checks are spread over the interval as in a real fleet: whenever a fault hits, some
/// instance is just about due.
async fn insert_fleet(db: &TestDb, prefix: &str, n: i64) {
    const BATCHES: i64 = 30;
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    for b in 0..BATCHES {
        pace.tick().await;
        let (lo, hi) = (b * n / BATCHES + 1, (b + 1) * n / BATCHES);
        sqlx::query(
            "INSERT INTO toygres_cms.instances
                 (user_name, k8s_name, postgres_version, storage_size_gb, state,
                  create_orchestration_id, dns_connection_string)
             SELECT 'tester', $1 || g, '16', 10, 'running', 'create-1', $4
               FROM generate_series($2::bigint, $3::bigint) g",
        )
        .bind(prefix)
        .bind(lo)
        .bind(hi)
        .bind(target_url())
        .execute(&db.pool)
        .await
        .expect("insert fleet");
    }
}

/// Leases held by each live replica.
async fn lease_shares(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT l.holder, count(*)
           FROM toygres_actors.probe_leases l
           JOIN toygres_actors.replicas r ON r.name = l.holder AND r.epoch = l.holder_epoch
          WHERE r.expires_at > now() AND NOT r.draining
          GROUP BY l.holder ORDER BY l.holder",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default()
}

/// Wait until `total` leases are spread over exactly `replicas` live replicas, each holding
/// 40–60 % of them; returns the shares.
async fn wait_balanced(db: &TestDb, replicas: usize, total: i64) -> Vec<(String, i64)> {
    wait_until("leases balanced", Duration::from_secs(120), || async {
        let shares = lease_shares(db).await;
        let sum: i64 = shares.iter().map(|s| s.1).sum();
        let fair = total as f64 / replicas as f64;
        (shares.len() == replicas
            && sum == total
            && shares
                .iter()
                .all(|s| (s.1 as f64) >= 0.8 * fair && (s.1 as f64) <= 1.2 * fair))
        .then_some(shares)
    })
    .await
}

/// The longest time any instance that should be checked went without a check since `from`
/// (database clock), counting the open gap up to now.
async fn max_gap(db: &TestDb, from: chrono::DateTime<chrono::Utc>) -> (f64, String) {
    let top: Vec<(f64, String)> = sqlx::query_as(
        "WITH c AS (
             SELECT h.instance_id, h.checked_at,
                    lag(h.checked_at) OVER (PARTITION BY h.instance_id ORDER BY h.checked_at) AS prev
               FROM toygres_cms.instance_health_checks h
              WHERE h.checked_at >= $1 - interval '90 seconds'),
         gaps AS (
             SELECT instance_id, extract(epoch FROM checked_at - prev)::float8 AS gap
               FROM c WHERE prev IS NOT NULL AND checked_at >= $1
             UNION ALL
             SELECT id, extract(epoch FROM now() - last_health_check)::float8
               FROM toygres_cms.instances WHERE state = 'running')
         SELECT g.gap, i.k8s_name FROM gaps g JOIN toygres_cms.instances i ON i.id = g.instance_id
          WHERE g.gap IS NOT NULL ORDER BY g.gap DESC LIMIT 5",
    )
    .bind(from)
    .fetch_all(&db.pool)
    .await
    .expect("max gap");
    eprintln!("longest gaps since {from}: {top:?}");
    top.into_iter().next().expect("some gap")
}

/// Checks since `from` that were not healthy (must be none: the targets answer).
/// Check rows written since `from` that are not `healthy`, one line each (instance, status,
/// error, writer, time), so a failure says which replica wrote what.
async fn not_healthy_since(db: &TestDb, from: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('%s %s %s by %s/%s at %s', i.k8s_name, h.status, coalesce(h.error_message, '-'),
                       coalesce(h.replica, '?'), coalesce(h.replica_epoch::text, '?'), h.checked_at)
           FROM toygres_cms.instance_health_checks h
           JOIN toygres_cms.instances i ON i.id = h.instance_id
          WHERE h.checked_at >= $1 AND h.status::text <> 'healthy'
          ORDER BY h.checked_at",
    )
    .bind(from)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Every running instance checked at or after `t`.
async fn wait_all_checked_after(db: &TestDb, t: chrono::DateTime<chrono::Utc>, within: Duration) {
    wait_until("every instance checked again", within, || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM toygres_cms.instances
              WHERE state = 'running' AND (last_health_check IS NULL OR last_health_check < $1)",
        )
        .bind(t)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (behind == 0).then_some(())
    })
    .await;
}

async fn doubled(db: &TestDb) -> i64 {
    support::doubled_live_actors(db).await
}

fn row(fault: &str, trials: usize, max_gap: f64, bound: f64) {
    support::append_reliability_row(&format!(
        "| {fault} | {trials} | 0 | 0 | max gap {max_gap:.1} s (bound {bound:.0} s) | production timers |"
    ));
}

/// The four leader and outage scenarios, side by side (see the module's note).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_partitioned_twinned_and_cut_off_replicas_hand_over() {
    tokio::join!(
        frozen_leader_is_replaced_and_writes_nothing_when_it_wakes(),
        partitioned_leader_is_replaced_and_writes_nothing_when_it_heals(),
        of_two_processes_with_one_name_only_the_newest_probes(),
        database_outage_for_every_replica_moves_no_lease(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_sigterm_and_sigkill_keep_every_instance_checked() {
    let db = TestDb::new().await;
    const N: i64 = 1000;
    let mut a = replica(&db.url, &["--replica", "replica-a"]).await;
    let mut b = replica(&db.url, &["--replica", "replica-b"]).await;
    insert_fleet(&db, "pg-f", N).await;
    // Balanced first: each of the two holds 40–60 % (asserted by wait_balanced).
    let shares = wait_balanced(&db, 2, N).await;
    eprintln!("balanced: {shares:?}");
    let steady = db.now().await;
    wait_all_checked_after(&db, steady, Duration::from_secs(60)).await;
    let from = db.now().await;

    // Rolling restart: every replica stopped (SIGTERM) and replaced under a new name.
    let t0 = Instant::now();
    assert!(a.stop().success(), "replica-a exited uncleanly");
    let c = replica(&db.url, &["--replica", "replica-c"]).await;
    wait_balanced(&db, 2, N).await;
    assert!(b.stop().success(), "replica-b exited uncleanly");
    let mut d = replica(&db.url, &["--replica", "replica-d"]).await;
    wait_balanced(&db, 2, N).await;
    let after_rolling = db.now().await;
    wait_all_checked_after(&db, after_rolling, Duration::from_secs(60)).await;
    let (gap, worst) = max_gap(&db, from).await;
    eprintln!(
        "rolling restart (2 x SIGTERM + new names) took {:?}; max gap {gap:.1} s ({worst})",
        t0.elapsed()
    );
    assert!(
        gap <= 40.0,
        "rolling restart: {worst} went {gap:.1} s without a check (bound 40 s)"
    );
    row(
        "rolling restart, replica SIGTERM (2 replicas, 1,000 instances)",
        2,
        gap,
        40.0,
    );

    // SIGKILL one replica: its instances are checked again within 60 s of their last check.
    let from_kill = db.now().await;
    d.kill();
    let killed_at = db.now().await;
    wait_all_checked_after(&db, killed_at, Duration::from_secs(90)).await;
    let (gap, worst) = max_gap(&db, from_kill).await;
    eprintln!("SIGKILL: max gap {gap:.1} s ({worst})");
    assert!(
        gap <= 60.0,
        "SIGKILL: {worst} went {gap:.1} s without a check (bound 60 s)"
    );
    row(
        "replica SIGKILL (2 replicas, 1,000 instances)",
        1,
        gap,
        60.0,
    );
    let not_healthy = not_healthy_since(&db, from).await;
    assert!(
        not_healthy.is_empty(),
        "checks that were not healthy: {not_healthy:#?}"
    );
    assert_eq!(doubled(&db).await, 0);
    // No gap above 2x the interval anywhere: nothing lost.
    let (gap_all, _) = max_gap(&db, from).await;
    assert!(gap_all <= 2.0 * INTERVAL);
    support::invariants::check(&db, Duration::from_secs(5), Duration::from_secs(60), &[]).await;
    drop(c);
}

/// The leader of the two replicas, and the other one.
async fn leader_and_follower(x: ServiceProc, y: ServiceProc) -> (ServiceProc, ServiceProc) {
    let mut pair = Some((x, y));
    wait_until("one leader", Duration::from_secs(30), || {
        let p = pair.as_ref().unwrap();
        let (x, y) = (&p.0, &p.1);
        async move {
            let (lx, ly) = (x.is_leader().await, y.is_leader().await);
            (lx != ly).then_some(())
        }
    })
    .await;
    let (x, y) = pair.take().unwrap();
    if x.is_leader().await { (x, y) } else { (y, x) }
}

async fn replica_row(db: &TestDb, name: &str) -> (i64, chrono::DateTime<chrono::Utc>) {
    sqlx::query_as("SELECT epoch, expires_at FROM toygres_actors.replicas WHERE name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("replica row")
}

async fn live_actor_of(db: &TestDb, name: &str) -> bool {
    let Some(actor) = db.actor_id(name).await else {
        return false;
    };
    db.orchestration_status(&actor)
        .await
        .is_some_and(|(s, _)| s == "Running")
}

/// What a frozen or cut-off leader must not have done, checked after it is back.
async fn assert_fenced(
    db: &TestDb,
    name: &str,
    old_epoch: i64,
    lost_at: chrono::DateTime<chrono::Utc>,
    since: chrono::DateTime<chrono::Utc>,
) {
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instance_health_checks
          WHERE replica = $1 AND replica_epoch = $2 AND checked_at > $3",
    )
    .bind(name)
    .bind(old_epoch)
    .bind(lost_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        late, 0,
        "{name} wrote health under its old epoch after losing it"
    );
    // No start or cancel it decided after the fault took effect was applied.
    let applied: Vec<(String, String)> = sqlx::query_as(
        "SELECT k8s_name, action FROM toygres_actors.decisions
          WHERE replica = $1 AND decided_at > $2 AND error IS NULL
            AND action IN ('start', 'restart', 'cancel')",
    )
    .bind(name)
    .bind(since)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        applied.is_empty(),
        "{name} applied {applied:?} after its term was taken"
    );
    assert_eq!(doubled(db).await, 0, "an instance has two live actors");
    let leaders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM toygres_actors.leader WHERE expires_at > now()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(leaders, 1, "exactly one leader");
}

async fn frozen_leader_is_replaced_and_writes_nothing_when_it_wakes() {
    let db = TestDb::new().await;
    let x = replica(&db.url, &["--replica", "frozen-x"]).await;
    let y = replica(&db.url, &["--replica", "frozen-y"]).await;
    insert_fleet(&db, "pg-z", 100).await;
    wait_balanced(&db, 2, 100).await;
    let steady = db.now().await;
    wait_all_checked_after(&db, steady, Duration::from_secs(60)).await;
    let (leader, follower) = leader_and_follower(x, y).await;
    let name = if leader.args.contains(&"frozen-x".to_string()) {
        "frozen-x"
    } else {
        "frozen-y"
    };
    let (old_epoch, _) = replica_row(&db, name).await;
    let from = db.now().await;

    leader.signal(Signal::SIGSTOP);
    let stopped_at = db.now().await;
    let t = Instant::now();
    db.insert_instance("pg-during-freeze", "running", Some(&target_url()))
        .await;
    wait_until(
        "a live actor for the row inserted during the freeze",
        Duration::from_secs(20),
        || async { live_actor_of(&db, "pg-during-freeze").await.then_some(()) },
    )
    .await;
    let took = t.elapsed();
    eprintln!("frozen leader: new row had a live actor after {took:?}");
    assert!(follower.is_leader().await);
    // Its instances move to the follower once its heartbeat lapsed; checks go on.
    wait_all_checked_after(&db, stopped_at, Duration::from_secs(70)).await;
    let (gap, worst) = max_gap(&db, from).await;
    let (_, lost_at) = replica_row(&db, name).await;

    leader.signal(Signal::SIGCONT);
    // It notices: a new epoch (its old one lapsed) and no leadership.
    wait_until(
        "the woken replica re-registered under a new epoch",
        Duration::from_secs(30),
        || async { (replica_row(&db, name).await.0 != old_epoch).then_some(()) },
    )
    .await;
    wait_until(
        "the woken replica is not leader",
        Duration::from_secs(30),
        || async { (!leader.is_leader().await).then_some(()) },
    )
    .await;
    // Give it every chance to act on what it queued while frozen.
    let woke = Instant::now();
    wait_until(
        "a few ticks after waking",
        Duration::from_secs(10),
        || async { (woke.elapsed() >= Duration::from_secs(6)).then_some(()) },
    )
    .await;
    assert_fenced(&db, name, old_epoch, lost_at, stopped_at).await;
    // What an operator sees: both replicas, their epochs and leases, one leader.
    let (code, body) = follower.get("/api/replicas").await;
    assert_eq!(code, 200, "{body}");
    let replicas: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let live: Vec<&serde_json::Value> = replicas.iter().filter(|r| r["live"] == true).collect();
    assert_eq!(live.len(), 2, "{body}");
    assert_eq!(
        live.iter().filter(|r| r["leader"] == true).count(),
        1,
        "{body}"
    );
    let woken = live
        .iter()
        .find(|r| r["name"] == name)
        .expect("the woken replica is listed");
    assert_ne!(woken["epoch"].as_i64(), Some(old_epoch), "{body}");
    assert!(
        live.iter()
            .all(|r| r["heartbeat_age_seconds"].as_f64().unwrap() < 15.0),
        "{body}"
    );
    eprintln!("frozen leader: max gap {gap:.1} s ({worst})");
    assert!(gap <= 60.0, "{worst} went {gap:.1} s without a check");
    let not_healthy = not_healthy_since(&db, from).await;
    assert!(
        not_healthy.is_empty(),
        "checks that were not healthy: {not_healthy:#?}"
    );
    support::append_reliability_row(&format!(
        "| leader SIGSTOP (2 replicas, 100 instances) | 1 | 0 | 0 | new row's actor live after {:.1} s (bound 20 s); max gap {gap:.1} s | production timers; no write under the old epoch, no start/cancel from the old term |",
        took.as_secs_f64()
    ));
    assert!(took <= Duration::from_secs(20));
    support::invariants::check(&db, Duration::from_secs(5), Duration::from_secs(60), &[]).await;
}

/// A partition proxy (tests/support/proxy.rs) in front of the test database's server, and
/// the database URL through it.
async fn partition_in_front_of(db: &TestDb) -> (support::proxy::Proxy, String) {
    let proxy = support::proxy::Proxy::start(support::proxy::upstream_of(&db.url)).await;
    let url = proxy.url_for(&db.url);
    (proxy, url)
}

async fn partitioned_leader_is_replaced_and_writes_nothing_when_it_heals() {
    let db = TestDb::new().await;
    let (proxy, proxied) = partition_in_front_of(&db).await;
    // The leader-to-be reaches the database only through the proxy.
    let p = replica(&proxied, &["--replica", "cut-p"]).await;
    wait_until("cut-p leads", Duration::from_secs(30), || async {
        p.is_leader().await.then_some(())
    })
    .await;
    let q = replica(&db.url, &["--replica", "cut-q"]).await;
    insert_fleet(&db, "pg-p", 100).await;
    wait_balanced(&db, 2, 100).await;
    let steady = db.now().await;
    wait_all_checked_after(&db, steady, Duration::from_secs(60)).await;
    let (old_epoch, _) = replica_row(&db, "cut-p").await;
    let from = db.now().await;

    proxy.black_hole();
    let cut_at = db.now().await;
    let t = Instant::now();
    db.insert_instance("pg-during-partition", "running", Some(&target_url()))
        .await;
    wait_until(
        "a live actor for the row inserted during the partition",
        Duration::from_secs(20),
        || async {
            live_actor_of(&db, "pg-during-partition")
                .await
                .then_some(())
        },
    )
    .await;
    let took = t.elapsed();
    eprintln!("partitioned leader: new row had a live actor after {took:?}");
    assert!(q.is_leader().await);
    wait_all_checked_after(&db, cut_at, Duration::from_secs(70)).await;
    let (gap, worst) = max_gap(&db, from).await;
    let (_, lost_at) = replica_row(&db, "cut-p").await;

    proxy.heal();
    wait_until(
        "the healed replica re-registered under a new epoch",
        Duration::from_secs(60),
        || async { (replica_row(&db, "cut-p").await.0 != old_epoch).then_some(()) },
    )
    .await;
    let healed = Instant::now();
    wait_until(
        "a few ticks after healing",
        Duration::from_secs(10),
        || async { (healed.elapsed() >= Duration::from_secs(6)).then_some(()) },
    )
    .await;
    assert!(
        !p.is_leader().await,
        "the healed replica must not lead beside the new leader"
    );
    assert_fenced(&db, "cut-p", old_epoch, lost_at, cut_at).await;
    assert!(gap <= 60.0, "{worst} went {gap:.1} s without a check");
    let not_healthy = not_healthy_since(&db, from).await;
    assert!(
        not_healthy.is_empty(),
        "checks that were not healthy: {not_healthy:#?}"
    );
    support::append_reliability_row(&format!(
        "| leader partition (TCP proxy holds sockets open; 2 replicas, 100 instances) | 1 | 0 | 0 | new row's actor live after {:.1} s (bound 20 s); max gap {gap:.1} s | production timers; no write under the old epoch, no start/cancel from the old term |",
        took.as_secs_f64()
    ));
    assert!(took <= Duration::from_secs(20));
    support::invariants::check(&db, Duration::from_secs(5), Duration::from_secs(60), &[]).await;
}

/// Two processes started with one replica name: the newest epoch wins; the older one stops
/// probing (and says so), and nothing is written under its epoch after the newer registered.
async fn of_two_processes_with_one_name_only_the_newest_probes() {
    let db = TestDb::new().await;
    let first = replica(&db.url, &["--replica", "twin"]).await;
    insert_fleet(&db, "pg-t", 30).await;
    let steady = db.now().await;
    wait_all_checked_after(&db, steady, Duration::from_secs(60)).await;
    let (old_epoch, _) = replica_row(&db, "twin").await;

    let second = replica(&db.url, &["--replica", "twin"]).await;
    let (new_epoch, _) = replica_row(&db, "twin").await;
    assert_ne!(new_epoch, old_epoch);
    let registered = db.now().await;
    wait_until(
        "the older process says it stopped probing",
        Duration::from_secs(30),
        || async {
            first
                .log_text()
                .contains("another process registered the replica name")
                .then_some(())
        },
    )
    .await;
    // Every instance is checked again — by the newest process only.
    wait_all_checked_after(&db, registered, Duration::from_secs(70)).await;
    let by_old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instance_health_checks
          WHERE replica = 'twin' AND replica_epoch = $1 AND checked_at > $2",
    )
    .bind(old_epoch)
    .bind(registered)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        by_old, 0,
        "the superseded process wrote after the newer one registered"
    );
    let by_new: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT instance_id) FROM toygres_cms.instance_health_checks
          WHERE replica = 'twin' AND replica_epoch = $1",
    )
    .bind(new_epoch)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(by_new, 30, "the newest process probes every instance");
    drop(second);
}

/// The database gone for every replica longer than the replica TTL (production value), then
/// back: each replica registers again under a new epoch and takes back its own leases. None
/// changes replica — before `migrations/0007` the first replica back took every lease as
/// orphaned and the other then took half back to balance (a reshuffle of the whole fleet).
async fn database_outage_for_every_replica_moves_no_lease() {
    let db = TestDb::new().await;
    let (proxy, proxied) = partition_in_front_of(&db).await;
    let a = replica(&proxied, &["--replica", "all-a"]).await;
    wait_until("all-a leads", Duration::from_secs(30), || async {
        a.is_leader().await.then_some(())
    })
    .await;
    let b = replica(&proxied, &["--replica", "all-b"]).await;
    insert_fleet(&db, "pg-all", 60).await;
    wait_balanced(&db, 2, 60).await;
    // The balancer's own end state (30 each), so that no move after the outage is its.
    wait_until("leases evenly spread", Duration::from_secs(30), || async {
        let shares = lease_shares(&db).await;
        (shares.len() == 2 && shares.iter().all(|s| s.1 == 30)).then_some(())
    })
    .await;
    let holders = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
                "SELECT instance_id, holder FROM toygres_actors.probe_leases ORDER BY instance_id",
            )
            .fetch_all(&pool)
            .await
            .expect("lease holders");
            rows
        }
    };
    let before = holders(&db).await;
    let epochs = (
        replica_row(&db, "all-a").await.0,
        replica_row(&db, "all-b").await.0,
    );

    // Both replicas cut off (their sockets held open, nothing delivered) until both
    // heartbeats have lapsed: the TTL, at its production value, is the timer this is about.
    proxy.black_hole();
    wait_until(
        "both replicas' liveness lapsed",
        Duration::from_secs(60),
        || async {
            let lapsed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_actors.replicas
                  WHERE name IN ('all-a', 'all-b') AND expires_at < now()",
            )
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (lapsed == 2).then_some(())
        },
    )
    .await;
    proxy.heal();
    let healed = db.now().await;
    wait_until(
        "both replicas registered again, every lease under a live epoch",
        Duration::from_secs(60),
        || async {
            let a_new = replica_row(&db, "all-a").await.0 != epochs.0;
            let b_new = replica_row(&db, "all-b").await.0 != epochs.1;
            let held = lease_shares(&db).await.iter().map(|s| s.1).sum::<i64>();
            (a_new && b_new && held == 60).then_some(())
        },
    )
    .await;
    wait_all_checked_after(&db, healed, Duration::from_secs(60)).await;
    let after = holders(&db).await;
    let moved: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("{} {} → {}", x.0, x.1, y.1))
        .collect();
    assert_eq!(before.len(), after.len());
    assert!(moved.is_empty(), "leases that changed replica: {moved:#?}");
    drop((a, b));
}
