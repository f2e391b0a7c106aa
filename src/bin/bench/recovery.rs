//! The recovery scenario, in two parts. First the listener is cut off from the database (a
//! proxy whose door is shut, its backend terminated) while every row changes; after the door
//! opens we time the reconnect and the reconcile that puts every instance right. Then an
//! actor whose probe hangs goes stale, and we time how long after `stale_after` the
//! reconciler restarts it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use sqlx::PgPool;

use crate::door::Door;
use crate::harness::{
    Baseline, DASH, Env, Service, header, insert_instance, insert_many, row, secs,
};

/// How long after the door opens the scenario waits for reconnect and convergence.
const PATIENCE: Duration = Duration::from_secs(120);

/// What the recovery scenario measured (seconds; `None` = not reached).
#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: usize,
    pub outage_s: f64,
    /// Door open → a new listener backend exists.
    pub reconnected_s: Option<f64>,
    /// Reconnect → converged as the issue defines it: every row names the actor it should,
    /// and every start or cancel is durably enqueued or done (`None` if not reached).
    pub converged_s: Option<f64>,
    /// Reconnect → every one of those starts and cancels has also had its Duroxide turn.
    pub turns_done_s: Option<f64>,
    /// Instances wrong (missing or orphaned actors) at the last look.
    pub wrong_at_end: i64,
    pub stale_after_s: u64,
    pub resync_s: u64,
    /// Stale onset → the reconciler's restart decision.
    pub healed_after_stale_s: Option<f64>,
}

pub async fn run(rows: usize, outage: Duration) -> Result<Report> {
    let (reconnected_s, converged_s, turns_done_s, wrong_at_end) =
        listener_outage(rows, outage).await?;
    // Stale → healed, with short thresholds.
    let (stale_after, resync) = if outage >= Duration::from_secs(30) {
        (30, 10)
    } else {
        (3, 1)
    };
    let healed_after_stale_s = stale_to_restart(stale_after, resync).await?;
    let report = Report {
        rows,
        outage_s: outage.as_secs_f64(),
        reconnected_s,
        converged_s,
        turns_done_s,
        wrong_at_end,
        stale_after_s: stale_after,
        resync_s: resync,
        healed_after_stale_s,
    };
    report.print();
    Ok(report)
}

impl Report {
    fn print(&self) {
        header(&format!(
            "Recovery — listener cut off for {}s while {} rows change",
            self.outage_s, self.rows
        ));
        row(
            "door open → listener reconnected",
            match self.reconnected_s {
                Some(s) => secs(Some(s), 2),
                None => format!("not reconnected in {} s", PATIENCE.as_secs()),
            },
            Baseline::None,
            DASH,
            None,
        );
        row(
            &format!(
                "reconnect → all {}+ instances converged (right actor named; starts and cancels durably enqueued or done)",
                self.rows
            ),
            match self.converged_s {
                Some(s) => secs(Some(s), 2),
                None => "not reached".into(),
            },
            Baseline::None,
            "≤ 2 s",
            Some(self.converged_s.is_some_and(|s| s <= 2.0)),
        );
        row(
            &format!(
                "reconnect → every start and cancel also turned in Duroxide ({} wrong at the end)",
                self.wrong_at_end
            ),
            match self.turns_done_s {
                Some(s) => secs(Some(s), 2),
                None => "not reached".into(),
            },
            Baseline::None,
            DASH,
            None,
        );
        let resync = self.resync_s;
        row(
            &format!(
                "actor stale → restarted (stale_after {}s, resync {resync}s)",
                self.stale_after_s
            ),
            self.healed_after_stale_s
                .map(|h| format!("{h:.1} s after it went stale"))
                .unwrap_or("not healed".into()),
            Baseline::None,
            // A live stale actor is first re-leased and checked at once (at the first
            // resync after it went stale); only if it stays stale for one more stale period
            // is it restarted, at the next resync after that.
            &format!(
                "≤ stale_after + 2 resyncs ({} s): re-lease first, then restart",
                self.stale_after_s + 2 * resync
            ),
            Some(
                self.healed_after_stale_s
                    .is_some_and(|h| h <= (self.stale_after_s + 2 * resync) as f64 + 1.0),
            ),
        );
    }
}

/// Instances that are wrong: an actor is wanted and the current one does not run, or an
/// actor runs that no row wants. With `enqueued`, a start or cancel durably enqueued in
/// Duroxide's queue counts as done (the "converged").
async fn problems(pool: &PgPool, enqueued: bool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH live AS (
            SELECT i.instance_id, substr(i.instance_id, 7, 36) AS inst FROM toygres_actors_duroxide.instances i
              JOIN toygres_actors_duroxide.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
             WHERE e.status = 'Running')
         SELECT
           (SELECT count(*) FROM toygres_cms.instances c
             WHERE c.state::text IN ('creating', 'running')
               AND NOT EXISTS (SELECT 1 FROM live WHERE live.instance_id = c.instance_actor_orchestration_id)
               AND NOT ($1 AND EXISTS (SELECT 1 FROM toygres_actors_duroxide.orchestrator_queue q
                                        WHERE q.instance_id = c.instance_actor_orchestration_id
                                          AND q.work_item LIKE '{\"StartOrchestration\"%')))
         + (SELECT count(*) FROM live
             WHERE NOT EXISTS (SELECT 1 FROM toygres_cms.instances c
                                WHERE c.instance_actor_orchestration_id = live.instance_id
                                  AND c.state::text IN ('creating', 'running'))
               AND NOT ($1 AND EXISTS (SELECT 1 FROM toygres_actors_duroxide.orchestrator_queue q
                                        WHERE q.instance_id = live.instance_id
                                          AND q.work_item LIKE '{\"CancelInstance\"%')))",
    )
    .bind(enqueued)
    .fetch_one(pool)
    .await?)
}

