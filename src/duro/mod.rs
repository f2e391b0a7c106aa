//! Duroxide: the runtime on duroxide-pg, and the actor lifecycle primitives the reconciler,
//! the API and the CLI share (start, cancel, restart).
//!
//! The store lives in schema `toygres_actors_duroxide` (configurable) of the CMS database. Its pool
//! gets planner settings of its own (`enable_hashjoin/mergejoin/seqscan/sort/bitmapscan =
//! off`): the provider's fetch runs inside PL/pgSQL, whose cached generic plan otherwise
//! scans and sorts the queues, with cost growing with the fleet. With those settings and the
//! extra index of `sql/duroxide_extra_index.sql` it is an index walk. Without bitmap scans:
//! in a burst the fetch's lookups of one instance's queued messages ANDed the instance index
//! (one row) with a bitmap of every visible row (10,000), 1.3 ms each. `--duroxide-async-commit` adds
//! `synchronous_commit=off` on that pool only.
//!
//! Incarnations: every start uses a new orchestration id `actor-<instance uuid>-<random>`,
//! because Duroxide silently ignores a start for an id it already knows (even a finished
//! one). A restart ([`ActorControl::replace_with`]) is one transaction, fenced by the
//! leader's term when automatic: swap `instance_actor_orchestration_id` compare-and-set →
//! remove the old incarnation from Duroxide when it is live (a forced delete, no cancel
//! turn) → record the decision → take the probe lease → enqueue the new one's start; then
//! commit. It all happens or none of it, so there are never two live actors for one
//! instance; an old incarnation that had already finished keeps its record for retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use duroxide::providers::WorkItem;
use duroxide::runtime::Runtime;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{Client, OrchestrationRegistry, RuntimeOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::actor::{self, ActorInput};
pub use crate::actor_state::ActorState;
use crate::check::ActorDeps;
use crate::cms::{InstanceRow, Seen};
use crate::config;
use crate::identity::Term;
use crate::sql;
use crate::store::Store;

mod batch;
mod eager;
mod open;
mod start;
pub use batch::{CancelActors, NewStart};
use eager::{Eager, FirstCheckOn};
use start::InQueue;

/// What can go wrong in a lifecycle step.
#[derive(Debug, thiserror::Error)]
pub enum DuroError {
    #[error("duroxide: {0}")]
    Client(#[from] duroxide::ClientError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("duroxide store: {0}")]
    Provider(String),
    #[error(
        "the instance row changed while we acted on it (actor id is no longer {expected:?}); reconcile again"
    )]
    Conflict { expected: Option<String> },
    #[error("state `{0}` calls for no actor")]
    NotWanted(String),
    #[error("not done: leader term {0} is over (another replica leads now)")]
    TermOver(i64),
    #[error("not done: this replica does not lead")]
    NotLeader,
    #[error("restart held back by the restart rate limits: try again in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error(transparent)]
    Foreign(#[from] crate::store::Refused),
    #[error("panicked: {0}")]
    Panicked(#[from] crate::panics::Panicked),
    #[error("legacy store `{schema}`: {message}")]
    Legacy { schema: String, message: String },
}

impl DuroError {
    /// A lock wait of a fenced transaction ran out (55P03, `lock_timeout`): a CMS row held
    /// by someone else. Retried shortly; not a failure of ours.
    pub fn row_held(&self) -> bool {
        matches!(self, DuroError::Db(crate::db::DbError::Sqlx(e))
            if e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55P03"))
    }
}

/// An error of a statement that asserted the leader's term `t`: [`DuroError::TermOver`] when
/// that term is over (TA001, `migrations/0004`).
fn term_error(e: sqlx::Error, t: &Term) -> DuroError {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "TA001" => DuroError::TermOver(t.term),
        _ => DuroError::from(e),
    }
}

impl From<sqlx::Error> for DuroError {
    fn from(e: sqlx::Error) -> Self {
        DuroError::Db(e.into())
    }
}

/// Runtime knobs (flags of `run`).
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub orchestration_concurrency: usize,
    pub worker_concurrency: usize,
    pub poll_interval: Duration,
    pub async_commit: bool,
}

pub use open::{open_store, open_unguarded_store, store_url};

/// Start the Duroxide runtime with the actor orchestration and its activity registered.
pub async fn start_runtime(
    store: Arc<Store>,
    deps: Arc<ActorDeps>,
    scheduler: Arc<crate::lease::CheckScheduler>,
    settings: &RuntimeSettings,
) -> Arc<Runtime> {
    let activities: ActivityRegistry =
        actor::register_activities(ActivityRegistry::builder(), deps, scheduler).build();
    let orchestrations = actor::register_orchestrations(OrchestrationRegistry::builder()).build();
    let options = RuntimeOptions {
        orchestration_concurrency: settings.orchestration_concurrency.max(1),
        worker_concurrency: settings.worker_concurrency.max(1),
        dispatcher_min_poll_interval: settings.poll_interval,
        // A probe is bounded by its timeouts; cancel of an in-flight check should be quick.
        activity_cancellation_grace_period: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    Runtime::start_with_options(store, activities, orchestrations, options).await
}

/// How many actors still run orchestration version 1 (exported as a gauge at start: v1
/// can be retired only by a release that proves this is zero everywhere).
pub async fn count_v1_actors(pool: &PgPool, schema: &str) -> Result<i64, DuroError> {
    Ok(
        sqlx::query_scalar(&sql::with_duroxide_schema(sql::ACTORS_V1_RUNNING, schema))
            .bind(config::ACTOR_ORCHESTRATION)
            .bind(config::ACTOR_VERSION_V1)
            .fetch_one(pool)
            .await?,
    )
}

/// An actor orchestration id for a new incarnation.
pub fn new_actor_id(instance: Uuid) -> String {
    let suffix = Uuid::new_v4().simple().to_string();
    format!("{}{instance}-{}", config::ACTOR_ID_PREFIX, &suffix[..12])
}

pub use crate::actor_state::instance_of_actor;

/// Settings an actor is started with.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    pub check_interval: Duration,
    pub iterations_per_execution: u32,
    pub unhealthy_after: u32,
    pub actor_states: Vec<String>,
    /// How often a (v2) actor renews its probe lease.
    pub lease_renew: Duration,
}

/// Start, cancel and restart actors; read their state.
#[derive(Clone)]
pub struct ActorControl {
    pub pool: PgPool,
    pub client: Client,
    /// The store the client uses: our own SQL enqueues wake its waiting fetches.
    pub store: Arc<Store>,
    pub schema: String,
    pub settings: ActorSettings,
    /// When set (the service, not the CLI), a started actor is leased to this replica's
    /// scheduler at once and its first health check runs right away, instead of after
    /// Duroxide's dispatcher has run the actor's first turn and lease activity (which only
    /// confirm or move the lease): see [`ActorInput::eager_first_check`].
    pub eager: Option<(Arc<ActorDeps>, Arc<crate::lease::CheckScheduler>)>,
    /// The priority lane's control ([`ActorControl::for_lane`]): an explicit restart's first
    /// check runs here, inline, before the restart returns.
    first_check_inline: bool,
}

/// The decision a start or restart records in its own transaction, so that no crash can
/// leave the action done and its decision missing from `explain`.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub action: crate::verdict::Did,
    pub reason: &'a str,
    pub trigger: String,
    pub replica: &'a str,
}

