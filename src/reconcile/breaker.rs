//! The healing breaker: when more than a share of the fleet turns stale at once, the cause is
//! not the actors (the CMS was unwritable, the store saturated, the probes' network gone) and
//! restarting them all would only add a stampede to the outage. The breaker opens: stale
//! actors are not restarted, `toygres_actors_healing_paused` is 1 and
//! `ToygresActorsHealingPaused` alerts. Starts of missing actors, cancels of orphans and
//! explicit restarts go on. It closes by itself once the full reconcile finds the stale share
//! back under the threshold (checks flow again through the existing actors).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config;
use crate::metrics;

/// Open while too much of the fleet is stale at once.
pub struct HealingBreaker {
    share: f64,
    open: AtomicBool,
}

impl HealingBreaker {
    pub fn new(share: f64) -> Self {
        Self {
            share,
            open: AtomicBool::new(false),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
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
            tracing::warn!(
                stale,
                expected,
                "healing resumed: the stale share is back under the threshold"
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
        let b = HealingBreaker::new(0.2);
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
        let b = HealingBreaker::new(0.2);
        b.observe(100, 100);
        assert!(b.is_open());
        b.stand_down();
        assert!(
            !b.is_open(),
            "a follower heals nothing and must not keep alerting"
        );
    }
}
