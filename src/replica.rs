//! Replica liveness and the probe leases that follow it (like River's elector and job
//! rescuer, in one small service per replica; a lease's whole life: [`crate::lease`]).
//!
//! Every [`config::REPLICA_TICK`] the replica calls `toygres_actors.replica_tick`
//! (`migrations/0004`) in one statement: heartbeat its row (name, epoch) with a TTL of
//! [`config::REPLICA_TTL`]; claim its fair share of the leases whose holder is gone
//! (SKIP LOCKED, spread over the live replicas); and, while it holds fewer than its share,
//! take up to [`config::LEASE_MOVES_PER_TICK`] from the most loaded replica. Then it reads
//! the leases assigned to it since the last tick and hands them to the probe scheduler,
//! which checks at once any instance whose last check is older than the interval.
//!
//! Leases belong to a replica's name: a replica that registers again under a new epoch takes
//! its own back at its next tick (no one else claims them while the name is live), and after
//! it rejoined it leaves other replicas' orphans alone for one TTL (`migrations/0007`).
//!
//! The heartbeat answers one of three things:
//! - `ok`: we are live;
//! - `expired`: our liveness lapsed (we were frozen or cut off longer than the TTL): our
//!   leases may be anyone's now, and the database refuses every write under the old epoch.
//!   We drop all probing, take a new epoch and register again; what no live replica took
//!   meanwhile comes back to us at the next tick;
//! - `superseded`: a newer process registered our name. The newest wins: we stop probing for
//!   good and say so loudly (two processes with one name would otherwise fight).
//!
//! A graceful stop ([`Replica::hand_over`]) stops the scheduler's new work, hands every lease
//! to the live replicas in one statement and marks us draining — before Duroxide drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config;
use crate::identity::ReplicaId;
use crate::lease::{CheckScheduler, Lease};
use crate::metrics;
use crate::sql;

/// Every this many ticks (one minute) the replica re-reads all of its leases.
const FULL_PICK_UP_TICKS: u32 = 24;

/// How this replica stands among the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Not registered yet.
    #[default]
    Starting,
    Live,
    /// A newer process took our name: we no longer probe.
    Superseded,
    /// Leases handed over; stopping.
    Draining,
}

/// What leases are probed with (the service's check settings).
#[derive(Debug, Clone)]
pub struct ProbeRules {
    pub interval: Duration,
    pub unhealthy_after: u32,
    pub actor_states: Vec<String>,
}

/// The replica's liveness service.
pub struct Replica {
    pub id: Arc<ReplicaId>,
    pool: PgPool,
    scheduler: Arc<CheckScheduler>,
    rules: ProbeRules,
    liveness: watch::Sender<Liveness>,
    /// Cancelled when a newer process took our name: the election stops too.
    superseded: CancellationToken,
    /// When we last registered again after our heartbeat lapsed.
    rejoined: std::sync::Mutex<Option<Instant>>,
}

#[derive(sqlx::FromRow)]
struct Tick {
    status: String,
    claimed: i32,
    stolen: i32,
}

#[derive(sqlx::FromRow)]
struct AssignedLease {
    instance_id: Uuid,
    actor_id: String,
    last_health_check: Option<DateTime<Utc>>,
    assigned_at: DateTime<Utc>,
}

impl Replica {
    pub fn new(pool: PgPool, scheduler: Arc<CheckScheduler>, rules: ProbeRules) -> Self {
        Self {
            id: scheduler.id().clone(),
            pool,
            scheduler,
            rules,
            liveness: watch::channel(Liveness::Starting).0,
            superseded: CancellationToken::new(),
            rejoined: std::sync::Mutex::new(None),
        }
    }

    /// Fires when a newer process registered our name.
    pub fn superseded(&self) -> CancellationToken {
        self.superseded.clone()
    }

    pub fn liveness(&self) -> watch::Receiver<Liveness> {
        self.liveness.subscribe()
    }

    /// Register (name, epoch); the newest registration of a name wins.
    pub async fn register(&self) -> Result<(), sqlx::Error> {
        sqlx::query(sql::REPLICA_REGISTER)
            .bind(self.id.name())
            .bind(self.id.epoch())
            .bind(config::REPLICA_TTL.as_secs_f64())
            .bind(env!("CARGO_PKG_VERSION"))
            .execute(&self.pool)
            .await?;
        self.liveness.send_replace(Liveness::Live);
        tracing::info!(
            replica = self.id.name(),
            epoch = self.id.epoch(),
            "replica registered"
        );
        Ok(())
    }

