//! How often the reconciler may act on one instance and on the fleet: the per-instance heal
//! backoff (a crash-looping actor is retried, never spun) and the restart limits (a minimum
//! interval per instance, a token bucket across the fleet).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Reconciler;
use crate::cms::InstanceRow;
use crate::config;
use crate::verdict::Verdict;

#[derive(Debug, Clone, Copy)]
pub(crate) struct HealBackoff {
    attempts: u32,
    next_at: Instant,
    /// When we last healed: the backoff resets only once a check is written after it (a
    /// fresh incarnation counts as `ok` during its grace period before it has proved anything).
    healed_at: DateTime<Utc>,
}

/// How often restarts may happen: a live actor younger than `min_interval` is not replaced,
/// and a token bucket caps restarts per second across the fleet.
pub struct RestartLimits {
    pub min_interval: Duration,
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RestartLimits {
    pub fn new(min_interval: Duration, per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            min_interval,
            rate,
            bucket: Mutex::new((2.0 * rate, Instant::now())),
        }
    }

    /// Take one restart token, or say how long until one is there.
    pub fn take_token(&self) -> Result<(), Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.rate;
        b.0 = (b.0 + refill).min(2.0 * self.rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.0) / self.rate))
        }
    }
}

impl Reconciler {
    pub(crate) fn backoff_remaining(&self, id: Uuid) -> Option<Duration> {
        let map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.get(&id)?;
        let now = Instant::now();
        (b.next_at > now).then(|| b.next_at - now)
    }

    pub(crate) fn note_heal(&self, id: Uuid) {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(id).or_insert(HealBackoff {
            attempts: 0,
            next_at: Instant::now(),
            healed_at: crate::clock::now(),
        });
        entry.healed_at = crate::clock::now();
        entry.attempts = entry.attempts.saturating_add(1);
        let factor = 2u32.saturating_pow(entry.attempts.saturating_sub(1).min(16));
        let delay = config::HEAL_BACKOFF_MIN
            .saturating_mul(factor)
            .min(config::HEAL_BACKOFF_MAX);
        entry.next_at = Instant::now() + delay;
    }

    /// Reset an instance's heal backoff once it has proved healthy again: idle, or a health
    /// check written after the last heal.
    pub(crate) fn settle_backoff(&self, row: &InstanceRow, verdict: Verdict) {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get(&row.id) else { return };
        let proved = match verdict {
            Verdict::Idle => true,
            Verdict::Ok | Verdict::Unhealthy => {
                row.last_health_check.is_some_and(|t| t > b.healed_at)
            }
            _ => false,
        };
        if proved {
            map.remove(&row.id);
        }
    }

    pub(crate) fn forget_backoff(&self, id: Uuid) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
