//! The set-based reconcile of a storm: when many hints are queued at once (a burst of
//! inserts, the full reconcile after a reconnect or a restore), [`ReconcileQueue`] hands
//! them over in batches instead of one by one.
//!
//! One query reads every row of the batch; [`verdict::decide`] runs on each, exactly as on
//! the per-instance path; every first start is carried out in one transaction
//! ([`ActorControl::start_batch`](crate::duro::ActorControl::start_batch)). Whatever is not
//! a first start or a no-op — a row that names an actor already, a deleted row, a restart,
//! a row changed under us — goes back to the per-instance path, which reads it again. So a
//! batch is an optimisation of the common case, never a second set of rules.
//!
//! [`ReconcileQueue`]: super::ReconcileQueue

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use uuid::Uuid;

use super::{Reconciler, Trigger};
use crate::cms::InstanceRow;
use crate::duro::{DuroError, NewStart};
use crate::metrics;
use crate::sql;
use crate::verdict::{self, Action, Observed};

/// Below this many queued hints the per-instance path runs (it is the quickest for one).
pub const BATCH_MIN: usize = 16;
/// At most this many instances in one batch (one transaction).
pub const BATCH_MAX: usize = 500;

impl Reconciler {
    /// Reconcile many instances at once. Returns the ids the batch did not settle, for the
    /// per-instance path. An error means nothing of the batch was done.
    pub async fn reconcile_batch(&self, jobs: &[(Uuid, Trigger)]) -> Result<Vec<Uuid>, DuroError> {
        let started = Instant::now();
        let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
        let rows: Vec<InstanceRow> = sqlx::query_as(sql::INSTANCES_BY_IDS)
            .bind(&ids)
            .fetch_all(self.pool())
            .await?;
        let mut by_id: HashMap<Uuid, InstanceRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let now = Utc::now();
        let mut single = Vec::new();
        let mut starts = Vec::new();
        let mut clocks: HashMap<Uuid, f64> = HashMap::new();
        let mut fence_trigger = None;
        for (id, trigger) in jobs {
            // A row naming an actor needs Duroxide's view of it; a gone row, the lookup of
            // its live incarnations: both are the per-instance path's.
            let Some(row) = by_id.remove(id).filter(|r| r.actor_id.is_none()) else {
                single.push(*id);
                continue;
            };
            let observed = Observed {
                row,
                actor: None,
                actor_created_at: None,
                other_live: Vec::new(),
            };
            let decision = verdict::decide(&observed, &self.rules, now);
            match decision.action {
                Action::Noop => {
                    self.settle_backoff(&observed.row, decision.verdict);
                    metrics::reconcile_action("noop");
                }
                Action::Start { named: None } => {
                    if let Trigger::Notification { at: Some(at), .. } = trigger {
                        clocks.insert(*id, *at);
                    }
                    fence_trigger.get_or_insert_with(|| trigger.clone());
                    starts.push(NewStart {
                        row: observed.row,
                        reason: decision.reason,
                        trigger: trigger.label(),
                    });
                }
                _ => single.push(*id),
            }
        }
        let Some(trigger) = fence_trigger else {
            return Ok(single);
        };
        let fence = self.fence_for(&trigger)?;
        let done = match self
            .control
            .start_batch(&starts, fence.as_ref(), &self.replica)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                metrics::reconcile_error();
                return Err(e);
            }
        };
        let now_s = Utc::now().timestamp_micros() as f64 / 1e6;
        for (id, _) in &done {
            if let Some(at) = clocks.get(id) {
                metrics::event_to_action(now_s - at);
            }
        }
        metrics::reconcile_batch("start", done.len());
        if done.len() < starts.len() {
            let started: std::collections::HashSet<Uuid> = done.iter().map(|(i, _)| *i).collect();
            single.extend(
                starts
                    .iter()
                    .map(|s| s.row.id)
                    .filter(|i| !started.contains(i)),
            );
        }
        tracing::info!(
            started = done.len(),
            per_instance = single.len(),
            batch = jobs.len(),
            trigger = %trigger.label(),
            took_ms = started.elapsed().as_millis() as u64,
            "reconciled a batch"
        );
        Ok(single)
    }
}