    /// Heartbeat, claim, balance and pick up leases until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(config::REPLICA_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Leases assigned to us at or after this (database clock) are not yet picked up.
        let mut since: Option<DateTime<Utc>> = None;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match *self.liveness.borrow() {
                Liveness::Superseded | Liveness::Draining => continue,
                Liveness::Starting | Liveness::Live => {}
            }
            if *self.liveness.borrow() == Liveness::Starting
                && let Err(e) = self.register().await
            {
                tracing::warn!(error = %e, "replica registration failed; retrying");
                continue;
            }
            // Now and then pick up every lease we hold, not only the newly assigned ones: a
            // safety net under the delta (an entry dropped after a transient refusal).
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(FULL_PICK_UP_TICKS) {
                since = None;
            }
            match self.tick_once(&mut since).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "replica tick failed"),
            }
        }
    }

    async fn tick_once(&self, since: &mut Option<DateTime<Utc>>) -> Result<(), sqlx::Error> {
        let epoch = self.id.epoch();
        let t: Tick = tokio::time::timeout(
            config::REPLICA_TICK * 2,
            sqlx::query_as(sql::REPLICA_TICK)
                .bind(self.id.name())
                .bind(epoch)
                .bind(config::REPLICA_TTL.as_secs_f64())
                .bind(config::LEASE_MOVES_PER_TICK)
                .bind(self.claims_others())
                .fetch_one(&self.pool),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        match t.status.as_str() {
            "ok" => {}
            "expired" => {
                let dropped = self.scheduler.clear();
                let new = self.id.renew_epoch();
                tracing::warn!(
                    replica = self.id.name(),
                    old_epoch = epoch,
                    new_epoch = new,
                    dropped,
                    "our heartbeat lapsed (frozen or cut off longer than the TTL): everything held under the old epoch is gone; registering again"
                );
                *since = None;
                self.liveness.send_replace(Liveness::Starting);
                self.register().await?;
                *self.rejoined.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                return Ok(());
            }
            _ => {
                let dropped = self.scheduler.clear();
                self.liveness.send_replace(Liveness::Superseded);
                self.superseded.cancel();
                tracing::error!(
                    replica = self.id.name(),
                    epoch,
                    dropped,
                    "another process registered the replica name `{}`: the newest wins, so this one stops probing and leading. Give every replica its own --replica name.",
                    self.id.name()
                );
                return Ok(());
            }
        }
        if t.claimed > 0 || t.stolen > 0 {
            tracing::info!(
                claimed = t.claimed,
                taken_to_balance = t.stolen,
                "probe leases taken over"
            );
            metrics::leases_moved("claimed", t.claimed);
            metrics::leases_moved("balanced", t.stolen);
        }
        self.pick_up(since).await
    }

    /// Whether this tick may claim other replicas' orphaned leases: not for one TTL after we
    /// rejoined (an outage that cut us off likely cut our peers off too; they take their own
    /// leases back when they return, and nothing is reshuffled). Our own come back at once.
    fn claims_others(&self) -> bool {
        let rejoined = *self.rejoined.lock().unwrap_or_else(|p| p.into_inner());
        rejoined.is_none_or(|t| t.elapsed() >= config::REPLICA_TTL)
    }

    /// Hand the leases assigned to us since the last tick to the scheduler.
    async fn pick_up(&self, since: &mut Option<DateTime<Utc>>) -> Result<(), sqlx::Error> {
        let rows: Vec<AssignedLease> = sqlx::query_as(sql::ASSIGNED_LEASES)
            .bind(self.id.name())
            .bind(self.id.epoch())
            .bind(*since)
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            if since.is_none_or(|s| r.assigned_at > s) {
                *since = Some(r.assigned_at);
            }
            self.scheduler.lease(Lease {
                instance_id: r.instance_id,
                actor_id: r.actor_id.clone(),
                interval: self.rules.interval,
                first_in: crate::lease::first_due(r.last_health_check, self.rules.interval),
                unhealthy_after: self.rules.unhealthy_after,
                actor_states: self.rules.actor_states.clone(),
                seen: None,
            });
        }
        metrics::leases_held(self.scheduler.len());
        Ok(())
    }

    /// Graceful stop: no new checks here, every lease to the live replicas, draining.
    /// Returns the number of leases handed over.
    pub async fn hand_over(&self) -> Result<i32, sqlx::Error> {
        self.liveness.send_replace(Liveness::Draining);
        self.scheduler.clear();
        let handed: i32 = sqlx::query_scalar(sql::REPLICA_HAND_OVER)
            .bind(self.id.name())
            .bind(self.id.epoch())
            .fetch_one(&self.pool)
            .await?;
        metrics::leases_held(0);
        tracing::info!(handed, replica = self.id.name(), "probe leases handed over");
        Ok(handed)
    }
}

/// One row of `GET /api/replicas` and `status`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ReplicaRow {
    pub name: String,
    pub epoch: i64,
    pub version: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_age_seconds: f64,
    pub live: bool,
    pub draining: bool,
    pub leases: i64,
    pub leader: bool,
    pub term: Option<i64>,
}

/// Every replica known to the database, live first.
pub async fn list(pool: &PgPool) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    sqlx::query_as(sql::REPLICAS).fetch_all(pool).await
}
