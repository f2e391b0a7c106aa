//! The fleet as the last poll saw it (`crate::duties::poll_fleet`, the poll behind the fleet
//! gauges): what `GET /api/actors` serves. A request never queries the CMS, so any number of
//! readers cost the database nothing beyond the poll itself, whose own pace is bounded
//! ([`crate::config::FLEET_POLL_MAX_DUTY`]).
//!
//! Each whole answer's JSON is built once per snapshot (per verdict filter) and shared by
//! every request for it until the next poll replaces the snapshot. A page (`limit`, `after`)
//! is cut from the instances in id order and serialized per request: a fleet of any size is
//! read in pages of a bounded cost, and `after` (an instance id) stays meaningful across
//! snapshots, so a reader paging through while polls replace the snapshot skips or repeats
//! nothing that exists in both.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{OnceCell, watch};
use uuid::Uuid;

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
    /// Positions in `actors` in instance-id order, built at the first paged request.
    by_id: OnceLock<Vec<usize>>,
}

/// Which part of the list a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Only instances whose id sorts after this one (the previous page's `next`).
    pub after: Option<Uuid>,
    /// At most this many.
    pub limit: usize,
}

/// The largest page a request may ask for.
pub const MAX_PAGE: usize = 10_000;

/// The `/api/actors` body.
#[derive(Serialize)]
struct Body<'a> {
    as_of: DateTime<Utc>,
    actors: Vec<&'a ActorView>,
}

/// One page of the `/api/actors` body: `next` is the `after` of the page that follows, or
/// null on the last page.
#[derive(Serialize)]
struct PageBody<'a> {
    as_of: DateTime<Utc>,
    actors: Vec<&'a ActorView>,
    next: Option<Uuid>,
}

impl FleetSnapshot {
    pub fn new(as_of: DateTime<Utc>, actors: Vec<ActorView>) -> Self {
        Self {
            as_of,
            actors,
            bodies: Default::default(),
            by_id: OnceLock::new(),
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

    /// The JSON of one page, `{"as_of": …, "actors": [...], "next": …}`: in instance-id
    /// order, only `only`'s verdict when given.
    pub fn page(&self, only: Option<Verdict>, page: Page) -> Result<Bytes, serde_json::Error> {
        let order = self.by_id.get_or_init(|| {
            let mut order: Vec<usize> = (0..self.actors.len()).collect();
            order.sort_unstable_by_key(|&i| self.actors[i].instance_id);
            order
        });
        let start = page.after.map_or(0, |after| {
            order.partition_point(|&i| self.actors[i].instance_id <= after)
        });
        let limit = page.limit.clamp(1, MAX_PAGE);
        let mut actors = Vec::with_capacity(limit.min(order.len() - start));
        let mut next = None;
        for a in order[start..].iter().map(|&i| &self.actors[i]) {
            if only.is_some_and(|v| a.verdict != v) {
                continue;
            }
            if actors.len() == limit {
                next = actors.last().map(|a: &&ActorView| a.instance_id);
                break;
            }
            actors.push(a);
        }
        let body = PageBody {
            as_of: self.as_of,
            actors,
            next,
        };
        serde_json::to_vec(&body).map(Bytes::from)
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

    fn page_of(
        s: &FleetSnapshot,
        only: Option<Verdict>,
        after: Option<Uuid>,
        limit: usize,
    ) -> serde_json::Value {
        serde_json::from_slice(&s.page(only, Page { after, limit }).unwrap()).unwrap()
    }

    #[test]
    fn pages_cover_the_fleet_once_in_id_order() {
        let views: Vec<ActorView> = (0..25)
            .map(|i| {
                let verdict = if i % 3 == 0 {
                    Verdict::Stale
                } else {
                    Verdict::Ok
                };
                ActorView {
                    instance_id: Uuid::new_v4(),
                    ..view(&format!("pg-{i}"), verdict)
                }
            })
            .collect();
        let mut want: Vec<Uuid> = views.iter().map(|v| v.instance_id).collect();
        want.sort();
        let s = FleetSnapshot::new(Utc::now(), views);
        for (only, expected) in [(None, 25), (Some(Verdict::Stale), 9)] {
            let (mut seen, mut after, mut pages) = (Vec::<Uuid>::new(), None, 0);
            loop {
                let body = page_of(&s, only, after, 4);
                pages += 1;
                let ids: Vec<Uuid> = body["actors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["instance_id"].as_str().unwrap().parse().unwrap())
                    .collect();
                assert!(ids.len() <= 4);
                seen.extend(ids);
                match body["next"].as_str() {
                    Some(next) => after = Some(next.parse().unwrap()),
                    None => break,
                }
            }
            assert_eq!(seen.len(), expected, "{only:?}");
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "id order, no repeats");
            assert_eq!(pages, expected.div_ceil(4));
            if only.is_none() {
                assert_eq!(seen, want);
            }
        }
        // An `after` that is no instance (deleted since) still finds its place.
        let cut = Uuid::from_u128(want[10].as_u128() - 1);
        let body = page_of(&s, None, Some(cut), 100);
        assert_eq!(body["actors"].as_array().unwrap().len(), 15);
        assert!(body["next"].is_null());
    }
}
