//! Many first starts in one transaction: the set-based half of a storm (10,000 rows inserted
//! together, a restore that lost every actor, a resync after the listener was cut off).
//!
//! The per-instance [`ActorControl::replace`] takes three statements and one commit per
//! actor. [`ActorControl::start_batch`] does the same for a whole batch in five statements
//! and one commit: the leader's term; every actor id swapped compare-and-set
//! (`sql/swap_actor_ids.sql`, `unnest`); every start enqueued through duroxide-pg's own
//! procedure (`sql/enqueue_orchestrator_work_many.sql`); every probe lease taken by this
//! replica (`sql/lease_new_actors.sql`); every decision recorded
//! (`sql/insert_decisions.sql`). A crash anywhere leaves all of it or none of it — and
//! `explain` shows a decision for every actor the batch started.

use crate::verdict::Did;
use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{ActorControl, DuroError, new_actor_id};
use crate::cms::InstanceRow;
use crate::config;
use crate::identity::Term;
use crate::sql;
use duroxide::providers::WorkItem;

/// One first start of a batch: the row (naming no actor yet) and why.
#[derive(Debug, Clone)]
pub struct NewStart {
    pub row: InstanceRow,
    /// The decision's reason, recorded with it.
    pub reason: String,
    /// The trigger label, recorded with the decision.
    pub trigger: String,
}

/// Actors of one instance to cancel (its row is gone or calls for no actor, or they are
/// strays beside the actor the row names), with the decision recorded for it.
#[derive(Debug, Clone)]
pub struct CancelActors {
    pub instance_id: Uuid,
    /// The row's name, or `(deleted <id>)`.
    pub name: String,
    pub actors: Vec<String>,
    pub reason: String,
    /// The actor the row still names after the cancel (strays cancelled beside it).
    pub keep: Option<String>,
    /// The trigger label, recorded with the decision.
    pub trigger: String,
}

impl CancelActors {
    /// Its decision row: its first actor → `new`.
    fn decided(&self, action: Did, new: Option<String>) -> Decided {
        Decided {
            instance_id: self.instance_id,
            name: self.name.clone(),
            action,
            reason: self.reason.clone(),
            old: self.actors.first().cloned(),
            new,
            trigger: self.trigger.clone(),
        }
    }
}

/// One decision row, as `sql/insert_decisions.sql` takes them.
pub(super) struct Decided {
    pub(super) instance_id: Uuid,
    pub(super) name: String,
    pub(super) action: Did,
    pub(super) reason: String,
    pub(super) old: Option<String>,
    pub(super) new: Option<String>,
    pub(super) trigger: String,
}

