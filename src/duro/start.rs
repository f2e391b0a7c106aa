//! A new incarnation's start, up to its commit: the leader's term, the actor-id swap, the
//! removal of a live old actor (a restart), the decision, the eager lease and the enqueue,
//! in one transaction. With no old actor to remove (a first start, a lost actor replaced)
//! the five are one statement (`toygres_actors.start_actor`, `migrations/0018`): a single
//! insert's first probe runs beside this transaction on the same cores, and the first
//! check's write waits for its commit.

use super::{ActorControl, DuroError, Record, batch, term_error};
use crate::actor::ActorInput;
use crate::cms::InstanceRow;
use crate::identity::Term;
use crate::lease::store::LeaseHolder;
use crate::sql;
use duroxide::providers::WorkItem;

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Where an enqueued item goes in the store's queue (Duroxide's fetch takes the oldest
/// visible first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InQueue {
    /// Visible now: behind whatever is already queued.
    InOrder,
    /// Visible since long ago: before a storm's queued work — the turns of an explicit
    /// restart never wait behind 10,000 starts.
    First,
}

impl InQueue {
    pub(super) fn visible_at(self) -> chrono::DateTime<chrono::Utc> {
        match self {
            InQueue::First => crate::clock::visible_now() - chrono::Duration::hours(1),
            InQueue::InOrder => crate::clock::visible_now(),
        }
    }
}

/// What a new incarnation's start needs ([`ActorControl::start_uncommitted`]).
pub(super) struct NewIncarnation<'a> {
    pub(super) row: &'a InstanceRow,
    pub(super) new_id: &'a str,
    pub(super) input: &'a ActorInput,
    pub(super) item: &'a WorkItem,
    pub(super) place: InQueue,
    pub(super) fence: Option<&'a Term>,
    pub(super) record: Option<&'a Record<'a>>,
    /// The live old actor removed in the same transaction (a restart), if any.
    pub(super) replacing: Option<&'a str>,
    pub(super) reason: &'a str,
}

impl ActorControl {
    /// Record `record` (if any) for `row` in `tx`: the row's current actor → `new`.
    pub(super) async fn record_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        row: &InstanceRow,
        new: Option<&str>,
        record: Option<&Record<'_>>,
    ) -> Result<(), DuroError> {
        let Some(r) = record else {
            return Ok(());
        };
        let decided = batch::Decided {
            instance_id: row.id,
            name: row.k8s_name.clone(),
            action: r.action,
            reason: r.reason.to_string(),
            old: row.actor_id.clone(),
            new: new.map(str::to_string),
            trigger: r.trigger.clone(),
        };
        batch::record_decisions(tx, &[decided], r.replica).await
    }

    /// The start of `s.new_id` in place of the row's actor, not yet committed: the open
    /// transaction, and whether this replica holds the new actor's lease. A row changed
    /// meanwhile (or calling for no actor) is [`DuroError::Conflict`].
    pub(super) async fn start_uncommitted(
        &self,
        s: &NewIncarnation<'_>,
    ) -> Result<(Tx, bool), DuroError> {
        match s.replacing {
            None => self.start_in_one_statement(s).await,
            Some(old) => self.start_replacing(s, old).await,
        }
    }

    async fn start_in_one_statement(
        &self,
        s: &NewIncarnation<'_>,
    ) -> Result<(Tx, bool), DuroError> {
        let json = serde_json::to_string(s.item).map_err(|e| DuroError::Provider(e.to_string()))?;
        let me = self
            .eager
            .as_ref()
            .map(|(_, scheduler)| (scheduler.id().name().to_string(), scheduler.id().epoch()));
        let mut tx = self.pool.begin().await?;
        let (swapped, holder, holder_epoch): (bool, Option<String>, Option<i64>) =
            sqlx::query_as(sql::START_ACTOR)
                .bind(s.fence.map(|t| t.name.as_str()))
                .bind(s.fence.map(|t| t.epoch))
                .bind(s.fence.map(|t| t.term))
                .bind(s.row.id)
                .bind(s.row.actor_id.as_deref())
                .bind(s.new_id)
                .bind(&self.settings.actor_states)
                .bind(&s.row.k8s_name)
                .bind(s.record.map(|r| r.action.label()))
                .bind(s.record.map(|r| r.reason))
                .bind(s.record.map(|r| r.trigger.as_str()))
                .bind(s.record.map(|r| r.replica))
                .bind(me.as_ref().map(|(name, _)| name.as_str()))
                .bind(me.as_ref().map(|(_, epoch)| *epoch))
                .bind(self.owner_ttl().as_secs_f64())
                .bind(&self.schema)
                .bind(json)
                .bind(s.place.visible_at())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| match s.fence {
                    Some(t) => term_error(e, t),
                    None => DuroError::from(e),
                })?;
        if !swapped {
            return Err(DuroError::Conflict {
                expected: s.row.actor_id.clone(),
            });
        }
        let leased = match (&me, LeaseHolder::from_columns(holder, holder_epoch)) {
            (Some((name, epoch)), Some(h)) => h.is((name, *epoch)),
            _ => false,
        };
        Ok((tx, leased))
    }

    async fn start_replacing(
        &self,
        s: &NewIncarnation<'_>,
        old: &str,
    ) -> Result<(Tx, bool), DuroError> {
        let mut tx = self.begin(s.fence).await?;
        let swapped: Option<uuid::Uuid> = sqlx::query_scalar(sql::SWAP_ACTOR_ID)
            .bind(s.row.id)
            .bind(s.row.actor_id.as_deref())
            .bind(Some(s.new_id))
            .bind(&self.settings.actor_states)
            .fetch_optional(&mut *tx)
            .await?;
        if swapped.is_none() {
            return Err(DuroError::Conflict {
                expected: s.row.actor_id.clone(),
            });
        }
        self.delete_actors_in(&mut tx, &[old]).await?;
        tracing::debug!(
            actor_id = old,
            reason = s.reason,
            "old actor removed with the restart"
        );
        self.record_in(&mut tx, s.row, Some(s.new_id), s.record)
            .await?;
        let leased = self.lease_in(&mut tx, s.input, s.new_id).await?;
        self.enqueue_in(&mut tx, s.new_id, s.item, s.place).await?;
        Ok((tx, leased))
    }
}
