//! Duroxide's own metrics (`duroxide_*`, emitted by its runtime through the `metrics`
//! facade) as we export them: histogram buckets in each one's unit, and the HELP text
//! Duroxide does not give (promtool refuses a metric without one).
//!
//! Duroxide 0.1.32 records three units: seconds (`*_duration_seconds`: latencies — its
//! `duroxide_orchestration_duration_seconds` times the turn that ended an execution, not
//! the execution), milliseconds (`*_duration_ms`) and plain counts, per execution
//! (`duroxide_orchestration_turns`, `duroxide_orchestration_history_size`). Each gets buckets
//! that fit it. A Duroxide histogram of a unit not listed here is exported as a summary
//! (quantiles need no unit), never with buckets of another unit's scale.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Buckets (milliseconds) of the dispatchers' per-item durations.
pub const MILLISECONDS_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Buckets (turns) of an execution's turn count. Duroxide 0.1.32 counts only the turn that
/// ended the execution (1); counted whole, an actor's execution takes about two turns per
/// renewal (the activity's completion, the timer's): 41 at the default 20 iterations.
pub const TURN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0,
];

/// Buckets (events) of an execution's history size: about four events per actor iteration
/// (activity scheduled and completed, timer created and fired), 80-odd at the default 20.
pub const HISTORY_EVENT_BUCKETS: &[f64] = &[
    5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

pub const ORCHESTRATION_DURATION: &str = "duroxide_orchestration_duration_seconds";
pub const ORCHESTRATION_TURNS: &str = "duroxide_orchestration_turns";
pub const ORCHESTRATION_HISTORY_SIZE: &str = "duroxide_orchestration_history_size";

/// Duroxide's histograms' buckets on `builder`, but for its latencies in seconds, which
/// take ours (`crate::metrics`, suffix `_seconds`). The exporter tries full names first,
/// then prefixes, then suffixes: the count histograms are named in full, the milliseconds go
/// by their suffix.
pub fn with_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    builder
        .set_buckets_for_metric(Matcher::Full(ORCHESTRATION_TURNS.into()), TURN_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(ORCHESTRATION_HISTORY_SIZE.into()),
            HISTORY_EVENT_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_ms".into()), MILLISECONDS_BUCKETS)
}

/// HELP text for every metric Duroxide 0.1.32 emits (`src/runtime/observability.rs`).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "duroxide_orchestration_starts_total",
        "Duroxide orchestration starts, by orchestration, version and initiator."
    );
    describe_counter!(
        "duroxide_orchestration_completions_total",
        "Duroxide executions ended (completed, or continued as new), by orchestration, version, status and turn-count range."
    );
    describe_histogram!(
        ORCHESTRATION_DURATION,
        Unit::Seconds,
        "Processing time of the turn that ended a Duroxide execution (completed, failed or continued as new)."
    );
    describe_histogram!(
        ORCHESTRATION_TURNS,
        Unit::Count,
        "Turns Duroxide counted for an execution when it ended (0.1.32 counts the ending turn only)."
    );
    describe_histogram!(
        ORCHESTRATION_HISTORY_SIZE,
        Unit::Count,
        "History events of one Duroxide execution when it ended."
    );
    describe_counter!(
        "duroxide_orchestration_failures_total",
        "Duroxide orchestrations failed, by error type."
    );
    describe_counter!(
        "duroxide_orchestration_infrastructure_errors_total",
        "Duroxide orchestrations failed by an infrastructure error."
    );
    describe_counter!(
        "duroxide_orchestration_configuration_errors_total",
        "Duroxide orchestrations failed by a configuration error (e.g. an unregistered name or version)."
    );
    describe_counter!(
        "duroxide_orchestration_continue_as_new_total",
        "Duroxide executions continued as new."
    );
    describe_counter!(
        "duroxide_orchestration_poison_total",
        "Duroxide orchestration messages given up as poison."
    );
    describe_counter!(
        "duroxide_activity_executions_total",
        "Duroxide activity executions, by activity, outcome, retry attempt and tag."
    );
    describe_histogram!(
        "duroxide_activity_duration_seconds",
        Unit::Seconds,
        "Duration of one Duroxide activity execution."
    );
    describe_counter!(
        "duroxide_activity_infrastructure_errors_total",
        "Duroxide activity executions failed by an infrastructure error."
    );
    describe_counter!(
        "duroxide_activity_configuration_errors_total",
        "Duroxide activity executions failed by a configuration error."
    );
    describe_counter!(
        "duroxide_activity_poison_total",
        "Duroxide activity messages given up as poison."
    );
    describe_counter!(
        "duroxide_suborchestration_calls_total",
        "Duroxide sub-orchestration calls, by parent, child and outcome."
    );
    describe_histogram!(
        "duroxide_suborchestration_duration_seconds",
        Unit::Seconds,
        "Duration of a Duroxide sub-orchestration."
    );
    describe_histogram!(
        "duroxide_provider_operation_duration_seconds",
        Unit::Seconds,
        "Duration of a Duroxide store (provider) operation, by operation and status."
    );
    describe_counter!(
        "duroxide_provider_errors_total",
        "Duroxide store (provider) operations failed, by operation and error type."
    );
    describe_histogram!(
        "duroxide_orchestration_dispatcher_processing_duration_ms",
        Unit::Milliseconds,
        "Duroxide orchestration dispatcher: time to process one item (milliseconds)."
    );
    describe_histogram!(
        "duroxide_worker_dispatcher_execution_duration_ms",
        Unit::Milliseconds,
        "Duroxide worker dispatcher: time to execute one item (milliseconds)."
    );
    describe_gauge!(
        "duroxide_orchestrator_queue_depth",
        "Items in Duroxide's orchestrator queue, as this process last read it."
    );
    describe_gauge!(
        "duroxide_worker_queue_depth",
        "Items in Duroxide's worker queue, as this process last read it."
    );
    describe_gauge!(
        "duroxide_active_orchestrations",
        "Duroxide orchestrations this process counts as active."
    );
}
