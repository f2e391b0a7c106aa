//! Who this process is among the replicas: its configured name (`--replica`, default the
//! host name) and a random per-process epoch. A leaf: the probe scheduler, the replica
//! heartbeat and the leader election all read it.
//!
//! The epoch changes when the heartbeat finds that this process's liveness lapsed (it was
//! frozen or cut off longer than the TTL): everything held under the old epoch — probe
//! leases, a leader term — is then gone, and the fences in the database refuse any write
//! made under it.

use std::sync::atomic::{AtomicI64, Ordering};

/// This replica's name and current epoch.
#[derive(Debug)]
pub struct ReplicaId {
    name: String,
    epoch: AtomicI64,
}

impl ReplicaId {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            epoch: AtomicI64::new(new_epoch()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Take a new epoch (after our liveness lapsed); returns it.
    pub fn renew_epoch(&self) -> i64 {
        let e = new_epoch();
        self.epoch.store(e, Ordering::SeqCst);
        e
    }
}

/// A term this replica leads in: what the leader's fenced writes present to the database
/// (`toygres_actors.assert_term`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Term {
    pub name: String,
    pub epoch: i64,
    pub term: i64,
}

/// A random positive 63-bit epoch.
fn new_epoch() -> i64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_positive_and_change() {
        let id = ReplicaId::new("a");
        let first = id.epoch();
        assert!(first > 0);
        assert_ne!(id.renew_epoch(), first);
        assert_eq!(id.name(), "a");
    }
}