async fn listener_backends(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'toygres-actors-listener'",
    )
    .fetch_one(pool)
    .await?)
}

/// What part one measured: door open → reconnected; reconnect → converged; reconnect →
/// turns done; instances wrong at the end.
type Outage = (Option<f64>, Option<f64>, Option<f64>, i64);

/// Part one: the listener cut off while every row changes.
async fn listener_outage(rows: usize, outage: Duration) -> Result<Outage> {
    let env = Env::start().await?;
    let door = Door::start(env.pg.port()).await?;
    let via_proxy = door.url(&env.url);
    let _svc = Service::start(
        &via_proxy,
        &["--check-interval", "30s", "--resync-interval", "600s"],
    )
    .await?;
    insert_many(&env.pool, "rec", rows, "running", None).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while problems(&env.pool, false).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = problems(&env.pool, false).await?;
    if before > 0 {
        bail!("{before} instance(s) still wrong 300 s after the insert, before any outage");
    }
    // Cut the listener off: shut the door, kill its backend.
    door.shut(false);
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'toygres-actors-listener'")
        .execute(&env.pool)
        .await?;
    let cut = Instant::now();
    // Change every row during the outage: a third stopped, a third deleted (and a new row
    // created), a third set to deleting.
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM toygres_cms.instances ORDER BY k8s_name")
            .fetch_all(&env.pool)
            .await?;
    let step = outage / (ids.len().max(1) as u32 + 1);
    for (i, id) in ids.iter().enumerate() {
        match i % 3 {
            0 => {
                sqlx::query("UPDATE toygres_cms.instances SET state = 'stopped' WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
            }
            1 => {
                sqlx::query("DELETE FROM toygres_cms.instances WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
                insert_instance(&env.pool, &format!("rec-new-{i}"), "creating", None).await?;
            }
            _ => {
                sqlx::query("UPDATE toygres_cms.instances SET state = 'deleting' WHERE id = $1")
                    .bind(id)
                    .execute(&env.pool)
                    .await?;
            }
        }
        tokio::time::sleep(step).await;
    }
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    door.open();
    let opened = Instant::now();
    let deadline = opened + PATIENCE;
    // Reconnected: a new listener backend.
    let mut reconnected = None;
    while reconnected.is_none() && Instant::now() <= deadline {
        if listener_backends(&env.pool).await? > 0 {
            reconnected = Some(Instant::now());
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let Some(reconnected) = reconnected else {
        return Ok((None, None, None, problems(&env.pool, false).await?));
    };
    // Converged (enqueued counts), then every turn done: each timed when first seen.
    let mut times = [None, None];
    for (at, enqueued) in [true, false].into_iter().enumerate() {
        loop {
            if problems(&env.pool, enqueued).await? == 0 {
                times[at] = Some(reconnected.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let wrong = problems(&env.pool, false).await?;
    let reconnected_s = Some((reconnected - opened).as_secs_f64());
    Ok((reconnected_s, times[0], times[1], wrong))
}

/// Part two: an actor whose probe hangs forever goes stale; seconds from stale onset
/// (`stale_after` after the actor started) to the reconciler's restart decision.
async fn stale_to_restart(stale_after: u64, resync: u64) -> Result<Option<f64>> {
    let env = Env::start().await?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hang_port = l.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let stale_s = format!("{stale_after}s");
    let resync_s = format!("{resync}s");
    let check_s = format!("{}s", (stale_after / 3).max(1));
    let _svc = Service::start(
        &env.url,
        &[
            "--check-interval",
            &check_s,
            "--stale-after",
            &stale_s,
            "--resync-interval",
            &resync_s,
            "--probe-connect-timeout",
            "600s",
            "--lease-renew-interval",
            &check_s,
            // Scaled like the other timers (production: 30 s minimum actor age before a
            // restart, with stale_after 5 min); the restart this measures is of an actor
            // stale_after old.
            "--restart-min-interval",
            &stale_s,
        ],
    )
    .await?;
    insert_instance(
        &env.pool,
        "hang",
        "running",
        Some(&format!("postgres://x:pw@127.0.0.1:{hang_port}/db")),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut heal: Option<f64> = None;
    while heal.is_none() && Instant::now() < deadline {
        heal = sqlx::query_scalar(
            // The old actor left Duroxide with the restart: its start decision dates it.
            "SELECT extract(epoch FROM d.decided_at - (s.decided_at + make_interval(secs => $1)))::float8
               FROM toygres_actors.decisions d
               JOIN toygres_actors.decisions s ON s.new_actor_id = d.old_actor_id
              WHERE d.k8s_name = 'hang' AND d.action = 'restart'
              ORDER BY d.decided_at LIMIT 1",
        )
        .bind(stale_after as f64)
        .fetch_optional(&env.pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(heal)
}
