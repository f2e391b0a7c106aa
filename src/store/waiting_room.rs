//! One queue's waiting room: the wake-up signal, the single fetch in flight, the due times
//! of delayed work enqueued by this process, and how many items the wake-ups announced.
//!
//! **Credit.** A wake-up says how much work it made visible when it knows (an enqueue: 1;
//! an ack: its worker items; a completion: 1; due times: how many), or "unknown" (another
//! process's notification, a reconnect, our own bulk SQL, an ack that released a lock
//! messages waited behind). A fetch that finds an item spends one; while credit is left,
//! the next slot fetches at once (the pipeline of a burst); once it is spent, the lane rests
//! until the next wake-up, as after an empty fetch. An item found with no credit at all
//! was announced by nobody (another process's timer, an expired lock): the lane then drains
//! until a fetch comes back empty. A wrong count costs an empty fetch (too high) or waits
//! for the bound (too low; it is the announced count of this process's own writes).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duroxide::providers::WorkItem;

use tokio::sync::Notify;

use crate::metrics;

/// Follow-up fetches after a known due time, in case the database's idea of "visible" is a
/// little behind ours (the fetch compares `visible_at` with the time we pass it, but a row
/// written by a turn may carry a time computed a moment later).
const DUE_FOLLOW_UPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];
/// Due times remembered per lane at most (beyond that, the bound covers them).
const MAX_DUES: usize = 200_000;

/// Credit of a wake-up that does not know how much work it made visible.
pub(super) const UNKNOWN: u64 = u64::MAX;

/// One queue's waiting room.
pub(super) struct WaitingRoom {
    pub(super) name: &'static str,
    pub(super) wake: Notify,
    /// Held while a fetch is in flight: one per lane per process.
    pub(super) fetch: tokio::sync::Mutex<LastFetch>,
    /// Bumped by every wake-up.
    pub(super) generation: std::sync::atomic::AtomicU64,
    /// Items announced and not yet fetched ([`UNKNOWN`]: fetch until empty).
    credit: Mutex<u64>,
    /// Known due times (and which follow-up each is).
    pub(super) dues: Mutex<BinaryHeap<Reverse<(Instant, u8)>>>,
}

/// What the lane's last fetch found.
#[derive(Default)]
pub(super) struct LastFetch {
    /// The wake-up generation and time at which the last fetch that found nothing began.
    pub(super) empty: Option<(u64, Instant)>,
}

