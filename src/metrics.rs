//! Prometheus metrics (prefix `toygres_actors_`), next to Duroxide's own `duroxide_*`.
//!
//! Counters and histograms are recorded where things happen, through the `metrics` facade.
//! The fleet gauges — `instances{verdict}`, `instance_verdict{k8s_name,verdict}`,
//! `instance_last_health_check_timestamp_seconds{k8s_name}`, `instance_up{k8s_name}` — are
//! not: every replica recomputes them from the database on a short period (one query for the
//! whole fleet) and renders them itself, so a dead actor cannot hide its own death and a
//! deleted instance's series vanish at the next scrape.
//!
//! The fleet gauges and their cardinality: [`crate::fleet_gauges`].

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const HEALTH_CHECKS_TOTAL: &str = "toygres_actors_health_checks_total";
pub const HEALTH_CHECK_DURATION: &str = "toygres_actors_health_check_duration_seconds";
pub const PROBE_ANSWERS_TOTAL: &str = "toygres_actors_probe_answers_total";
pub const NOTIFICATIONS_TOTAL: &str = "toygres_actors_notifications_total";
pub const NOTIFICATIONS_INVALID_TOTAL: &str = "toygres_actors_notifications_invalid_total";
pub const NOTIFICATIONS_DROPPED_TOTAL: &str = "toygres_actors_notifications_dropped_total";
pub const NOTIFICATIONS_UNKNOWN_TOTAL: &str = "toygres_actors_notifications_unknown_total";
pub const RESTARTS_LIMITED_TOTAL: &str = "toygres_actors_restarts_rate_limited_total";
pub const RECONCILE_ACTIONS_TOTAL: &str = "toygres_actors_reconcile_actions_total";
pub const RECONCILE_ERRORS_TOTAL: &str = "toygres_actors_reconcile_errors_total";
pub const RECONCILE_BATCHES_TOTAL: &str = "toygres_actors_reconcile_batches_total";
pub const RECONCILE_BATCHED_TOTAL: &str = "toygres_actors_reconcile_batched_total";
pub const EVENT_TO_ACTION: &str = "toygres_actors_event_to_action_seconds";
pub const LISTENER_CONNECTED: &str = "toygres_actors_listener_connected";
pub const LISTENER_RECONNECTS_TOTAL: &str = "toygres_actors_listener_reconnects_total";
pub const LEADER: &str = "toygres_actors_leader";
pub const ACTORS_V1_RUNNING: &str = "toygres_actors_actors_v1_running";
pub const LEASES_HELD: &str = "toygres_actors_probe_leases_held";
pub const LEASES_MOVED: &str = "toygres_actors_probe_leases_moved_total";
pub const LEADER_TERM: &str = "toygres_actors_leader_term";
pub const HEALING_PAUSED: &str = "toygres_actors_healing_paused";
pub const LAST_RESYNC: &str = "toygres_actors_last_resync_timestamp_seconds";
pub const NOTIFY_ROUNDTRIP: &str = "toygres_actors_notify_roundtrip_seconds";
pub const LEASE_RENEWAL_LAG: &str = "toygres_actors_lease_renewal_lag_seconds";
pub const DUROXIDE_TURNS: &str = "toygres_actors_duroxide_turns_total";
pub const DUROXIDE_FETCHES: &str = "toygres_actors_duroxide_fetches_total";
pub const DUROXIDE_WAKEUPS: &str = "toygres_actors_duroxide_wakeups_total";
pub const DUROXIDE_FETCH_HELD: &str = "toygres_actors_duroxide_fetch_held_seconds";
pub const POOL_TRIMMED: &str = "toygres_actors_pool_connections_trimmed_total";
pub const LANE_RESTARTS: &str = "toygres_actors_lane_restarts_total";
pub const TASK_PANICS: &str = "toygres_actors_task_panics_total";
pub const LEGACY_ACTORS_RUNNING: &str = "toygres_actors_legacy_actors_running";
pub const STORE_FOREIGN_ITEMS: &str = "toygres_actors_store_foreign_items";
pub const STORE_FOREIGN_GIVEN_BACK: &str = "toygres_actors_store_foreign_given_back_total";

/// Latency buckets (seconds) for the sub-millisecond-to-seconds histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Renewal lag buckets (seconds): on time is under a second; ToygresActorsRenewalsLate
/// fires at a p99 over 2 min (Duroxide's dispatch that far behind).
const LAG_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0,
];

