//! The CMS-outage scenario: the service's database goes away for longer than `stale_after`
//! (every connection of both replicas cut through a [`Door`], new ones refused) while the
//! instances themselves stay up, so that every instance turns stale. After the door opens we
//! measure what the service does about a fleet that is all stale at once: how many actors
//! it restarts (the cause was not the actors), how long until health flows again and whether
//! it flows through the same actors, whether the healing breaker opens and closes by itself,
//! and how many probe leases change replica when the replicas rejoin.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use sqlx::PgPool;

use crate::door::Door;
use crate::harness::{
    Baseline, DASH, Env, Service, header, healthy_count, insert_many, metric, row, running_current,
    secs,
};

/// The breaker's gauge.
const PAUSED: &str = "toygres_actors_healing_paused";

/// What the outage scenario measured (`None` = not reached or not measured).
#[derive(Debug, Serialize)]
pub struct Report {
    pub fleet: usize,
    pub replicas: usize,
    pub outage_s: f64,
    pub stale_after_s: f64,
    /// Instances whose last check was older than `stale_after` when the door opened.
    pub stale_at_reopen: i64,
    /// Door open → every instance has a health check written after the door opened.
    pub resumed_s: Option<f64>,
    /// Restart decisions after the door opened, to the end of the watch.
    pub restarted: i64,
    /// Instances naming another actor at the end than before the outage.
    pub actors_changed: i64,
    /// Whether the breaker (`healing_paused`) opened after the door opened.
    pub breaker_opened: bool,
    /// Door open → the breaker closed again (after it opened).
    pub breaker_closed_s: Option<f64>,
    /// Probe leases held by another replica at the end than before the outage.
    pub leases_moved: i64,
    /// How long the service was watched after the door opened.
    pub watched_s: f64,
}

/// The whole scenario: `fleet` instances on two replicas, the database gone for `outage`.
/// `quick` (the smoke form) scales the service's timers down; the full form runs them at
/// their production values (stale after 5 min, checks every 30 s, resync every 60 s).
pub async fn run(fleet: usize, outage: Duration, quick: bool) -> Result<Report> {
    let timers = if quick {
        Timers::QUICK
    } else {
        Timers::PRODUCTION
    };
    // Probes on kept connections (the default) to the benchmark's own server: one backend
    // each, so room for the fleet beside the service's pools.
    let env = Env::start_with(fleet as u32 + 300).await?;
    let target = env.target();
    let door = Door::start(env.pg.port()).await?;
    let url = door.url(&env.url);
    let a = Service::start(&url, &timers.flags("outage-a")).await?;
    let b = Service::start_replica(&url, &timers.flags("outage-b")).await?;
    insert_many(&env.pool, "out", fleet, "running", Some(&target)).await?;
    wait_until_settled(&env.pool, fleet).await?;
    let actors_before = actors(&env.pool).await?;
    let leases_before = leases(&env.pool).await?;

    let reopened = cut_off(&env.pool, &door, outage, &timers).await?;
    let watch = watch(&env.pool, [&a, &b], fleet, &reopened, &timers).await?;
    let restarted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_actors.decisions WHERE action = 'restart' AND decided_at > $1",
    )
    .bind(reopened.at_db)
    .fetch_one(&env.pool)
    .await?;
    let actors_changed = changed(&actors_before, &actors(&env.pool).await?);
    let leases_moved = changed(&leases_before, &leases(&env.pool).await?);
    drop((a, b));
    let report = Report {
        fleet,
        replicas: 2,
        outage_s: outage.as_secs_f64(),
        stale_after_s: timers.stale_after.as_secs_f64(),
        stale_at_reopen: reopened.stale,
        resumed_s: watch.resumed_s,
        restarted,
        actors_changed,
        breaker_opened: watch.breaker_opened,
        breaker_closed_s: watch.breaker_closed_s,
        leases_moved,
        watched_s: watch.watched_s,
    };
    report.print();
    Ok(report)
}

