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
    /// Terminal: Completed or Failed (a cancel shows as Failed).
    Finished { status: String },
}

impl ActorState {
    pub fn is_live(&self) -> bool {
        matches!(self, ActorState::Pending | ActorState::Running { .. })
    }
}
