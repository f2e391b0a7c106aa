//! The control inbox: what the listener hands over from `toygres_actor_control` and
//! `toygres_actor_restart_requested`, worked off by the leader's control worker — so the
//! listener only receives and never awaits the database.
//!
//! The inbox is bounded and coalescing, because anyone who can CONNECT can NOTIFY:
//! - named requests (`restart <name>`, `reconcile <name>`) are kept once per name, at most
//!   [`config::CONTROL_INBOX_MAX`] names; beyond that they are dropped and counted;
//! - `reconcile *` is one flag: however many arrive, one full reconcile runs, and at most
//!   one per [`config::RECONCILE_ALL_MIN_INTERVAL`];
//! - a durable restart request (`request_actor_restart()`) is one flag too: the worker reads
//!   the pending requests from the table, where only that function writes.
//!
//! In the service, restarts skip the worker: durable requests and `restart <name>` go
//! straight to the priority lane ([`super::PriorityLane`]), which bounds and coalesces
//! names the same way.
//!
//! Names are looked up by the worker; unknown ones are dropped and counted as invalid.
//! Restarts that get through are still bound by the reconciler's per-instance minimum
//! interval and fleet-wide rate (see [`super::Reconciler`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::{PriorityLane, ReconcileQueue, Reconciler, Trigger};
use crate::config::{self, CHANNEL_CONTROL};
use crate::metrics;

pub use super::Ask;

#[derive(Default)]
struct State {
    named: HashMap<String, Ask>,
    order: VecDeque<String>,
    reconcile_all: bool,
    restart_requests: bool,
}

/// Bounded, coalescing hand-over from the listener to the control worker.
#[derive(Default)]
pub struct ControlInbox {
    state: Mutex<State>,
    wake: Notify,
    /// Where restarts go when there is one (the service): see [`PriorityLane`].
    lane: Option<Arc<PriorityLane>>,
}

