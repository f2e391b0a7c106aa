//! Quiet by default: what the service logs is what an operator needs to read.
//!
//! - [`Expected`] wraps the log formatter and drops Duroxide's report of an orchestration
//!   that "failed" because we cancelled it: a cancel we asked for is not a warning (the
//!   reconciler logs its own decision, with the reason, at INFO).
//! - [`Burst`] keeps per-instance lines readable at fleet scale: in each window the first
//!   few events of a kind are logged one by one, the rest are counted and summarised in one
//!   line ("and 9,980 more health changes in the last 10 s"). Nothing is lost: every change
//!   is also in the metrics and the database.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The default log filter: our INFO, and libraries' notices and migration chatter only
/// from WARN up (duroxide-pg applies its 20-odd migrations with an INFO line each, and the
/// server's "does not exist, skipping" notices arrive as sqlx INFO events).
pub const DEFAULT_LOG_FILTER: &str =
    "info,sqlx::postgres::notice=warn,duroxide_pg::migrations=warn";

/// A formatter that leaves out expected events and formats everything else with `F`.
pub struct Expected<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Expected<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if is_requested_cancel(event) {
            return Ok(());
        }
        self.0.format_event(ctx, writer, event)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "error" => self.error = value.to_string(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Duroxide's "Orchestration failed" for an actor whose failure is the cancel we sent.
fn is_requested_cancel(event: &Event<'_>) -> bool {
    if !event.metadata().target().starts_with("duroxide") {
        return false;
    }
    let mut f = Fields::default();
    event.record(&mut f);
    f.message.starts_with("Orchestration failed") && f.error.contains("canceled")
}

/// A rate-limited kind of per-instance log line.
pub struct Burst {
    what: &'static str,
    state: Mutex<BurstState>,
}

struct BurstState {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// Lines of one kind logged one by one per window.
pub const BURST_LINES: u32 = 20;
/// The window after which a summary is due.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Health status changes (`check`).
pub static HEALTH_CHANGES: Burst = Burst::new("health changes");
/// Reconcile actions (`reconcile`).
pub static RECONCILED: Burst = Burst::new("reconcile actions");
/// Actors exiting because their row moved on (`check`, `actor`).
pub static ACTOR_EXITS: Burst = Burst::new("actor exits");
/// Invalid or unknown notifications (`listener`, the control inbox).
pub static INVALID_NOTIFICATIONS: Burst = Burst::new("invalid notifications");
/// HTTP requests answered 503 at the time limit (`api`): a flood of readers.
pub static HTTP_TIMEOUTS: Burst = Burst::new("HTTP requests over the time limit");

impl Burst {
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            state: Mutex::new(BurstState {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this event should get its own line; counts it otherwise.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st
            .window_start
            .is_none_or(|start| now.duration_since(start) >= BURST_WINDOW)
        {
            self.summarise(&mut st);
            st.window_start = Some(now);
            st.logged = 0;
        }
        if st.logged < BURST_LINES {
            st.logged += 1;
            true
        } else {
            st.suppressed += 1;
            false
        }
    }

    /// Log the summary of a finished window (called on a timer, so a burst that ended is
    /// still summarised).
    pub fn flush(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st
            .window_start
            .is_some_and(|start| start.elapsed() >= BURST_WINDOW)
        {
            self.summarise(&mut st);
            st.window_start = None;
            st.logged = 0;
        }
    }

    fn summarise(&self, st: &mut BurstState) {
        if st.suppressed > 0 {
            tracing::info!(
                more = st.suppressed,
                window_s = BURST_WINDOW.as_secs(),
                "and {} more {} in the last {} s, not logged one by one (see metrics and the decisions table)",
                st.suppressed,
                self.what,
                BURST_WINDOW.as_secs()
            );
            st.suppressed = 0;
        }
    }

    /// Events counted but not logged, not yet summarised.
    pub fn pending(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suppressed
    }
}

/// Summarise every kind whose window ended.
pub fn flush_all() {
    for b in [
        &HEALTH_CHANGES,
        &RECONCILED,
        &ACTOR_EXITS,
        &INVALID_NOTIFICATIONS,
        &HTTP_TIMEOUTS,
    ] {
        b.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_the_first_lines_and_counts_the_rest() {
        let b = Burst::new("things");
        let admitted = (0..1000).filter(|_| b.admit()).count();
        assert_eq!(admitted, BURST_LINES as usize);
        assert_eq!(b.pending(), 1000 - BURST_LINES as u64);
    }
}
