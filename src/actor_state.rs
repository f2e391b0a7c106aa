//! Duroxide's view of one actor, in the words every layer shares (reconciler, verdicts,
//! operator surface). A leaf: it knows nothing of how the state is read.

use chrono::{DateTime, Utc};

/// Duroxide's view of one actor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ActorState {
    /// Duroxide has never heard of this id (or it was deleted).
    Absent,
    /// Its start is queued but not yet processed.
    Pending,
    /// Running; with the time of its newest history event and whether work is queued or in
    /// flight (a pending timer, a running activity).
    Running {
        last_progress: DateTime<Utc>,
        has_work: bool,
        execution_id: i64,
    },
    /// Terminal: Completed or Failed (a cancel shows as Failed). `ContinuedAsNew` is not
    /// terminal for the actor ([`runs`]).
    Finished { status: String },
}

impl ActorState {
    pub fn is_live(&self) -> bool {
        matches!(self, ActorState::Pending | ActorState::Running { .. })
    }
}

/// Whether the status of an orchestration's current execution means it runs. Between two
/// executions (continue-as-new) the current one is closed as `ContinuedAsNew` while the
/// next one waits in the queue: the actor runs all the same. Taken for finished, every
/// actor's continue-as-new was a moment in which a resync could see it "missing" and
/// restart it. The same set is in `sql/live_actors*.sql` and `sql/actors_v1_running.sql`.
pub fn runs(status: &str) -> bool {
    matches!(status, "Running" | "ContinuedAsNew")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_actor_between_two_executions_runs() {
        assert!(super::runs("Running"));
        assert!(super::runs("ContinuedAsNew"));
        assert!(!super::runs("Completed"));
        assert!(!super::runs("Failed"));
    }
}

/// The CMS instance an actor id of ours belongs to (`actor-<instance uuid>-<suffix>`).
pub fn instance_of_actor(actor_id: &str) -> Option<uuid::Uuid> {
    let rest = actor_id.strip_prefix(crate::config::ACTOR_ID_PREFIX)?;
    uuid::Uuid::parse_str(rest.get(..36)?).ok()
}

/// One instance actor alive in the legacy store (where toygres' own server runs Duroxide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyActor {
    pub actor_id: String,
    pub kind: LegacyKind,
}

/// Whose legacy actor it is: decides how it is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyKind {
    /// toygres' own (`toygres-orchestrations::orchestration::instance-actor`): cancelled.
    Toygres,
    /// Ours, from when our store lived on that schema: deleted there.
    Ours,
}

impl LegacyActor {
    /// An instance actor found in the legacy store, by its id and orchestration name.
    pub fn found(actor_id: String, orchestration: &str) -> LegacyActor {
        LegacyActor {
            actor_id,
            kind: LegacyKind::of(orchestration),
        }
    }
}

impl LegacyKind {
    /// The kind of an instance actor orchestration found in the legacy store.
    pub fn of(orchestration: &str) -> LegacyKind {
        if orchestration == crate::config::ACTOR_ORCHESTRATION {
            LegacyKind::Ours
        } else {
            LegacyKind::Toygres
        }
    }
}