impl ControlInbox {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Restarts (durable requests, `restart <name>`) go to the priority lane; the rest is
    /// worked off here.
    pub fn with_lane(lane: Option<Arc<PriorityLane>>) -> Arc<Self> {
        Arc::new(Self {
            lane,
            ..Self::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A named request; a restart wins over a reconcile of the same name. Returns false
    /// when the inbox is full (the request is dropped and counted).
    pub fn named(&self, name: &str, ask: Ask) -> bool {
        if let (Some(lane), Ask::Restart) = (&self.lane, ask) {
            return lane.restart_named(name.to_string());
        }
        let mut st = self.lock();
        match st.named.get_mut(name) {
            Some(a) => {
                if ask == Ask::Restart {
                    *a = Ask::Restart;
                }
            }
            None => {
                if st.named.len() >= config::CONTROL_INBOX_MAX {
                    drop(st);
                    metrics::notification_dropped(CHANNEL_CONTROL);
                    return false;
                }
                st.named.insert(name.to_string(), ask);
                st.order.push_back(name.to_string());
            }
        }
        drop(st);
        self.wake.notify_one();
        true
    }

    /// `reconcile *`.
    pub fn reconcile_all(&self) {
        self.lock().reconcile_all = true;
        self.wake.notify_one();
    }

    /// A durable restart request was made (read the table).
    pub fn restart_requests(&self) {
        if let Some(lane) = &self.lane {
            lane.restart_requests();
            return;
        }
        self.lock().restart_requests = true;
        self.wake.notify_one();
    }

    /// Requests waiting (named ones, plus one per raised flag).
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.named.len() + usize::from(st.reconcile_all) + usize::from(st.restart_requests)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Work off the inbox until `stop`: look names up and queue them, run coalesced full
    /// reconciles, queue pending durable restart requests.
    pub async fn run(
        self: Arc<Self>,
        reconciler: Arc<Reconciler>,
        queue: Arc<ReconcileQueue>,
        stop: CancellationToken,
    ) {
        let mut last_full: Option<Instant> = None;
        loop {
            let notified = self.wake.notified();
            let (named, all_due, all_wait, requests) = {
                let mut guard = self.lock();
                let st = &mut *guard;
                let mut named_map = std::mem::take(&mut st.named);
                let named: Vec<(String, Ask)> = st
                    .order
                    .drain(..)
                    .filter_map(|n| named_map.remove(&n).map(|a| (n, a)))
                    .collect();
                let wait = last_full
                    .map(|t| config::RECONCILE_ALL_MIN_INTERVAL.saturating_sub(t.elapsed()));
                let all_due = st.reconcile_all && wait.is_none_or(|w| w.is_zero());
                if all_due {
                    st.reconcile_all = false;
                }
                let all_wait = if st.reconcile_all { wait } else { None };
                let requests = std::mem::take(&mut st.restart_requests);
                (named, all_due, all_wait, requests)
            };
            for (name, ask) in named {
                self.resolve(&reconciler, &queue, &name, ask).await;
            }
            if requests {
                match reconciler.pending_restart_requests().await {
                    Ok(ids) => {
                        tracing::debug!(requests = ids.len(), "pending restart requests read");
                        for id in ids {
                            queue.enqueue(id, Trigger::RestartRequest, Ask::Restart, None);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading pending restart requests failed; the resync retries");
                    }
                }
            }
            if all_due {
                last_full = Some(Instant::now());
                if let Err(e) = reconciler
                    .full_reconcile(Some(&queue), crate::reconcile::Mode::Act)
                    .await
                {
                    metrics::reconcile_error();
                    tracing::warn!(error = %e, "reconcile * failed");
                }
                continue;
            }
            match all_wait {
                Some(w) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(w) => {}
                    _ = stop.cancelled() => return,
                },
                None => tokio::select! {
                    _ = notified => {}
                    _ = stop.cancelled() => return,
                },
            }
        }
    }

    async fn resolve(&self, reconciler: &Reconciler, queue: &ReconcileQueue, name: &str, ask: Ask) {
        if let Some(id) = look_up(reconciler, name, ask).await {
            match ask {
                Ask::Restart => queue.enqueue(id, Trigger::ControlRestart, Ask::Restart, None),
                Ask::Reconcile => {
                    queue.enqueue(id, Trigger::ControlReconcile, Ask::Reconcile, None)
                }
            }
        }
    }
}

/// A named control request's instance: counted as received, or as invalid (unknown name)
/// and logged within the quiet budget.
pub(super) async fn look_up(reconciler: &Reconciler, name: &str, ask: Ask) -> Option<Uuid> {
    match crate::cms::instance_by_name(reconciler.pool(), name).await {
        Ok(Some(row)) => {
            let label = match ask {
                Ask::Restart => "restart",
                Ask::Reconcile => "reconcile",
            };
            metrics::notification(CHANNEL_CONTROL, label);
            Some(row.id)
        }
        Ok(None) => {
            metrics::invalid_notification(CHANNEL_CONTROL);
            if crate::quiet::INVALID_NOTIFICATIONS.admit() {
                tracing::warn!(
                    channel = CHANNEL_CONTROL,
                    name = %crate::redact::for_log(name, 80),
                    "invalid notification ignored: unknown instance"
                );
            }
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "control request: lookup failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_coalesces_and_is_bounded() {
        let inbox = ControlInbox::default();
        for _ in 0..10_000 {
            inbox.reconcile_all();
            inbox.named("pg-1", Ask::Reconcile);
        }
        inbox.named("pg-1", Ask::Restart);
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox.lock().named.get("pg-1"), Some(&Ask::Restart));
        for i in 0..(config::CONTROL_INBOX_MAX + 10) {
            inbox.named(&format!("n-{i}"), Ask::Restart);
        }
        assert_eq!(inbox.lock().named.len(), config::CONTROL_INBOX_MAX);
    }
}
