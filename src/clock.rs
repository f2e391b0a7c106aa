//! One clock: the database's. Every comparison with a database timestamp — a check's age,
//! a verdict, the `visible_at` of our enqueues, the alert gauges — uses [`now`]: the
//! database's clock as last read, plus the time elapsed since on this process's monotonic
//! clock. A replica's wall clock plays no part, so a replica minutes fast or slow neither
//! pages nor heals a healthy fleet. Durations inside one process use `Instant`.
//!
//! The reading is refreshed at start and by every fleet poll (every few seconds), so the
//! monotonic clock's drift never accumulates. Before the first reading (a process that has not
//! reached the database yet) [`now`] is the wall clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The database's clock at an instant of ours.
static READING: Mutex<Option<(DateTime<Utc>, Instant)>> = Mutex::new(None);

/// The database's time now.
pub fn now() -> DateTime<Utc> {
    now_from(*READING.lock().unwrap_or_else(|p| p.into_inner()))
}

fn now_from(reading: Option<(DateTime<Utc>, Instant)>) -> DateTime<Utc> {
    match reading {
        Some((db, at)) => db + at.elapsed(),
        None => Utc::now(),
    }
}

/// The `visible_at` of work we enqueue for now: the earlier of the database's clock and this
/// process's wall clock. duroxide-pg compares `visible_at` with the *fetching* process's wall
/// clock (its own design), and our wake-up trigger with the database's: the earlier of the two
/// is already due for the database, for this process and for every fetcher whose clock is not
/// behind both.
pub fn visible_now() -> DateTime<Utc> {
    now().min(Utc::now())
}

/// [`now`] as Unix seconds (the gauges' and histograms' unit).
pub fn now_seconds() -> f64 {
    now().timestamp_micros() as f64 / 1e6
}

/// Read the database's clock (one round trip; the reading is placed at its midpoint).
pub async fn sync(pool: &PgPool) -> Result<(), sqlx::Error> {
    let sent = Instant::now();
    let db: DateTime<Utc> = sqlx::query_scalar(crate::sql::DB_NOW)
        .fetch_one(pool)
        .await?;
    let rtt = sent.elapsed();
    *READING.lock().unwrap_or_else(|p| p.into_inner()) = Some((db, sent + rtt / 2));
    Ok(())
}

/// The age of a database timestamp by the database's clock (zero when in the future).
pub fn age(t: DateTime<Utc>) -> Duration {
    (now() - t).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_follows_the_reading_not_the_wall_clock() {
        // A database two minutes behind this process's wall clock, read 3 s ago.
        let db = Utc::now() - chrono::Duration::seconds(120);
        let at = Instant::now() - Duration::from_secs(3);
        let skew = (Utc::now() - now_from(Some((db, at)))).num_seconds();
        assert!((116..=118).contains(&skew), "{skew}");
    }
}