/// Record many decisions in the transaction that carries them out.
pub(super) async fn record_decisions(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    decided: &[Decided],
    replica: &str,
) -> Result<(), DuroError> {
    let col = |f: fn(&Decided) -> Option<String>| decided.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = decided.iter().map(|d| d.instance_id).collect();
    sqlx::query(sql::INSERT_DECISIONS)
        .bind(&ids)
        .bind(col(|d| Some(d.name.clone())))
        .bind(col(|d| Some(d.action.label().to_string())))
        .bind(col(|d| Some(d.reason.clone())))
        .bind(col(|d| d.old.clone()))
        .bind(col(|d| d.new.clone()))
        .bind(col(|d| Some(d.trigger.clone())))
        .bind(replica)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl ActorControl {
    /// Enqueue many Duroxide work items inside `tx` (parallel arrays of orchestration ids
    /// and serialised items), visible now.
    async fn enqueue_many(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        instances: &[String],
        items: &[String],
    ) -> Result<(), DuroError> {
        sqlx::query(&sql::with_duroxide_schema(
            sql::ENQUEUE_ORCHESTRATOR_WORK_MANY,
            &self.schema,
        ))
        .bind(instances)
        .bind(items)
        .bind(crate::clock::visible_now())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every live incarnation of many instances, in one query (by instance).
    pub async fn live_actors_of(
        &self,
        instances: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<String>>, DuroError> {
        let lo: Vec<String> = instances
            .iter()
            .map(|i| format!("{}{i}-", config::ACTOR_ID_PREFIX))
            .collect();
        // '-' + 1 = '.': every id with the prefix sorts below this in the "C" collation.
        let hi: Vec<String> = instances
            .iter()
            .map(|i| format!("{}{i}.", config::ACTOR_ID_PREFIX))
            .collect();
        let live: Vec<String> = sqlx::query_scalar(&sql::with_duroxide_schema(
            sql::LIVE_ACTORS_OF_INSTANCES,
            &self.schema,
        ))
        .bind(&lo)
        .bind(&hi)
        .fetch_all(&self.pool)
        .await?;
        let mut by_instance: HashMap<Uuid, Vec<String>> = HashMap::new();
        for a in live {
            if let Some(i) = super::instance_of_actor(&a) {
                by_instance.entry(i).or_default().push(a);
            }
        }
        Ok(by_instance)
    }

    /// Remove actor orchestrations outright (running ones too) inside `tx`: instance,
    /// history, queued work and locks. Returns how many instances were removed.
    pub(crate) async fn delete_actors_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        actor_ids: &[&str],
    ) -> Result<i64, DuroError> {
        Ok(sqlx::query_scalar(&sql::with_duroxide_schema(
            sql::DELETE_ACTOR_INSTANCES,
            &self.schema,
        ))
        .bind(actor_ids)
        .fetch_one(&mut **tx)
        .await?)
    }

    /// Delete the Duroxide instances of the actors of many instances whose CMS rows are
    /// gone, in one transaction (with a fence, under the leader's term), with a `delete`
    /// decision for each: no cancel turn to wait for, so a storm of deletes is over at
    /// commit. Returns how many orchestration instances were removed.
    pub async fn delete_batch(
        &self,
        gone: &[CancelActors],
        fence: Option<&Term>,
        replica: &str,
    ) -> Result<i64, DuroError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let actor_ids: Vec<&str> = gone
            .iter()
            .flat_map(|g| g.actors.iter().map(String::as_str))
            .collect();
        let mut tx = self.begin(fence).await?;
        let deleted = self.delete_actors_in(&mut tx, &actor_ids).await?;
        let decided: Vec<Decided> = gone.iter().map(|g| g.decided(Did::Delete, None)).collect();
        record_decisions(&mut tx, &decided, replica).await?;
        crate::failpoint::hit(crate::failpoint::Point::FenceBeforeCommit);
        tx.commit().await?;
        for g in gone {
            for actor_id in &g.actors {
                self.stop_checking(g.instance_id, actor_id);
            }
        }
        Ok(deleted)
    }

    /// Cancel the actors of many instances in one transaction (with a fence, under the
    /// leader's term), with a `cancel` decision for each instance.
    pub async fn cancel_batch(
        &self,
        gone: &[CancelActors],
        fence: Option<&Term>,
        replica: &str,
    ) -> Result<(), DuroError> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut actor_ids = Vec::new();
        let mut items = Vec::new();
        for g in gone {
            for a in &g.actors {
                let item = WorkItem::CancelInstance {
                    instance: a.clone(),
                    reason: g.reason.clone(),
                };
                actor_ids.push(a.clone());
                items.push(
                    serde_json::to_string(&item).map_err(|e| DuroError::Provider(e.to_string()))?,
                );
            }
        }
        let mut tx = self.begin(fence).await?;
        self.enqueue_many(&mut tx, &actor_ids, &items).await?;
        let decided: Vec<Decided> = gone
            .iter()
            .map(|g| g.decided(Did::Cancel, g.keep.clone()))
            .collect();
        record_decisions(&mut tx, &decided, replica).await?;
        crate::failpoint::hit(crate::failpoint::Point::FenceBeforeCommit);
        tx.commit().await?;
        self.store.enqueued_orchestrator_work();
        Ok(())
    }

    /// Start a new actor for every row in one transaction (with a fence, under the leader's
    /// term). Returns `(instance, new actor id)` for each row started; a row that changed
    /// since it was read (it names an actor now, or no longer calls for one) is left out,
    /// for the per-instance path to look at again.
    pub async fn start_batch(
        &self,
        starts: &[NewStart],
        fence: Option<&Term>,
        replica: &str,
    ) -> Result<Vec<(Uuid, String)>, DuroError> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = starts.iter().map(|s| s.row.id).collect();
        let expected: Vec<Option<String>> = starts.iter().map(|s| s.row.actor_id.clone()).collect();
        let new_ids: Vec<String> = starts.iter().map(|s| new_actor_id(s.row.id)).collect();
        let mut tx = self.begin(fence).await?;
        let swapped: HashSet<Uuid> = sqlx::query_scalar(sql::SWAP_ACTOR_IDS)
            .bind(&ids)
            .bind(&expected)
            .bind(&new_ids)
            .bind(&self.settings.actor_states)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let mut done = Vec::with_capacity(swapped.len());
        let mut items = Vec::with_capacity(swapped.len());
        let mut inputs = Vec::with_capacity(swapped.len());
        for (s, new_id) in starts.iter().zip(&new_ids) {
            if !swapped.contains(&s.row.id) {
                continue;
            }
            let input = self.input_for(&s.row);
            let item = self.start_item(new_id, &input)?;
            items.push(
                serde_json::to_string(&item).map_err(|e| DuroError::Provider(e.to_string()))?,
            );
            done.push((s, new_id.clone()));
            inputs.push(input);
        }
        if done.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let actor_ids: Vec<String> = done.iter().map(|(_, a)| a.clone()).collect();
        let instance_ids: Vec<Uuid> = done.iter().map(|(s, _)| s.row.id).collect();
        self.enqueue_many(&mut tx, &actor_ids, &items).await?;
        if let Some((_, scheduler)) = &self.eager {
            let owner_ttl = self.owner_ttl();
            sqlx::query(sql::LEASE_NEW_ACTORS)
                .bind(&instance_ids)
                .bind(&actor_ids)
                .bind(scheduler.id().name())
                .bind(scheduler.id().epoch())
                .bind(owner_ttl.as_secs_f64())
                .execute(&mut *tx)
                .await?;
        }
        let decided: Vec<Decided> = done
            .iter()
            .map(|(s, new_id)| Decided {
                instance_id: s.row.id,
                name: s.row.k8s_name.clone(),
                action: Did::Start,
                reason: s.reason.clone(),
                old: None,
                new: Some(new_id.clone()),
                trigger: s.trigger.clone(),
            })
            .collect();
        record_decisions(&mut tx, &decided, replica).await?;
        crate::failpoint::hit(crate::failpoint::Point::FenceBeforeCommit);
        tx.commit().await?;
        self.store.enqueued_orchestrator_work();
        // Committed: this replica holds every lease; check each new actor at once.
        if let Some((_, scheduler)) = &self.eager {
            for (input, actor_id) in inputs.iter().zip(&actor_ids) {
                scheduler.lease(self.first_lease(input, actor_id, None));
            }
        }
        Ok(instance_ids.into_iter().zip(actor_ids).collect())
    }
}