/// The exporter with every histogram's buckets: latencies in seconds (ours and Duroxide's)
/// by their suffix, the renewal lag by its full name (a full name wins over a suffix), and
/// Duroxide's counts and milliseconds in their own units ([`crate::duroxide_metrics`]).
fn builder() -> Result<PrometheusBuilder, BuildError> {
    crate::duroxide_metrics::with_buckets(PrometheusBuilder::new())?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(LEASE_RENEWAL_LAG.into()), LAG_BUCKETS)
}

/// Install the global recorder (once per process; later calls reuse it).
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().map(|b| b.build_recorder()).unwrap_or_else(|e| {
                tracing::error!(error = %e, "histogram buckets refused; exporting summaries");
                PrometheusBuilder::new().build_recorder()
            });
            let handle = recorder.handle();
            // Another recorder may already be installed (tests running several services in
            // one process): then our handle renders only what reaches it.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            crate::duroxide_metrics::describe();
            handle
        })
        .clone()
}

/// HELP of the checks, notifications and reconcile metrics (then [`describe_replicas_and_store`]).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HEALTH_CHECKS_TOTAL,
        "Health checks done, by observed status."
    );
    describe_histogram!(
        HEALTH_CHECK_DURATION,
        Unit::Seconds,
        "Duration of a health check probe."
    );
    describe_counter!(
        PROBE_ANSWERS_TOTAL,
        "Probes their instance answered, by pg_is_in_recovery() (in_recovery=\"true\": a standby)."
    );
    describe_counter!(
        NOTIFICATIONS_TOTAL,
        "Notifications received, by channel and op."
    );
    describe_counter!(
        NOTIFICATIONS_INVALID_TOTAL,
        "Malformed, unknown or oversized notifications, by channel."
    );
    describe_counter!(
        RECONCILE_ACTIONS_TOTAL,
        "Reconcile decisions carried out, by action."
    );
    describe_counter!(
        RECONCILE_BATCHES_TOTAL,
        "Set-based reconciles of a storm (many queued hints, a resync): one transaction each."
    );
    describe_counter!(
        RECONCILE_BATCHED_TOTAL,
        "Instances a set-based reconcile carried out in bulk, by action (others go one by one)."
    );
    describe_counter!(
        RECONCILE_ERRORS_TOTAL,
        "Reconcile attempts that failed (retried with backoff)."
    );
    describe_histogram!(
        EVENT_TO_ACTION,
        Unit::Seconds,
        "CMS commit (trigger clock) to Duroxide call done."
    );
    describe_gauge!(
        LISTENER_CONNECTED,
        "1 while this replica's listener is connected and listening."
    );
    describe_counter!(LISTENER_RECONNECTS_TOTAL, "Listener reconnects.");
    describe_replicas_and_store();
}

