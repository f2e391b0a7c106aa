//! The fleet as the last poll saw it (`crate::duties::poll_fleet`, the poll behind the fleet
//! gauges): what `GET /api/actors` serves. A request never queries the CMS, so any number of
//! readers cost the database nothing beyond the poll itself, whose own pace is bounded
//! ([`crate::config::FLEET_POLL_MAX_DUTY`]).
//!
//! Each answer's JSON is built once per snapshot (per verdict filter) and shared by every
//! request for it until the next poll replaces the snapshot.

use std::sync::Arc;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{OnceCell, watch};

use crate::ops::ActorView;
use crate::verdict::Verdict;

/// One poll's view of the fleet.
pub struct FleetSnapshot {
    /// The database's time at which the verdicts (and ages) were decided.
    as_of: DateTime<Utc>,
    actors: Vec<ActorView>,
    /// The `/api/actors` bodies, unfiltered and per verdict, each built at its first request
    /// ([`slot`]).
    bodies: [OnceCell<Bytes>; Verdict::ALL.len() + 1],
}

/// The `/api/actors` body.
#[derive(Serialize)]
struct Body<'a> {
    as_of: DateTime<Utc>,
    actors: Vec<&'a ActorView>,
}

impl FleetSnapshot {
    pub fn new(as_of: DateTime<Utc>, actors: Vec<ActorView>) -> Self {
        Self {
            as_of,
            actors,
            bodies: Default::default(),
        }
    }

    pub fn as_of(&self) -> DateTime<Utc> {
        self.as_of
    }

    /// The JSON of `{"as_of": …, "actors": [...]}`, only `only`'s verdict when given.
    pub async fn body(&self, only: Option<Verdict>) -> Result<Bytes, serde_json::Error> {
        self.bodies[slot(only)]
            .get_or_try_init(|| async {
                let body = Body {
                    as_of: self.as_of,
                    actors: self
                        .actors
                        .iter()
                        .filter(|a| only.is_none_or(|v| a.verdict == v))
                        .collect(),
                };
                serde_json::to_vec(&body).map(Bytes::from)
            })
            .await
            .cloned()
    }
}

/// Where the body for `only` is kept (exhaustive: a new verdict must be given a place).
fn slot(only: Option<Verdict>) -> usize {
    match only {
        None => 0,
        Some(Verdict::Ok) => 1,
        Some(Verdict::Stale) => 2,
        Some(Verdict::Missing) => 3,
        Some(Verdict::Zombie) => 4,
        Some(Verdict::Orphan) => 5,
        Some(Verdict::Unhealthy) => 6,
        Some(Verdict::Idle) => 7,
    }
}

/// The latest snapshot, shared between the poller (which publishes) and the API (which
/// reads).
#[derive(Clone)]
pub struct Snapshots {
    latest: Arc<watch::Sender<Option<Arc<FleetSnapshot>>>>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self::new()
    }
}

impl Snapshots {
    pub fn new() -> Self {
        Self {
            latest: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Replace the snapshot (requests already holding the previous one finish with it).
    pub fn publish(&self, snapshot: FleetSnapshot) {
        self.latest.send_replace(Some(Arc::new(snapshot)));
    }

    /// The latest snapshot; before the first poll has finished, waits for it.
    pub async fn latest(&self) -> Arc<FleetSnapshot> {
        let mut rx = self.latest.subscribe();
        loop {
            if let Some(s) = rx.borrow_and_update().as_ref() {
                return s.clone();
            }
            // The sender lives in `self`: `changed` cannot fail while we hold it.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, verdict: Verdict) -> ActorView {
        ActorView {
            k8s_name: name.into(),
            instance_id: uuid::Uuid::nil(),
            state: "running".into(),
            health_status: "healthy".into(),
            actor_id: None,
            actor_status: "none".into(),
            last_health_check: None,
            last_check_age_seconds: None,
            verdict,
            reason: String::new(),
        }
    }

    #[tokio::test]
    async fn bodies_filter_by_verdict_and_waiters_get_the_first_snapshot() {
        let snapshots = Snapshots::new();
        let waiter = tokio::spawn({
            let s = snapshots.clone();
            async move { s.latest().await.as_of() }
        });
        let at = Utc::now();
        snapshots.publish(FleetSnapshot::new(
            at,
            vec![view("a", Verdict::Ok), view("b", Verdict::Stale)],
        ));
        assert_eq!(waiter.await.unwrap(), at);
        let s = snapshots.latest().await;
        let all: serde_json::Value = serde_json::from_slice(&s.body(None).await.unwrap()).unwrap();
        assert_eq!(all["actors"].as_array().unwrap().len(), 2);
        let stale: serde_json::Value =
            serde_json::from_slice(&s.body(Some(Verdict::Stale)).await.unwrap()).unwrap();
        assert_eq!(stale["actors"][0]["k8s_name"], "b");
        assert_eq!(stale["actors"].as_array().unwrap().len(), 1);
        let idle: serde_json::Value =
            serde_json::from_slice(&s.body(Some(Verdict::Idle)).await.unwrap()).unwrap();
        assert!(idle["actors"].as_array().unwrap().is_empty());
        // Every filter has a place of its own.
        let slots: std::collections::BTreeSet<usize> = std::iter::once(None)
            .chain(Verdict::ALL.map(Some))
            .map(slot)
            .collect();
        assert_eq!(slots.len(), s.bodies.len());
        assert_eq!(slots.last(), Some(&(s.bodies.len() - 1)));
    }
}
