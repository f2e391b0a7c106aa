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

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::{ActorControl, DuroError, new_actor_id};
use crate::actor;
use crate::cms::InstanceRow;
use crate::identity::Term;
use crate::sql;

/// One first start of a batch: the row (naming no actor yet) and why.
#[derive(Debug, Clone)]
pub struct NewStart {
    pub row: InstanceRow,
    /// The decision's reason, recorded with it.
    pub reason: String,
    /// The trigger label, recorded with the decision.
    pub trigger: String,
}

impl ActorControl {
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
        sqlx::query(&sql::with_duroxide_schema(
            sql::ENQUEUE_ORCHESTRATOR_WORK_MANY,
            &self.schema,
        ))
        .bind(&actor_ids)
        .bind(&items)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await?;
        if let Some((_, scheduler)) = &self.eager {
            let owner_ttl = self.settings.lease_renew * actor::LEASE_OVERLAP;
            sqlx::query(sql::LEASE_NEW_ACTORS)
                .bind(&instance_ids)
                .bind(&actor_ids)
                .bind(scheduler.id().name())
                .bind(scheduler.id().epoch())
                .bind(owner_ttl.as_secs_f64())
                .execute(&mut *tx)
                .await?;
        }
        let names: Vec<&str> = done.iter().map(|(s, _)| s.row.k8s_name.as_str()).collect();
        let reasons: Vec<&str> = done.iter().map(|(s, _)| s.reason.as_str()).collect();
        let triggers: Vec<&str> = done.iter().map(|(s, _)| s.trigger.as_str()).collect();
        let actions = vec!["start"; done.len()];
        let old: Vec<Option<&str>> = vec![None; done.len()];
        sqlx::query(sql::INSERT_DECISIONS)
            .bind(&instance_ids)
            .bind(&names)
            .bind(&actions)
            .bind(&reasons)
            .bind(&old)
            .bind(&actor_ids)
            .bind(&triggers)
            .bind(replica)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.store.enqueued_orchestrator_work();
        // Committed: this replica holds every lease; check each new actor at once.
        if let Some((_, scheduler)) = &self.eager {
            for (input, actor_id) in inputs.iter().zip(&actor_ids) {
                scheduler.lease(crate::lease::Lease {
                    instance_id: input.instance_id,
                    actor_id: actor_id.clone(),
                    interval: self.settings.check_interval,
                    first_in: Duration::ZERO,
                    unhealthy_after: input.unhealthy_after,
                    actor_states: input.actor_states.clone(),
                });
            }
        }
        Ok(instance_ids.into_iter().zip(actor_ids).collect())
    }
}