/// HELP of the leadership, lease, store, lane and legacy metrics.
fn describe_replicas_and_store() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(LEADER, "1 on the replica that holds leadership.");
    describe_gauge!(
        HEALING_PAUSED,
        "1 while the healing breaker holds back restarts of stale actors (too much of the fleet stale at once)."
    );
    describe_counter!(
        NOTIFICATIONS_DROPPED_TOTAL,
        "Control notifications dropped unread because the control inbox was full (a flood)."
    );
    describe_counter!(
        NOTIFICATIONS_UNKNOWN_TOTAL,
        "toygres_instances notifications naming an instance with neither a row nor an actor (dropped)."
    );
    describe_counter!(
        RESTARTS_LIMITED_TOTAL,
        "Restarts held back by the per-instance minimum interval or the fleet-wide restart rate."
    );
    describe_gauge!(
        LEASES_HELD,
        "Probe leases this replica holds (instances it checks)."
    );
    describe_counter!(
        LEASES_MOVED,
        "Probe leases this replica took over: claimed from a replica that is gone, or taken to balance the fleet."
    );
    describe_gauge!(
        LEADER_TERM,
        "The leader term this replica leads in (0 when it does not lead)."
    );
    describe_gauge!(
        ACTORS_V1_RUNNING,
        "Actors still running orchestration version 1 (counted at start): v1 stays registered while this is above zero."
    );
    describe_gauge!(
        LAST_RESYNC,
        Unit::Seconds,
        "Unix time of the last completed full reconcile."
    );
    describe_histogram!(
        LEASE_RENEWAL_LAG,
        Unit::Seconds,
        "How late an actor's probe-lease renewal ran against its due time (the previous renewal + the renewal period), from database timestamps; negative lags count as 0."
    );
    describe_counter!(
        DUROXIDE_TURNS,
        "Duroxide turns acknowledged by this process, by queue (orchestrator: one orchestration turn; worker: one activity)."
    );
    describe_counter!(
        DUROXIDE_FETCHES,
        "Fetches from a Duroxide queue, by queue and result (item, empty, or skipped: another slot had just found the queue empty)."
    );
    describe_counter!(
        DUROXIDE_WAKEUPS,
        "Wake-ups of waiting Duroxide fetches, by queue and source (enqueue, ack, completion, abandon, notify, reconnect)."
    );
    describe_histogram!(
        DUROXIDE_FETCH_HELD,
        Unit::Seconds,
        "How long an orchestration fetch waited for this replica's single starts' first checks before it fetched (at most 50 ms; only fetches that waited)."
    );
    describe_counter!(
        POOL_TRIMMED,
        format!(
            "Idle connections closed because their pool (cms, duroxide) held more than it needed over the last minute plus a spare of {}.",
            crate::config::POOL_SPARE
        )
    );
    describe_counter!(
        LANE_RESTARTS,
        "Explicit restarts on the priority lane, by request (request: durable; control: restart <name>) and outcome (done, not_leader, retry: failed or rate limited, tried again; left_pending: a durable request that failed every attempt, left to the resync)."
    );
    describe_counter!(
        TASK_PANICS,
        "Panics caught in spawned work, by task (check: one scheduled health check; reconcile: one instance's reconcile); the work is retried at its next turn."
    );
    describe_gauge!(
        LEGACY_ACTORS_RUNNING,
        "Instance actors still running in the legacy store (--legacy-duroxide-schema, where toygres' own server runs Duroxide): each is adopted (ours started, it cancelled) within a resync; one that stays is an adoption that fails."
    );
    describe_gauge!(
        STORE_FOREIGN_ITEMS,
        "Items in our Duroxide store of orchestrations or activities this service does not register (another runtime's work: our dispatchers hold off the store while it is above zero)."
    );
    describe_counter!(
        STORE_FOREIGN_GIVEN_BACK,
        "Foreign items our dispatchers fetched and gave back at once, their attempt uncounted, by queue."
    );
    describe_histogram!(
        NOTIFY_ROUNDTRIP,
        Unit::Seconds,
        "Listener self-NOTIFY round trip."
    );
}

pub fn record_health_check(status: &str, duration: Duration) {
    metrics::counter!(HEALTH_CHECKS_TOTAL, "status" => status.to_string()).increment(1);
    metrics::histogram!(HEALTH_CHECK_DURATION).record(duration.as_secs_f64());
}

/// A probe the instance answered; `in_recovery`: it is a standby.
pub fn probe_answered(in_recovery: bool) {
    let label = if in_recovery { "true" } else { "false" };
    metrics::counter!(PROBE_ANSWERS_TOTAL, "in_recovery" => label).increment(1);
}

pub fn notification(channel: &'static str, op: &'static str) {
    metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => channel, "op" => op).increment(1);
}

pub fn invalid_notification(channel: &'static str) {
    metrics::counter!(NOTIFICATIONS_INVALID_TOTAL, "channel" => channel).increment(1);
}

/// A notification dropped unread because the control inbox was full.
pub fn notification_dropped(channel: &'static str) {
    metrics::counter!(NOTIFICATIONS_DROPPED_TOTAL, "channel" => channel).increment(1);
}

/// A `toygres_instances` notification naming an instance that has neither a row nor an actor.
pub fn notification_unknown() {
    metrics::counter!(NOTIFICATIONS_UNKNOWN_TOTAL).increment(1);
}

/// A restart held back by the per-instance minimum interval (`why` = "instance") or the
/// fleet-wide rate (`why` = "fleet").
pub fn restart_limited(why: &'static str) {
    metrics::counter!(RESTARTS_LIMITED_TOTAL, "why" => why).increment(1);
}

pub fn reconcile_action(action: &'static str) {
    metrics::counter!(RECONCILE_ACTIONS_TOTAL, "action" => action).increment(1);
}

/// A set-based reconcile carried out `n` actions of `action` in bulk.
pub fn reconcile_batched(action: &'static str, n: usize) {
    metrics::counter!(RECONCILE_BATCHED_TOTAL, "action" => action).increment(n as u64);
    metrics::counter!(RECONCILE_ACTIONS_TOTAL, "action" => action).increment(n as u64);
}

/// One set-based reconcile done.
pub fn reconcile_batch_done() {
    metrics::counter!(RECONCILE_BATCHES_TOTAL).increment(1);
}

pub fn reconcile_error() {
    metrics::counter!(RECONCILE_ERRORS_TOTAL).increment(1);
}

pub fn event_to_action(seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        metrics::histogram!(EVENT_TO_ACTION).record(seconds);
    }
}