/// How a new incarnation's work is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Asked for (an operator, a restart request): its first turn and check go first.
    Explicit,
    /// The reconciler's own (a first start, a heal): in turn.
    Background,
}

/// What a lifecycle step did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    pub old_actor_id: Option<String>,
    pub new_actor_id: Option<String>,
}

impl ActorControl {
    pub fn new(pool: PgPool, store: Arc<Store>, schema: &str, settings: ActorSettings) -> Self {
        Self {
            pool,
            client: Client::new(store.clone()),
            store,
            schema: schema.to_string(),
            settings,
            eager: None,
            first_check_inline: false,
        }
    }

    /// Lease each new actor to this replica and check it at once, right after its start.
    pub fn with_eager_first_check(
        mut self,
        deps: Arc<ActorDeps>,
        scheduler: Arc<crate::lease::CheckScheduler>,
    ) -> Self {
        self.eager = Some((deps, scheduler));
        self
    }

    /// Whether `state` calls for an actor.
    pub fn wants_actor(&self, state: &crate::instance::InstanceState) -> bool {
        self.settings
            .actor_states
            .iter()
            .any(|s| state == s.as_str())
    }

    pub async fn actor_state(&self, actor_id: &str) -> Result<ActorState, DuroError> {
        type Row = (String, Option<DateTime<Utc>>, bool, Option<i64>);
        let row: Option<Row> =
            sqlx::query_as(&sql::with_duroxide_schema(sql::ACTOR_STATE, &self.schema))
                .bind(actor_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => ActorState::Absent,
            Some((status, _, _, _)) if status == "Pending" => ActorState::Pending,
            Some((status, last_progress, has_work, execution_id))
                if crate::actor_state::runs(&status) =>
            {
                ActorState::Running {
                    last_progress: last_progress.unwrap_or_else(crate::clock::now),
                    has_work,
                    execution_id: execution_id.unwrap_or(1),
                }
            }
            Some((status, _, _, _)) => ActorState::Finished { status },
        })
    }

    /// Every live incarnation of an instance (normally at most one).
    pub async fn live_actors(&self, instance: Uuid) -> Result<Vec<String>, DuroError> {
        Ok(self
            .live_actors_of(&[instance])
            .await?
            .remove(&instance)
            .unwrap_or_default())
    }

    fn input_for(&self, row: &InstanceRow) -> ActorInput {
        ActorInput {
            instance_id: row.id,
            k8s_name: row.k8s_name.clone(),
            interval_ms: self.settings.check_interval.as_millis() as u64,
            iterations_per_execution: self.settings.iterations_per_execution,
            unhealthy_after: self.settings.unhealthy_after,
            actor_states: self.settings.actor_states.clone(),
            consecutive_failures: 0,
            executions: 0,
            eager_first_check: self.eager.is_some(),
            // Every start of an eager control takes the lease in its own transaction
            // (`lease_in`, `sql/lease_new_actors.sql`).
            leased_at_start: self.eager.is_some(),
            lease_renew_ms: Some(self.settings.lease_renew.as_millis() as u64),
        }
    }

    /// Open a transaction for a lifecycle write; with a `fence`, the leader's term is
    /// checked first and stays locked until commit (see `migrations/0004`).
    pub(crate) async fn begin(
        &self,
        fence: Option<&Term>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DuroError> {
        let mut tx = self.pool.begin().await?;
        if let Some(t) = fence {
            sqlx::query(sql::ASSERT_TERM)
                .bind(&t.name)
                .bind(t.epoch)
                .bind(t.term)
                .execute(&mut *tx)
                .await
                .map_err(|e| term_error(e, t))?;
        }
        Ok(tx)
    }

    /// Enqueue a Duroxide work item inside `tx` (duroxide-pg's own procedure), commit, and
    /// wake this process's waiting fetches (the queue trigger wakes the others).
    async fn enqueue_and_commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        instance: &str,
        item: &WorkItem,
    ) -> Result<(), DuroError> {
        self.enqueue_and_commit_at(tx, instance, item, InQueue::InOrder)
            .await
    }

    /// [`ActorControl::enqueue_and_commit`], at `place` in the store's queue.
    async fn enqueue_and_commit_at(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        instance: &str,
        item: &WorkItem,
        place: InQueue,
    ) -> Result<(), DuroError> {
        self.enqueue_in(&mut tx, instance, item, place).await?;
        self.commit_enqueued(tx).await
    }

    /// Enqueue a Duroxide work item inside `tx` (duroxide-pg's own procedure), at `place`.
    async fn enqueue_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        instance: &str,
        item: &WorkItem,
        place: InQueue,
    ) -> Result<(), DuroError> {
        let visible = place.visible_at();
        let json = serde_json::to_string(item).map_err(|e| DuroError::Provider(e.to_string()))?;
        sqlx::query(&sql::with_duroxide_schema(
            sql::ENQUEUE_ORCHESTRATOR_WORK,
            &self.schema,
        ))
        .bind(instance)
        .bind(json)
        .bind(visible)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Commit a transaction that enqueued orchestrator work, and wake this process's
    /// waiting fetches (the queue trigger wakes the others).
    async fn commit_enqueued(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), DuroError> {
        crate::failpoint::hit(crate::failpoint::Point::FenceBeforeCommit);
        tx.commit().await?;
        self.store.enqueued_orchestrator_work();
        Ok(())
    }

    fn start_item(&self, actor_id: &str, input: &ActorInput) -> Result<WorkItem, DuroError> {
        Ok(WorkItem::StartOrchestration {
            instance: actor_id.to_string(),
            orchestration: config::ACTOR_ORCHESTRATION.to_string(),
            input: serde_json::to_string(input).map_err(|e| DuroError::Provider(e.to_string()))?,
            version: None,
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            execution_id: duroxide::INITIAL_EXECUTION_ID,
        })
    }

    /// Start the orchestration of an id the row already names (repairs an id Duroxide
    /// lost). One transaction: the term (with a fence), the row still naming the id, the
    /// start. A no-op in Duroxide if it knows the id.
    pub async fn start_named(
        &self,
        row: &InstanceRow,
        actor_id: &str,
        fence: Option<&Term>,
        record: Option<&Record<'_>>,
        seen: Option<&Seen>,
    ) -> Result<(), DuroError> {
        let input = self.input_for(row);
        let item = self.start_item(actor_id, &input)?;
        let first_probe = self.prepare_first_probe(row, FirstCheckOn::Scheduler, seen);
        let mut tx = self.begin(fence).await?;
        let named: Option<i32> = sqlx::query_scalar(sql::ACTOR_NAMED)
            .bind(row.id)
            .bind(actor_id)
            .fetch_optional(&mut *tx)
            .await?;
        if named.is_none() {
            return Err(DuroError::Conflict {
                expected: Some(actor_id.to_string()),
            });
        }
        self.record_in(&mut tx, row, Some(actor_id), record).await?;
        let leased = self.lease_in(&mut tx, &input, actor_id).await?;
        let first_check = self.first_check_ahead(row.id, first_probe.as_ref().filter(|_| leased));
        self.enqueue_and_commit(tx, actor_id, &item)
            .await
            .inspect_err(|_| first_check.cancel())?;
        if leased {
            let seen = match first_probe {
                Some(p) => p.seen().await,
                None => None,
            };
            self.schedule_first_check(&input, actor_id, Eager::Lease, seen);
        }
        Ok(())
    }

    /// New incarnation, in one transaction with a fence (under the leader's term): swap the
    /// column to a new id (compare-and-set), remove `row.actor_id` from Duroxide if it is
    /// live, and enqueue the new actor's start.
    pub async fn replace(
        &self,
        row: &InstanceRow,
        reason: &str,
        fence: Option<&Term>,
    ) -> Result<Transition, DuroError> {
        self.replace_with(row, reason, fence, Priority::Background, None, None)
            .await
    }

    /// [`ActorControl::replace`]; with [`Priority::Explicit`] (an explicit restart) the new
    /// actor's first turn and first check go before every one already due (never behind a
    /// storm's). `seen`: the state and target read with `row`, if the caller read them (the
    /// first probe then starts at once, without reading the row again).
    pub async fn replace_with(
        &self,
        row: &InstanceRow,
        reason: &str,
        fence: Option<&Term>,
        priority: Priority,
        record: Option<&Record<'_>>,
        seen: Option<&Seen>,
    ) -> Result<Transition, DuroError> {
        let urgent = priority == Priority::Explicit;
        if !self.wants_actor(&row.state) {
            return Err(DuroError::NotWanted(row.state.to_string()));
        }
        let on = if urgent && self.first_check_inline {
            FirstCheckOn::Inline
        } else {
            FirstCheckOn::Scheduler
        };
        let first_probe = self.prepare_first_probe(row, on, seen);
        // A live old actor is removed from Duroxide in the transaction that names the new
        // one (no cancel turn to wait for, never two live actors); a finished one keeps its
        // record until retention prunes it. The decision log keeps both ids and the reason.
        let live_old = match row.actor_id.as_deref() {
            Some(old) if self.actor_state(old).await?.is_live() => Some(old),
            _ => None,
        };
        let new_id = new_actor_id(row.id);
        let input = self.input_for(row);
        let item = self.start_item(&new_id, &input)?;
        let place = if urgent {
            InQueue::First
        } else {
            InQueue::InOrder
        };
        let incarnation = start::NewIncarnation {
            row,
            new_id: &new_id,
            input: &input,
            item: &item,
            place,
            fence,
            record,
            replacing: live_old,
            reason,
        };
        let (tx, leased) = self.start_uncommitted(&incarnation).await?;
        let first_check = self.first_check_ahead(row.id, first_probe.as_ref().filter(|_| leased));
        self.commit_enqueued(tx)
            .await
            .inspect_err(|_| first_check.cancel())?;
        let seen = match (leased, first_probe) {
            (true, Some(p)) => p.seen().await,
            _ => None,
        };
        if leased && urgent && self.first_check_inline {
            self.first_check_here(&input, &new_id, seen).await;
        } else if leased {
            let how = if urgent {
                Eager::LeaseFirst
            } else {
                Eager::Lease
            };
            self.schedule_first_check(&input, &new_id, how, seen);
        }
        Ok(Transition {
            old_actor_id: row.actor_id.clone(),
            new_actor_id: Some(new_id),
        })
    }

    /// Cancel one actor orchestration (no-op when absent or finished); with a fence, only
    /// while our term lasts.
    pub async fn cancel(
        &self,
        actor_id: &str,
        reason: &str,
        fence: Option<&Term>,
    ) -> Result<(), DuroError> {
        let item = WorkItem::CancelInstance {
            instance: actor_id.to_string(),
            reason: reason.to_string(),
        };
        let tx = self.begin(fence).await?;
        self.enqueue_and_commit(tx, actor_id, &item).await
    }

    /// Cancel and wait (up to [`config::CANCEL_WAIT`]) until Duroxide shows it
    /// terminal. Proceeding after the wait is safe: fencing keeps a late actor from writing.
    pub async fn cancel_and_wait(
        &self,
        actor_id: &str,
        reason: &str,
        fence: Option<&Term>,
    ) -> Result<(), DuroError> {
        if !self.actor_state(actor_id).await?.is_live() {
            return Ok(());
        }
        self.cancel(actor_id, reason, fence).await?;
        let deadline = Instant::now() + config::CANCEL_WAIT;
        let mut delay = Duration::from_millis(5);
        while Instant::now() < deadline {
            if !self.actor_state(actor_id).await?.is_live() {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        tracing::warn!(
            actor_id,
            "actor not terminal after cancel; returning (fencing keeps it from writing)"
        );
        Ok(())
    }

    /// Cancel the instance's actor and any stray incarnation (the API's `cancel`). The
    /// column keeps naming the cancelled actor, so the verdict becomes `missing` — and the
    /// reconciler starts a new one unless the row stops calling for an actor.
    pub async fn cancel_all(
        &self,
        row: &InstanceRow,
        reason: &str,
    ) -> Result<Transition, DuroError> {
        let mut live = self.live_actors(row.id).await?;
        if let Some(current) = &row.actor_id
            && !live.contains(current)
        {
            live.push(current.clone());
        }
        for id in &live {
            self.cancel_and_wait(id, reason, None).await?;
        }
        Ok(Transition {
            old_actor_id: row.actor_id.clone(),
            new_actor_id: None,
        })
    }
}
