//! One queue's waiting room: the wake-up signal, the single fetch in flight, and the due
//! times of delayed work enqueued by this process.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics;

/// Follow-up fetches after a known due time, in case the database's idea of "visible" is a
/// little behind ours (the fetch compares `visible_at` with the time we pass it, but a row
/// written by a turn may carry a time computed a moment later).
const DUE_FOLLOW_UPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];
/// Due times remembered per lane at most (beyond that, the bound covers them).
const MAX_DUES: usize = 200_000;

/// One queue's waiting room.
pub(super) struct Lane {
    pub(super) name: &'static str,
    pub(super) wake: Notify,
    /// Held while a fetch is in flight: one per lane per process.
    pub(super) fetch: tokio::sync::Mutex<LastFetch>,
    /// Bumped by every wake-up.
    pub(super) generation: std::sync::atomic::AtomicU64,
    /// Known due times (and which follow-up each is).
    pub(super) dues: Mutex<BinaryHeap<Reverse<(Instant, u8)>>>,
}

/// What the lane's last fetch found.
#[derive(Default)]
pub(super) struct LastFetch {
    /// The wake-up generation and time at which the last fetch that found nothing began.
    pub(super) empty: Option<(u64, Instant)>,
}

impl Lane {
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            wake: Notify::new(),
            fetch: tokio::sync::Mutex::new(LastFetch::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            dues: Mutex::new(BinaryHeap::new()),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Work may be there: let waiting slots fetch.
    pub(super) fn wake(&self, source: &'static str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
        metrics::store_wakeup(self.name, source);
    }

    /// Work becomes visible at `at` (a durable timer, a delayed retry).
    pub(super) fn due_at(&self, at: Instant) {
        let mut dues = self.dues.lock().unwrap_or_else(|p| p.into_inner());
        if dues.len() < MAX_DUES {
            dues.push(Reverse((at, 0)));
        }
        drop(dues);
        // A waiting slot must re-plan its wait around the new due time.
        self.wake.notify_waiters();
    }

    pub(super) fn peek_due(&self) -> Option<Instant> {
        let dues = self.dues.lock().unwrap_or_else(|p| p.into_inner());
        dues.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether a known due time has passed; if so, every due time that has passed is taken
    /// (several at once need one fetch, not one each) and one follow-up is scheduled after
    /// the latest of them (at most one chain of follow-ups per wave of timers).
    pub(super) fn take_due(&self, now: Instant) -> bool {
        let mut dues = self.dues.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Option<(Instant, u8)> = None;
        while let Some(&Reverse((at, level))) = dues.peek() {
            if at > now {
                break;
            }
            dues.pop();
            taken = Some(match taken {
                None => (at, level),
                Some((latest, lowest)) => (latest.max(at), lowest.min(level)),
            });
        }
        let Some((latest, lowest)) = taken else {
            return false;
        };
        if let Some(after) = DUE_FOLLOW_UPS.get(lowest as usize) {
            dues.push(Reverse((latest + *after, lowest + 1)));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_time_forces_one_fetch_then_its_follow_ups_then_nothing() {
        let lane = Lane::new("test");
        let t0 = Instant::now();
        for _ in 0..100 {
            lane.due_at(t0);
        }
        lane.due_at(t0 + Duration::from_secs(60));
        assert!(
            lane.take_due(t0),
            "a due time that has passed forces a fetch"
        );
        assert!(
            !lane.take_due(t0),
            "100 timers at once need one fetch, not 100"
        );
        assert_eq!(lane.peek_due(), Some(t0 + DUE_FOLLOW_UPS[0]));
        assert!(lane.take_due(t0 + DUE_FOLLOW_UPS[0]));
        assert_eq!(
            lane.peek_due(),
            Some(t0 + DUE_FOLLOW_UPS[0] + DUE_FOLLOW_UPS[1])
        );
        assert!(lane.take_due(t0 + Duration::from_secs(5)));
        // The chain ends; the later timer is still there.
        assert_eq!(lane.peek_due(), Some(t0 + Duration::from_secs(60)));
        assert!(!lane.take_due(t0 + Duration::from_secs(59)));
    }

    #[test]
    fn a_wake_up_bumps_the_generation() {
        let lane = Lane::new("test");
        let g = lane.generation();
        lane.wake("test");
        assert_eq!(lane.generation(), g + 1);
    }
}
