//! Every SQL statement of the service, by name. The text lives in `sql/*.sql` (and the
//! schema in `migrations/`); this module only loads it.
//!
//! Statements that touch Duroxide's tables contain the placeholder `__DUROXIDE__` for its
//! schema (configurable, validated by [`crate::config::valid_schema_name`]); use
//! [`with_duroxide_schema`].

macro_rules! sql {
    ($($name:ident => $file:literal,)*) => {
        $(pub const $name: &str = include_str!(concat!("../sql/", $file));)*
    };
}

sql! {
    ACTORS_V1_RUNNING => "actors_v1_running.sql",
    ACTORS_WITH_OLD_EXECUTIONS => "actors_with_old_executions.sql",
    ACTOR_CREATED_AT => "actor_created_at.sql",
    ACTOR_HISTORY_SUMMARY => "actor_history_summary.sql",
    ACTOR_NAMED => "actor_named.sql",
    ACTOR_STATE => "actor_state.sql",
    ADVISORY_LOCK => "advisory_lock.sql",
    ADVISORY_UNLOCK => "advisory_unlock.sql",
    ASSERT_TERM => "assert_term.sql",
    ASSIGNED_LEASES => "assigned_leases.sql",
    BACKEND_PID => "backend_pid.sql",
    DATABASE_EXISTS => "database_exists.sql",
    DB_NOW => "db_now.sql",
    DELETE_ACTOR_INSTANCES => "delete_actor_instances.sql",
    DUROXIDE_EXTRA_INDEX => "duroxide_extra_index.sql",
    DUROXIDE_INSTANCE_ID_INDEX => "duroxide_instance_id_index.sql",
    DUROXIDE_QUEUE_INSTANCE_INDEX => "duroxide_queue_instance_index.sql",
    DUROXIDE_WAKE => "duroxide_wake.sql",
    ENSURE_ACTORS_SCHEMA => "ensure_actors_schema.sql",
    ENQUEUE_ORCHESTRATOR_WORK => "enqueue_orchestrator_work.sql",
    ENQUEUE_ORCHESTRATOR_WORK_MANY => "enqueue_orchestrator_work_many.sql",
    FINISHED_ACTORS => "finished_actors.sql",
    FOREIGN_WORK => "foreign_work.sql",
    FINISH_RESTART_REQUESTS => "finish_restart_requests.sql",
    FLEET => "fleet.sql",
    FLEET_OF => "fleet_of.sql",
    INSERT_DECISION => "insert_decision.sql",
    INSERT_DECISIONS => "insert_decisions.sql",
    INSTANCE_BY_ID => "instance_by_id.sql",
    INSTANCE_BY_ID_WITH_TARGET => "instance_by_id_with_target.sql",
    INSTANCE_BY_NAME => "instance_by_name.sql",
    INSTANCE_FOR_CHECK => "instance_for_check.sql",
    LEADER_RESIGN => "leader_resign.sql",
    LEADER_TICK => "leader_tick.sql",
    LEASE_FOR_ACTOR => "lease_for_actor.sql",
    LEGACY_ACTORS => "legacy_actors.sql",
    LEGACY_ACTORS_NAMED => "legacy_actors_named.sql",
    LEASE_NEW_ACTORS => "lease_new_actors.sql",
    RENEW_LEASE => "renew_lease.sql",
    LISTEN => "listen.sql",
    LISTEN_CONTROL => "listen_control.sql",
    LIVE_ACTORS => "live_actors.sql",
    LIVE_ACTORS_OF_INSTANCES => "live_actors_of_instances.sql",
    NOTIFY => "notify.sql",
    PENDING_RESTART_REQUESTS => "pending_restart_requests.sql",
    PING => "ping.sql",
    PROBE => "probe.sql",
    PRUNE_DECISIONS => "prune_decisions.sql",
    PRUNE_HEALTH_HISTORY => "prune_health_history.sql",
    PRUNE_REPLICAS => "prune_replicas.sql",
    PRUNE_RESTART_REQUESTS => "prune_restart_requests.sql",
    RECENT_CHECKS => "recent_checks.sql",
    RECENT_DECISIONS => "recent_decisions.sql",
    RECORD_CHECK_SEEN => "record_check_seen.sql",
    RECORD_CHECKS_SEEN => "record_checks_seen.sql",
    RESTART_REQUEST_PENDING => "restart_request_pending.sql",
    RECORD_HEALTH => "record_health.sql",
    RELEASE_LEASE => "release_lease.sql",
    REPLICAS => "replicas.sql",
    REPLICA_HAND_OVER => "replica_hand_over.sql",
    REPLICA_REGISTER => "replica_register.sql",
    REPLICA_TICK => "replica_tick.sql",
    RESET_SEARCH_PATH => "reset_search_path.sql",
    SEARCH_PATH_ACTORS => "search_path_actors.sql",
    START_ACTOR => "start_actor.sql",
    SWAP_ACTOR_ID => "swap_actor_id.sql",
    SWAP_ACTOR_IDS => "swap_actor_ids.sql",
    TRY_ADVISORY_LOCK => "try_advisory_lock.sql",
}

/// Substitute the legacy store's schema (where toygres' own server runs Duroxide) into a
/// statement: placeholder `__LEGACY__`.
pub fn with_legacy_schema(sql: &str, schema: &str) -> String {
    debug_assert!(crate::config::valid_schema_name(schema));
    sql.replace("__LEGACY__", schema)
}

/// Substitute the Duroxide schema into a statement.
pub fn with_duroxide_schema(sql: &str, schema: &str) -> String {
    debug_assert!(crate::config::valid_schema_name(schema));
    sql.replace("__DUROXIDE__", schema)
}
