//! Duroxide's provider validation tests (feature `provider-test`) against our store wrapper
//! (`src/store.rs`) on duroxide-pg, each on a fresh schema: the wrapper must keep every
//! promise of the provider contract that a fetch-and-wake wrapper can touch — queue
//! semantics, instance locking, lock expiry and renewal, atomic acks, executions,
//! cancellation, poison counting and polling bounds. Not run: the groups that only reach
//! duroxide-pg through delegation unchanged (management, deletion, prune, sessions, tags,
//! kv, custom status) and those needing provider hooks duroxide-pg's tests implement
//! (corrupted history).

mod support;

use std::sync::Arc;
use std::time::Duration;

use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::Provider;
use support::TestDb;

/// Providers on one test database, a fresh schema each.
struct Factory {
    url: String,
    pool: sqlx::PgPool,
}

impl Factory {
    async fn new() -> Factory {
        let db = TestDb::new().await;
        Factory {
            url: db.url.clone(),
            pool: db.pool.clone(),
        }
    }
}

#[async_trait::async_trait]
impl ProviderFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let schema = format!("v_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        toygres_actors::duro::open_unguarded_store(&self.url, &schema, false, &self.pool)
            .await
            .expect("open store")
    }

    fn short_poll_threshold(&self) -> Duration {
        Duration::from_millis(500)
    }
}

/// One test per validation function of module `$m` (a `use … as` alias in scope).
macro_rules! validations {
    ($m:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $m::$name(&Factory::new().await).await;
            }
        )*
    };
}

use duroxide::provider_validations as v;

validations!(v:
    // Instance creation.
    test_instance_creation_via_metadata,
    test_no_instance_creation_on_enqueue,
    test_null_version_handling,
    test_sub_orchestration_instance_creation,
    // Atomicity.
    test_atomicity_failure_rollback,
    test_concurrent_ack_prevention,
    test_lock_released_only_on_successful_ack,
    test_multi_operation_atomic_ack,
    // Errors.
    test_invalid_lock_token_on_ack,
    test_duplicate_event_id_rejection,
    test_missing_instance_metadata,
    test_lock_expiration_during_ack,
    // Instance locking (single-flight fetches must not change who gets what).
    test_ack_only_affects_locked_messages,
    test_completions_arriving_during_lock_blocked,
    test_concurrent_instance_fetching,
    test_cross_instance_lock_isolation,
    test_exclusive_instance_lock,
    test_invalid_lock_token_rejection,
    test_lock_token_uniqueness,
    test_message_tagging_during_lock,
    test_multi_threaded_lock_contention,
    test_multi_threaded_lock_expiration_recovery,
    test_multi_threaded_no_duplicate_processing,
    // Lock expiry and renewal.
    test_abandon_releases_lock_immediately,
    test_abandon_work_item_releases_lock,
    test_abandon_work_item_with_delay,
    test_concurrent_lock_attempts_respect_expiration,
    test_lock_expires_after_timeout,
    test_lock_renewal_on_ack,
    test_orchestration_lock_renewal_after_expiration,
    test_worker_ack_fails_after_lock_expiry,
    test_worker_lock_renewal_after_ack,
    test_worker_lock_renewal_after_expiration,
    test_worker_lock_renewal_extends_timeout,
    test_worker_lock_renewal_invalid_token,
    test_worker_lock_renewal_success,
    // Executions.
    test_continue_as_new_creates_new_execution,
    test_execution_history_persistence,
    test_execution_id_sequencing,
    test_execution_isolation,
    test_latest_execution_detection,
    // Queue semantics (delayed visibility: due times).
    test_lost_lock_token_handling,
    test_orphan_queue_messages_dropped,
    test_timer_delayed_visibility,
    test_worker_ack_atomicity,
    test_worker_delayed_visibility_skips_future_items,
    test_worker_item_immediate_visibility,
    test_worker_peek_lock_semantics,
    test_worker_queue_fifo_ordering,
    // Cancellation.
    test_ack_work_item_fails_when_entry_deleted,
    test_ack_work_item_none_deletes_without_enqueue,
    test_batch_cancellation_deletes_multiple_activities,
    test_cancelled_activities_deleted_from_worker_queue,
    test_cancelling_nonexistent_activities_is_idempotent,
    test_fetch_returns_missing_state_when_instance_deleted,
    test_fetch_returns_running_state_for_active_orchestration,
    test_fetch_returns_terminal_state_when_orchestration_completed,
    test_fetch_returns_terminal_state_when_orchestration_continued_as_new,
    test_fetch_returns_terminal_state_when_orchestration_failed,
    test_orphan_activity_after_instance_force_deletion,
    test_renew_fails_when_entry_deleted,
    test_renew_returns_missing_when_instance_deleted,
    test_renew_returns_running_when_orchestration_active,
    test_renew_returns_terminal_when_orchestration_completed,
    test_same_activity_in_worker_items_and_cancelled_is_noop,
);

mod poison {
    use super::Factory;
    use duroxide::provider_validations::poison_message as p;

    validations!(p:
        abandon_orchestration_item_ignore_attempt_decrements,
        abandon_work_item_ignore_attempt_decrements,
        attempt_count_is_per_message,
        ignore_attempt_never_goes_negative,
        max_attempt_count_across_message_batch,
        orchestration_attempt_count_increments_on_refetch,
        orchestration_attempt_count_starts_at_one,
        orchestration_delayed_abandon_preserves_unlocked_rows,
        orchestration_ignore_attempt_preserves_hidden_start,
        worker_attempt_count_increments_on_lock_expiry,
        worker_attempt_count_starts_at_one,
    );
}

/// Long polling: the wrapper waits up to the timeout the runtime passes, and not longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_waits_for_the_timeout_and_no_longer() {
    use duroxide::provider_validations::long_polling as l;
    let provider = Factory::new().await.create_provider().await;
    l::test_long_poll_waits_for_timeout(provider.as_ref()).await;
    l::test_long_poll_work_item_waits_for_timeout(provider.as_ref()).await;
    l::test_fetch_respects_timeout_upper_bound(provider.as_ref()).await;
}