impl WaitingRoom {
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            wake: Notify::new(),
            fetch: tokio::sync::Mutex::new(LastFetch::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            credit: Mutex::new(0),
            dues: Mutex::new(BinaryHeap::new()),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Work may be there, how much unknown: let waiting slots fetch until a fetch finds none.
    pub(super) fn wake(&self, source: &'static str) {
        self.wake_n(source, UNKNOWN);
    }

    /// `items` items were made visible (or [`UNKNOWN`]): let waiting slots fetch them.
    pub(super) fn wake_n(&self, source: &'static str, items: u64) {
        {
            let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
            *credit = credit.saturating_add(items);
            // Under the credit's lock: a fetch that compares generations sees both or neither.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.wake.notify_waiters();
        metrics::store_wakeup(self.name, source);
    }

    /// Due times taken: their items become credit (no wake-up: the slot that took them
    /// fetches at once).
    pub(super) fn announce(&self, items: u64) {
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        *credit = credit.saturating_add(items);
    }

    /// A fetch found an item: spend one credit. Whether more may be there (credit left, or
    /// the item was announced by nobody: drain).
    pub(super) fn spend(&self) -> bool {
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        *credit = match *credit {
            0 | UNKNOWN => UNKNOWN,
            n => n - 1,
        };
        *credit > 0
    }

    /// A fetch that began at `generation` found nothing: what was announced before it is
    /// gone (taken by others, or never there). Credit announced since stays.
    pub(super) fn drained(&self, generation: u64) {
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() == generation {
            *credit = 0;
        }
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

    /// Whether a known due time has passed: if so, every due time that has passed is taken
    /// (several at once need one fetch, not one each; each is credit), and the follow-up
    /// level of the earliest chain among them is returned (0: a due time itself).
    pub(super) fn take_due(&self, now: Instant) -> Option<u8> {
        let mut dues = self.dues.lock().unwrap_or_else(|p| p.into_inner());
        let mut lowest: Option<u8> = None;
        let mut items = 0u64;
        while let Some(&Reverse((at, level))) = dues.peek() {
            if at > now {
                break;
            }
            dues.pop();
            // A follow-up announces nothing new (its due time was counted already).
            if level == 0 {
                items += 1;
            }
            lowest = Some(lowest.map_or(level, |l| l.min(level)));
        }
        drop(dues);
        if items > 0 {
            self.announce(items);
        }
        lowest
    }

    /// A fetch forced by a due time (of follow-up `level`) found nothing: the database may
    /// see the work a little later than our clock did, so fetch again after the next
    /// follow-up delay (at most one chain per wave; none once a fetch finds work).
    pub(super) fn follow_up(&self, level: u8, now: Instant) {
        if let Some(after) = DUE_FOLLOW_UPS.get(level as usize) {
            let mut dues = self.dues.lock().unwrap_or_else(|p| p.into_inner());
            dues.push(Reverse((now + *after, level + 1)));
        }
    }
}

/// The `Instant` of a wall-clock time in milliseconds since the epoch (`None`: now or past).
pub(super) fn due_instant(at_ms: u64) -> Option<Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let ahead = at_ms.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    Some(Instant::now() + Duration::from_millis(ahead))
}

pub(super) fn delay_instant(delay: Option<Duration>) -> Option<Instant> {
    delay.filter(|d| !d.is_zero()).map(|d| Instant::now() + d)
}

/// When a durable timer's item becomes visible (`None`: not a timer, or due already).
pub(super) fn timer_due(item: &WorkItem) -> Option<Instant> {
    match item {
        WorkItem::TimerFired { fire_at_ms, .. } => due_instant(*fire_at_ms),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_time_forces_one_fetch_and_follow_ups_only_while_fetches_find_nothing() {
        let lane = WaitingRoom::new("test");
        let t0 = Instant::now();
        for _ in 0..100 {
            lane.due_at(t0);
        }
        lane.due_at(t0 + Duration::from_secs(60));
        assert_eq!(
            lane.take_due(t0),
            Some(0),
            "a due time that has passed forces a fetch"
        );
        assert_eq!(
            lane.take_due(t0),
            None,
            "100 timers at once need one fetch, not 100"
        );
        // That fetch found nothing: the follow-ups, then nothing.
        lane.follow_up(0, t0);
        assert_eq!(lane.peek_due(), Some(t0 + DUE_FOLLOW_UPS[0]));
        assert_eq!(lane.take_due(t0 + DUE_FOLLOW_UPS[0]), Some(1));
        lane.follow_up(1, t0 + DUE_FOLLOW_UPS[0]);
        assert_eq!(
            lane.peek_due(),
            Some(t0 + DUE_FOLLOW_UPS[0] + DUE_FOLLOW_UPS[1])
        );
        assert_eq!(lane.take_due(t0 + Duration::from_secs(5)), Some(2));
        lane.follow_up(2, t0 + Duration::from_secs(5));
        // The chain ends; the later timer is still there.
        assert_eq!(lane.peek_due(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(lane.take_due(t0 + Duration::from_secs(59)), None);
        // A fetch that found work schedules no follow-up at all.
        assert_eq!(lane.take_due(t0 + Duration::from_secs(60)), Some(0));
        assert_eq!(lane.peek_due(), None);
    }

    #[test]
    fn credit_lets_the_pipeline_run_as_far_as_announced_or_until_empty_when_unknown() {
        let lane = WaitingRoom::new("test");
        lane.wake_n("test", 3);
        assert!(lane.spend(), "2 left");
        assert!(lane.spend(), "1 left");
        assert!(!lane.spend(), "the three announced items are fetched: rest");
        // Found with no credit: announced by nobody, so drain.
        assert!(lane.spend());
        assert!(lane.spend(), "draining until a fetch finds nothing");
        let g = lane.generation();
        lane.drained(g);
        lane.wake("notify");
        assert!(lane.spend(), "an unknown wake-up drains");
        // An empty fetch that began before a wake-up leaves that wake-up's credit.
        let g = lane.generation();
        lane.drained(g);
        let before = lane.generation();
        lane.wake_n("test", 2);
        lane.drained(before);
        assert!(
            lane.spend(),
            "the 2 announced during the empty fetch are still owed"
        );
        assert!(!lane.spend());
        // Due times are credit too (follow-ups are not).
        let t0 = Instant::now();
        lane.due_at(t0);
        lane.due_at(t0);
        assert_eq!(lane.take_due(t0), Some(0));
        assert!(lane.spend());
        assert!(!lane.spend());
    }

    #[test]
    fn a_wake_up_bumps_the_generation() {
        let lane = WaitingRoom::new("test");
        let g = lane.generation();
        lane.wake("test");
        assert_eq!(lane.generation(), g + 1);
    }
}