/// The service's timers in one form of the scenario, and what the scenario expects of them.
struct Timers {
    /// Flags given to both replicas.
    flags: &'static [&'static str],
    stale_after: Duration,
    resync: Duration,
    /// How long to watch for health to resume and the breaker to close.
    patience: Duration,
    /// Beyond two resyncs, how long to keep watching once all is settled.
    tail_margin: Duration,
}

impl Timers {
    /// The smoke form: timers scaled down.
    const QUICK: Timers = Timers {
        flags: &[
            "--check-interval",
            "1s",
            "--stale-after",
            "4s",
            "--resync-interval",
            "1s",
            "--lease-renew-interval",
            "2s",
        ],
        stale_after: Duration::from_secs(4),
        resync: Duration::from_secs(1),
        patience: Duration::from_secs(60),
        tail_margin: Duration::from_secs(2),
    };
    /// The full form: every timer at its production value.
    const PRODUCTION: Timers = Timers {
        flags: &[],
        stale_after: Duration::from_secs(300),
        resync: Duration::from_secs(60),
        patience: Duration::from_secs(600),
        tail_margin: Duration::from_secs(10),
    };

    /// One replica's flags.
    fn flags(&self, replica: &'static str) -> Vec<&'static str> {
        let mut f = self.flags.to_vec();
        f.extend(["--replica", replica]);
        f
    }

    /// How long to keep watching once all is settled: two more resyncs for late restarts (a
    /// breaker that closes lets the reconciler heal whatever is still stale).
    fn tail(&self) -> Duration {
        self.resync * 2 + self.tail_margin
    }
}

/// Before the outage: all running and healthy, and the leases spread evenly over the two
/// replicas (the balancer's end state), so that no move counted afterwards is its.
async fn wait_until_settled(pool: &PgPool, fleet: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while (healthy_count(pool).await? as usize) < fleet
        || (running_current(pool).await? as usize) < fleet
        || !evenly_spread(pool, fleet).await?
    {
        if Instant::now() > deadline {
            bail!(
                "the fleet was not all running, healthy and evenly leased within 300 s, before any outage"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// When the door opened again, and how stale the fleet was then.
struct Reopened {
    /// Instances whose last check was older than `stale_after`.
    stale: i64,
    /// The database's clock (health rows written after it are fresh).
    at_db: chrono::DateTime<chrono::Utc>,
    /// Ours (the scenario's figures count from it).
    at: Instant,
}

/// The database goes away for the service (both replicas), not for the instances, for
/// `outage`; then the door opens again.
async fn cut_off(
    pool: &PgPool,
    door: &Door,
    outage: Duration,
    timers: &Timers,
) -> Result<Reopened> {
    door.shut(true);
    tokio::time::sleep(outage).await;
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_cms.instances
          WHERE last_health_check < now() - make_interval(secs => $1)",
    )
    .bind(timers.stale_after.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let at_db: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    door.open();
    Ok(Reopened {
        stale,
        at_db,
        at: Instant::now(),
    })
}

/// What the watch after the door opened saw.
struct Watched {
    resumed_s: Option<f64>,
    breaker_opened: bool,
    breaker_closed_s: Option<f64>,
    watched_s: f64,
}

/// Watch: health resumed, the breaker opened and closed; then [`Timers::tail`] more.
async fn watch(
    pool: &PgPool,
    replicas: [&Service; 2],
    fleet: usize,
    reopened: &Reopened,
    timers: &Timers,
) -> Result<Watched> {
    let opened = reopened.at;
    let tail = timers.tail();
    let (mut resumed, mut breaker_opened, mut closed) = (None, false, None);
    let mut settled: Option<Instant> = None;
    while opened.elapsed() < timers.patience {
        if resumed.is_none() {
            let fresh: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM toygres_cms.instances WHERE last_health_check > $1",
            )
            .bind(reopened.at_db)
            .fetch_one(pool)
            .await?;
            if fresh as usize >= fleet {
                resumed = Some(opened.elapsed().as_secs_f64());
            }
        }
        let paused = [replicas[0].metrics().await, replicas[1].metrics().await]
            .iter()
            .filter_map(|m| metric(m, PAUSED))
            .fold(0.0, f64::max);
        if paused >= 1.0 {
            breaker_opened = true;
            closed = None;
        } else if breaker_opened && closed.is_none() {
            closed = Some(opened.elapsed().as_secs_f64());
        }
        let done = resumed.is_some() && (!breaker_opened || closed.is_some());
        match (done, settled) {
            (true, None) => settled = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= tail => break,
            (false, _) => settled = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(Watched {
        resumed_s: resumed,
        breaker_opened,
        breaker_closed_s: closed,
        watched_s: opened.elapsed().as_secs_f64(),
    })
}

/// Instances whose value in `after` differs from `before` (or is gone).
fn changed(before: &HashMap<uuid::Uuid, String>, after: &HashMap<uuid::Uuid, String>) -> i64 {
    before
        .iter()
        .filter(|(id, v)| after.get(*id) != Some(*v))
        .count() as i64
}

/// Instance → the actor its row names.
async fn actors(pool: &PgPool) -> Result<HashMap<uuid::Uuid, String>> {
    let rows: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, instance_actor_orchestration_id FROM toygres_cms.instances")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, a)| (id, a.unwrap_or_default()))
        .collect())
}

/// Every instance leased, to two replicas holding half each (one more at most).
async fn evenly_spread(pool: &PgPool, fleet: usize) -> Result<bool> {
    let shares: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM toygres_actors.probe_leases GROUP BY holder ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(match shares[..] {
        [x, y] => (x + y) as usize == fleet && y - x <= 1,
        _ => false,
    })
}

/// Instance → the replica holding its probe lease.
async fn leases(pool: &PgPool) -> Result<HashMap<uuid::Uuid, String>> {
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT instance_id, holder FROM toygres_actors.probe_leases")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

impl Report {
    fn print(&self) {
        header(&format!(
            "CMS outage — the database gone for {} s for {} replicas, {} instances (stale after {} s)",
            self.outage_s, self.replicas, self.fleet, self.stale_after_s
        ));
        let one_percent = self.fleet as f64 / 100.0;
        row(
            "instances stale when the database came back",
            format!("{} of {}", self.stale_at_reopen, self.fleet),
            Baseline::None,
            DASH,
            None,
        );
        row(
            "database back → every instance checked again",
            match self.resumed_s {
                Some(s) => secs(Some(s), 1),
                None => "not reached".into(),
            },
            Baseline::None,
            DASH,
            None,
        );
        row(
            &format!(
                "actors restarted after the outage (watched {:.0} s)",
                self.watched_s
            ),
            format!("{} of {}", self.restarted, self.fleet),
            Baseline::None,
            "≤ 1 % of the fleet",
            Some(self.restarted as f64 <= one_percent),
        );
        row(
            "instances whose health resumed through another actor",
            format!("{} of {}", self.actors_changed, self.fleet),
            Baseline::None,
            "≤ 1 % of the fleet",
            Some(self.actors_changed as f64 <= one_percent),
        );
        row(
            "healing breaker: opened / database back → closed by itself",
            format!(
                "{} / {}",
                if self.breaker_opened { "yes" } else { "no" },
                match self.breaker_closed_s {
                    Some(s) => format!("{s:.1} s"),
                    None => DASH.into(),
                }
            ),
            Baseline::None,
            "closes by itself",
            Some(!self.breaker_opened || self.breaker_closed_s.is_some()),
        );
        row(
            "probe leases held by another replica after the outage",
            format!("{} of {}", self.leases_moved, self.fleet),
            Baseline::None,
            "no reshuffle (≤ 1 % of the fleet)",
            Some(self.leases_moved as f64 <= one_percent),
        );
    }
}
