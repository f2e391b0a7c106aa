//! The healing breaker: when more than a share of the fleet turns stale at once, the cause is
//! not the actors (the CMS was unwritable, the store saturated, the probes' network gone) and
//! restarting them all would only add a stampede to the outage. The breaker opens: stale
//! actors are not restarted, `toygres_actors_healing_paused` is 1 and
//! `ToygresActorsHealingPaused` alerts. Starts of missing actors, cancels of orphans and
//! explicit restarts go on. It closes by itself once the full reconcile finds the stale share
//! back under the threshold (checks flow again through the existing actors); stale actors
//! are healed again one check interval after it closed — checks come round once an interval
//! at each instance's own time, so right after the close the rest of the fleet may still be
//! waiting for its check, not stuck.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config;
use crate::metrics;

/// Open while too much of the fleet is stale at once.
pub struct HealingBreaker {
    share: f64,
    open: AtomicBool,
    /// How long after closing it still holds heals back (the check interval).
    grace: Duration,
    closed_at: Mutex<Option<Instant>>,
}

impl HealingBreaker {
    pub fn new(share: f64, grace: Duration) -> Self {
        Self {
            share,
            open: AtomicBool::new(false),
            grace,
            closed_at: Mutex::new(None),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether stale actors must not be healed now: open, or closed less than the grace ago.
    pub fn holds(&self) -> bool {
        self.is_open()
            || self
                .closed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| at.elapsed() < self.grace)
    }

    /// Whether `stale` of `expected` instances calls for a pause: more than the share, and at
    /// least a few (in a fleet of three, one stale actor is one stale actor).
    pub fn trips(&self, stale: usize, expected: usize) -> bool {
        stale >= config::HEAL_PAUSE_MIN_STALE && (stale as f64) > self.share * expected as f64
    }

    /// This replica no longer leads, so it heals nothing: closed, and its gauge reads 0 —
    /// left open, a former leader would keep `ToygresActorsHealingPaused` firing after the
    /// new leader's full reconcile found the fleet healthy.
    pub fn stand_down(&self) {
        if self.open.swap(false, Ordering::SeqCst) {
            tracing::info!("healing breaker closed: this replica no longer leads");
        }
        metrics::healing_paused(false);
    }

    /// The full reconcile's count: open or close, say so once, export the state.
    pub fn observe(&self, stale: usize, expected: usize) {
        let open = self.trips(stale, expected);
        let was = self.open.swap(open, Ordering::SeqCst);
        if open && !was {
            tracing::error!(
                stale,
                expected,
                share = self.share,
                "healing paused: {stale} of {expected} instances are stale at once — the cause is not the actors (CMS writes failing? Duroxide store saturated? probes cut off?); not restarting them"
            );
        } else if was && !open {
            *self.closed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            tracing::warn!(
                stale,
                expected,
                grace_s = self.grace.as_secs(),
                "healing resumes one check interval from now: the stale share is back under the threshold"
            );
        }
        metrics::healing_paused(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_a_share_of_a_real_fleet_only() {
        let b = HealingBreaker::new(0.2, Duration::ZERO);
        assert!(!b.trips(0, 0));
        assert!(!b.trips(2, 3), "too few to call it a wave");
        assert!(!b.trips(20, 100));
        assert!(b.trips(21, 100));
        assert!(b.trips(10_000, 10_000));
        b.observe(50, 100);
        assert!(b.is_open());
        b.observe(1, 100);
        assert!(!b.is_open());
    }

    #[test]
    fn a_replica_that_stops_leading_closes_its_breaker() {
        let b = HealingBreaker::new(0.2, Duration::ZERO);
        b.observe(100, 100);
        assert!(b.is_open());
        b.stand_down();
        assert!(
            !b.is_open(),
            "a follower heals nothing and must not keep alerting"
        );
    }

    #[test]
    fn heals_wait_one_check_interval_after_the_breaker_closes() {
        let b = HealingBreaker::new(0.2, Duration::from_secs(3600));
        assert!(!b.holds(), "never opened: heals go on");
        b.observe(100, 100);
        assert!(b.holds());
        b.observe(10, 100);
        assert!(!b.is_open(), "closed: the gauge reads 0");
        assert!(
            b.holds(),
            "the rest of the fleet's checks are still coming round: no heal yet"
        );
        let b = HealingBreaker::new(0.2, Duration::ZERO);
        b.observe(100, 100);
        b.observe(10, 100);
        assert!(!b.holds(), "after the grace, heals go on");
    }
}
