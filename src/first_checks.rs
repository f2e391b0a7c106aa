//! First checks before turns: while a single start's first check runs on this replica (its
//! probe, then its fenced write: what someone waiting for the row's first health row waits
//! for), this replica's orchestration fetches wait for it, briefly.
//!
//! A single start leases its actor to this replica and prepares the first probe beside its
//! transaction ([`crate::duro`]'s eager start); the actor's first Duroxide turn, which the
//! commit wakes at the same moment, only schedules a timer. Run at once, that turn's fetch
//! and ack take PostgreSQL's and the service's time on the same cores as the probe's new
//! connection. Here the start registers its instance before it commits
//! ([`FirstChecks::begin`]), the first check's write ends the registration ([`Done`], a drop
//! guard in [`crate::check::leased_check`]), and the store's orchestration fetch waits first
//! for the registrations that were there when it came ([`FirstChecks::ahead`]).
//!
//! Bounded both ways, so that no target and no stream of starts holds the turns: a fetch
//! waits at most [`HOLD_AT_MOST`] (a slow or unreachable target's probe is not waited out),
//! and after a hold the next one comes no sooner than [`REST_AFTER_HOLD`] later (a
//! continuous stream of single starts costs the turns at most a quarter of the time). A
//! storm's batch starts do not register: their first turns and first checks share the
//! machine as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The longest an orchestration fetch waits for first checks.
pub const HOLD_AT_MOST: Duration = Duration::from_millis(50);
/// After a hold, no other for this long.
pub const REST_AFTER_HOLD: Duration = Duration::from_millis(150);
/// Registrations kept at most (beyond that, expired ones are swept at each registration).
const SWEEP_ABOVE: usize = 1024;

/// This replica's single starts whose first check has not written yet.
#[derive(Default)]
pub struct FirstChecks {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Instance → (registration number, until when a fetch waits for it).
    pending: HashMap<Uuid, (u64, Instant)>,
    registered: u64,
    /// No hold begins before this.
    rest_until: Option<Instant>,
}

/// Ends a registration when dropped ([`FirstChecks::done_on_drop`]).
pub struct Done {
    checks: Arc<FirstChecks>,
    instance: Uuid,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.checks.done(self.instance);
    }
}

impl FirstChecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A single start of `instance` is about to commit, its first check to run here.
    pub fn begin(&self, instance: Uuid) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.pending.len() >= SWEEP_ABOVE {
            st.pending.retain(|_, (_, until)| *until > now);
        }
        st.registered += 1;
        let n = st.registered;
        st.pending.insert(instance, (n, now + HOLD_AT_MOST));
    }

    /// `instance`'s first check wrote (or ended otherwise).
    pub fn done(&self, instance: Uuid) {
        if self.lock().pending.remove(&instance).is_some() {
            self.changed.notify_waiters();
        }
    }

    /// [`FirstChecks::done`] for `instance` when the guard is dropped.
    pub fn done_on_drop(self: &Arc<Self>, instance: Uuid) -> Done {
        Done {
            checks: self.clone(),
            instance,
        }
    }

    /// Wait until the first checks registered before this call are done, at most
    /// [`HOLD_AT_MOST`] (and not at all within [`REST_AFTER_HOLD`] of the last hold). How
    /// long it waited, if it did.
    pub async fn ahead(&self) -> Option<Duration> {
        let started = Instant::now();
        let (before, until) = {
            let mut st = self.lock();
            if st.rest_until.is_some_and(|t| started < t) {
                return None;
            }
            st.pending.retain(|_, (_, until)| *until > started);
            let until = st.pending.values().map(|(_, until)| *until).max()?;
            (st.registered, until.min(started + HOLD_AT_MOST))
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let waiting = self
                .lock()
                .pending
                .values()
                .any(|(n, until)| *n <= before && *until > now);
            if !waiting || now >= until {
                break;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        let end = Instant::now();
        self.lock().rest_until = Some(end + REST_AFTER_HOLD);
        crate::metrics::fetch_held_for_first_checks(end - started);
        Some(end - started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fetch_waits_for_earlier_first_checks_only_and_within_its_bounds() {
        let checks = Arc::new(FirstChecks::default());
        assert_eq!(checks.ahead().await, None, "nothing registered: no hold");

        let a = Uuid::new_v4();
        checks.begin(a);
        let done = checks.done_on_drop(a);
        let waiter = tokio::spawn({
            let checks = checks.clone();
            async move { checks.ahead().await }
        });
        // The fetch comes (the test's runtime has one thread: the waiter runs now).
        tokio::task::yield_now().await;
        // Registered after the fetch came: not waited for.
        checks.begin(Uuid::new_v4());
        drop(done);
        let held = waiter.await.unwrap().expect("a hold");
        assert!(held < HOLD_AT_MOST, "ended by the check's write: {held:?}");

        // Within the rest after a hold: no hold, whatever is registered.
        checks.begin(Uuid::new_v4());
        assert_eq!(checks.ahead().await, None);
    }

    #[tokio::test]
    async fn a_check_that_never_writes_holds_a_fetch_at_most_the_bound() {
        let checks = FirstChecks::default();
        checks.begin(Uuid::new_v4());
        let held = checks.ahead().await.expect("a hold");
        // The bound, measured from the registration; the upper limit only guards against a
        // hold with no end (a loaded machine may wake the timer late).
        assert!(
            held >= HOLD_AT_MOST - Duration::from_millis(1) && held < Duration::from_secs(2),
            "{held:?}"
        );
    }
}