pub fn listener_connected(up: bool) {
    metrics::gauge!(LISTENER_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

pub fn listener_reconnect() {
    metrics::counter!(LISTENER_RECONNECTS_TOTAL).increment(1);
}

pub fn leader(is_leader: bool) {
    metrics::gauge!(LEADER).set(if is_leader { 1.0 } else { 0.0 });
}

pub fn leases_held(n: usize) {
    metrics::gauge!(LEASES_HELD).set(n as f64);
}

pub fn leases_moved(how: &'static str, n: i32) {
    if n > 0 {
        metrics::counter!(LEASES_MOVED, "how" => how).increment(n as u64);
    }
}

pub fn healing_paused(paused: bool) {
    metrics::gauge!(HEALING_PAUSED).set(if paused { 1.0 } else { 0.0 });
}

pub fn leader_term(term: Option<i64>) {
    metrics::gauge!(LEADER_TERM).set(term.unwrap_or(0) as f64);
}

pub fn actors_v1_running(n: i64) {
    metrics::gauge!(ACTORS_V1_RUNNING).set(n as f64);
}

pub fn resync_done() {
    metrics::gauge!(LAST_RESYNC).set(crate::clock::now_seconds());
}

pub fn notify_roundtrip(seconds: f64) {
    metrics::histogram!(NOTIFY_ROUNDTRIP).record(seconds);
}

/// How late a lease renewal ran (seconds; early counts as 0).
pub fn lease_renewal_lag(seconds: f64) {
    if seconds.is_finite() {
        metrics::histogram!(LEASE_RENEWAL_LAG).record(seconds.max(0.0));
    }
}

/// A Duroxide turn acknowledged (`queue`: orchestrator or worker).
pub fn store_turn(queue: &'static str) {
    metrics::counter!(DUROXIDE_TURNS, "queue" => queue).increment(1);
}

/// A fetch from a Duroxide queue: `result` is item, empty or skipped.
pub fn store_fetch(queue: &'static str, result: &'static str) {
    metrics::counter!(DUROXIDE_FETCHES, "queue" => queue, "result" => result).increment(1);
}

/// An orchestration fetch that waited `held` for single starts' first checks
/// ([`crate::first_checks`]).
pub fn fetch_held_for_first_checks(held: std::time::Duration) {
    metrics::histogram!(DUROXIDE_FETCH_HELD).record(held.as_secs_f64());
}

/// A wake-up of the waiting fetches of a queue, by source.
pub fn store_wakeup(queue: &'static str, source: &'static str) {
    metrics::counter!(DUROXIDE_WAKEUPS, "queue" => queue, "source" => source).increment(1);
}

/// Idle pooled connections closed because the pool had more than it recently needed.
pub fn pool_trimmed(pool: &'static str, n: usize) {
    metrics::counter!(POOL_TRIMMED, "pool" => pool).increment(n as u64);
}

/// An explicit restart's attempt on the priority lane, by request and outcome.
pub fn lane_restart(request: &'static str, outcome: &'static str) {
    metrics::counter!(LANE_RESTARTS, "request" => request, "outcome" => outcome).increment(1);
}

/// A panic caught in spawned work.
pub fn task_panicked(task: &'static str) {
    metrics::counter!(TASK_PANICS, "task" => task).increment(1);
}

/// Instance actors still running in the legacy store.
pub fn legacy_actors_running(n: usize) {
    metrics::gauge!(LEGACY_ACTORS_RUNNING).set(n as f64);
}

/// Foreign items found in our store by the last check.
pub fn store_foreign_items(n: i64) {
    metrics::gauge!(STORE_FOREIGN_ITEMS).set(n as f64);
}

/// A foreign item fetched by our dispatcher and given back.
pub fn store_foreign_given_back(queue: &'static str) {
    metrics::counter!(STORE_FOREIGN_GIVEN_BACK, "queue" => queue).increment(1);
}

/// Zero every labelled counter we export, so the series exist before the first event
/// (alerts on `rate()` and dashboards need them).
pub fn initialise_series() {
    metrics::gauge!(HEALING_PAUSED).set(0.0);
    for queue in ["orchestrator", "worker"] {
        metrics::counter!(DUROXIDE_TURNS, "queue" => queue).increment(0);
    }
    metrics::counter!(NOTIFICATIONS_UNKNOWN_TOTAL).increment(0);
    for why in ["instance", "fleet"] {
        metrics::counter!(RESTARTS_LIMITED_TOTAL, "why" => why).increment(0);
    }
    for how in ["claimed", "balanced"] {
        metrics::counter!(LEASES_MOVED, "how" => how).increment(0);
    }
    for pool in ["cms", "duroxide"] {
        metrics::counter!(POOL_TRIMMED, "pool" => pool).increment(0);
    }
    for request in ["request", "control"] {
        for outcome in ["done", "not_leader", "retry", "left_pending"] {
            metrics::counter!(LANE_RESTARTS, "request" => request, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::gauge!(LEASES_HELD).set(0.0);
    for status in ["healthy", "unhealthy", "unknown"] {
        metrics::counter!(HEALTH_CHECKS_TOTAL, "status" => status).absolute(0);
    }
    for in_recovery in ["true", "false"] {
        metrics::counter!(PROBE_ANSWERS_TOTAL, "in_recovery" => in_recovery).absolute(0);
    }
    metrics::gauge!(LEGACY_ACTORS_RUNNING).set(0.0);
    for task in ["check", "reconcile"] {
        metrics::counter!(TASK_PANICS, "task" => task).absolute(0);
    }
    metrics::gauge!(STORE_FOREIGN_ITEMS).set(0.0);
    for queue in ["orchestrator", "worker"] {
        metrics::counter!(STORE_FOREIGN_GIVEN_BACK, "queue" => queue).absolute(0);
    }
    for action in ["start", "cancel", "delete", "restart", "adopt", "noop"] {
        metrics::counter!(RECONCILE_ACTIONS_TOTAL, "action" => action).absolute(0);
    }
    for channel in [
        crate::config::CHANNEL_INSTANCES,
        crate::config::CHANNEL_CONTROL,
    ] {
        metrics::counter!(NOTIFICATIONS_INVALID_TOTAL, "channel" => channel).absolute(0);
    }
    // Every (channel, op) the listener counts (see `listener::handle`).
    for (channel, op) in [
        (crate::config::CHANNEL_INSTANCES, "insert"),
        (crate::config::CHANNEL_INSTANCES, "delete"),
        (crate::config::CHANNEL_INSTANCES, "state"),
        (crate::config::CHANNEL_INSTANCES, "actor"),
        (crate::config::CHANNEL_CONTROL, "restart"),
        (crate::config::CHANNEL_CONTROL, "reconcile"),
    ] {
        metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => channel, "op" => op).absolute(0);
    }
    metrics::counter!(RECONCILE_ERRORS_TOTAL).absolute(0);
    metrics::counter!(RECONCILE_BATCHES_TOTAL).absolute(0);
    for action in ["start", "cancel", "delete"] {
        metrics::counter!(RECONCILE_BATCHED_TOTAL, "action" => action).absolute(0);
    }
    metrics::counter!(LISTENER_RECONNECTS_TOTAL).absolute(0);
    listener_connected(false);
    leader(false);
}

pub use crate::fleet_gauges::{FleetEntry, FleetGauges, TURNS_PER_RENEWAL};

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition of one sample of each histogram through a recorder built as ours is.
    fn render(samples: &[(&'static str, f64)]) -> String {
        let recorder = builder().expect("buckets").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for (name, value) in samples {
                metrics::histogram!(*name).record(*value);
            }
        });
        handle.render()
    }

    /// The smallest finite bucket bound of `name` that counts its one sample.
    fn first_bucket(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
            .filter(|l| !l.contains("+Inf") && l.ends_with(" 1"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
            .reduce(f64::min)
    }

    #[test]
    fn each_histogram_lands_in_a_bucket_of_its_unit() {
        use crate::duroxide_metrics as d;
        let text = render(&[
            (d::ORCHESTRATION_TURNS, 41.0),
            (d::ORCHESTRATION_HISTORY_SIZE, 130.0),
            (d::ORCHESTRATION_DURATION, 0.03),
            ("duroxide_activity_duration_seconds", 0.003),
            ("duroxide_worker_dispatcher_execution_duration_ms", 3.0),
            (HEALTH_CHECK_DURATION, 0.015),
            (LEASE_RENEWAL_LAG, 90.0),
        ]);
        for (name, bound) in [
            (d::ORCHESTRATION_TURNS, 50.0),
            (d::ORCHESTRATION_HISTORY_SIZE, 200.0),
            (d::ORCHESTRATION_DURATION, 0.05),
            ("duroxide_activity_duration_seconds", 0.005),
            ("duroxide_worker_dispatcher_execution_duration_ms", 5.0),
            (HEALTH_CHECK_DURATION, 0.02),
            (LEASE_RENEWAL_LAG, 120.0),
        ] {
            assert_eq!(first_bucket(&text, name), Some(bound), "{name}: {text}");
        }
    }
}
