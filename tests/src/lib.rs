//! The orcs conformance suite: every semantic rule of the job queue as a named, generic case, run by
//! every driver.
//!
//! A driver's test file instantiates the whole suite in one line:
//!
//! ```text
//! orcs_tests::conformance_tests!(async { Some(orcs_memory::MemoryDriver::new()) });
//! ```
//!
//! The factory expression is evaluated once per case and yields `Option<D>`: `None` means the
//! driver's service is missing and the case is skipped loudly (a failure under
//! `ORCS_TEST_REQUIRE_SERVICES=1`; see [`services`]). Every case takes the driver as
//! `Arc<dyn Driver>`, so the trait-object path is what is tested. The list of cases lives only in
//! [`conformance_tests!`]: adding a case there enrolls every driver.

pub mod cases;
pub mod jobs;
pub mod operations_cases;
pub mod schedule_cases;
pub mod services;
pub mod workflow_cases;

use std::future::Future;
use std::time::Duration;

use orcs_core::Driver;

/// Runs a case on a fresh multi-threaded runtime with a generous overall time limit, so that a
/// hung case fails instead of stalling CI.
pub fn run<F: Future<Output = ()>>(case: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    runtime.block_on(async {
        // ORCS_TEST_CASE_TIMEOUT_SECS raises the limit for long runs of a case.
        let limit = std::env::var("ORCS_TEST_CASE_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        tokio::time::timeout(Duration::from_secs(limit), case)
            .await
            .unwrap_or_else(|_| panic!("the case did not finish within {limit} s"));
    });
}

/// Boxes a driver made by a factory, or reports the skip.
#[doc(hidden)]
pub fn __into_driver<D: Driver>(driver: Option<D>) -> Option<orcs_core::BoxDriver> {
    driver.map(|d| std::sync::Arc::new(d) as orcs_core::BoxDriver)
}

/// Polls `check` every 5 ms until it returns true or `within` passes; returns the last answer.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Instantiates every conformance case as a `#[test]` in a module `conformance`.
///
/// `$make` is an expression of a future yielding `Option<D>` where `D: Driver`; it is evaluated
/// once per case, so each case gets a fresh driver (its own key prefix, schema or file).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            cases: [
            ids_are_unique_and_time_sortable,
            higher_priority_runs_first,
            equal_priorities_run_in_dispatch_order,
            worker_takes_queues_in_strict_order,
            large_claims_of_a_backlog_take_the_best_jobs_in_order,
            delayed_job_is_invisible_until_due,
            delayed_job_starts_within_50ms_of_due,
            dispatch_wakes_an_idle_worker,
            concurrent_claimers_never_share_a_job,
            claim_gives_a_lease_and_a_fresh_token,
            stale_token_transitions_are_rejected,
            settle_batch_settles_each_lease_on_its_own,
            retry_backoff_doubles_from_retry_delay,
            max_retries_3_gives_4_attempts_and_one_failed_call,
            permanent_error_skips_retries,
            timeout_cancels_and_counts_a_failed_attempt,
            lease_expiry_returns_the_job_and_counts_the_attempt,
            recovery_rechecks_the_lease_deadline,
            extend_moves_the_lease_deadline,
            crash_on_the_last_attempt_sends_the_job_to_the_failed_set,
            exhausted_attempts_reach_the_failed_set_with_details,
            unknown_job_type_is_deferred_then_failed_after_patience,
            bad_payload_goes_to_the_failed_set_without_blocking,
            panic_is_a_failed_attempt_not_a_dead_worker,
            shutdown_lets_short_jobs_finish,
            shutdown_releases_unfinished_jobs,
            release_makes_the_job_claimable_at_once_without_counting,
            counters_are_exact,
            processed_counts_each_completion_once,
            counters_follow_bulk_and_odd_paths,
            clear_removes_pending_and_delayed_and_reports_the_count,
            failed_jobs_can_be_retried_forgotten_and_flushed,
            unknown_failed_id_is_not_found,
            batch_dispatch_is_atomic,
            oversized_payload_is_refused_and_nothing_is_stored,
            worker_runs_jobs_concurrently,
            worker_limits_stop_it,
            push_reports_duplicates_per_job,
            settle_effects_are_atomic_with_the_transition,
            paused_queue_is_skipped_until_resumed,
            get_shows_a_job_in_every_state,
            list_and_failed_are_paged_in_order,
            promotion_never_inverts_priority,
            concurrent_retry_failed_of_one_id_succeeds_once,
            claims_and_workers_respect_their_limits,
            timeout_asks_the_job_to_stop_before_dropping_it,
            clock_skew_is_measured_against_the_backend,
            unique_key_holds_until_started,
            unique_key_frees_on_every_terminal_path,
            unique_key_for_a_period_expires_by_time,
            unique_keys_are_per_queue_and_per_job_in_a_batch,
            unique_keys_of_every_holder_mix_in_one_push,
            keyed_pushes_meet_every_kind_of_holder,
            debounce_replaces_a_waiting_holder,
            debounce_races_claims_of_its_holder,
            a_push_beyond_one_atomic_step_answers_keys_in_order,
            unique_keys_free_per_job_in_one_settle,
            concurrent_dispatchers_on_one_key_store_one_job,
            dispatchers_of_every_kind_race_on_one_key,
            concurrency_limit_caps_jobs_running_at_once,
            settling_tokens_free_only_their_own_slots,
            settle_marks_free_only_unwritten_slots,
            settling_jobs_of_other_queues_free_no_slot,
            limited_claims_promote_due_jobs_first,
            limited_promotion_never_inverts_priority,
            warming_changes_no_job,
            rate_limit_allows_n_starts_in_any_window,
            a_claim_counts_its_rate_starts_when_it_takes_effect,
            limited_workers_wake_when_a_slot_or_token_frees,
            snooze_runs_the_job_again_without_using_an_attempt,
            cancel_removes_waiting_jobs,
            cancel_stops_a_running_job_within_a_second,
            cancel_of_a_job_whose_worker_died_ends_it_at_recovery,
            progress_is_stored_with_the_job,
            retry_backoff_is_jittered_by_default,
            a_forced_stop_hands_jobs_back_without_waiting,
            forget_queue_removes_only_an_empty_idle_queue,
            ],
            workflow_cases: [
            chain_runs_steps_in_order_each_made_available_by_the_previous_completion,
            chain_step_keeps_its_own_queue_priority_retries,
            chain_failure_stops_the_chain_and_dispatches_catch_once,
            chain_cancel_stops_without_catch,
            batch_then_and_finally_run_once_after_every_child_completed,
            batch_first_failure_dispatches_catch_once_and_cancels_the_rest,
            batch_allow_failures_runs_the_rest_and_skips_then,
            batch_counts_a_child_crashed_on_its_last_attempt_as_failed,
            batch_cancel_removes_waiting_children_and_stops_running_ones,
            batch_clear_and_cancel_of_children_count_them_cancelled,
            batch_with_only_duplicate_children_finishes_at_once,
            a_batch_beyond_one_atomic_step_answers_keys_in_order,
            batch_info_unknown_is_none,
            retried_failed_child_leaves_its_batch,
            stale_lease_settle_of_a_batch_child_changes_no_counter,
            one_settle_of_many_children_counts_each_in_its_batch_once,
            limited_queues_children_settled_together_are_counted_once,
            batch_across_queues_is_refused_where_steps_cannot_span_queues,
            ],
            schedule_cases: [
            sixteen_schedulers_fire_each_slot_exactly_once,
            missed_policy_skip,
            missed_policy_once,
            missed_policy_all,
            edited_schedule_takes_effect_at_its_next_slot,
            reregistering_the_same_schedule_changes_nothing,
            removed_schedule_stops,
            schedules_are_listed_by_name,
            stale_fire_changes_nothing,
            fire_honours_duplicate_ids_and_unique_keys,
            fire_of_unknown_schedule_is_not_found,
            run_schedule_dispatches_now,
            scheduled_job_starts_within_50ms_of_its_slot,
            worker_runs_its_scheduler_unless_turned_off,
            ],
            operations_cases: [
            heartbeat_lists_a_worker_until_its_ttl_passes,
            forget_worker_removes_its_entry,
            throughput_is_bucketed_per_minute_and_summed,
            throughput_older_than_the_horizon_is_dropped,
            prune_failed_deletes_by_age_and_by_count,
            latency_counts_due_jobs_from_their_due_time,
            error_history_is_kept_through_retries_into_the_failed_set,
            a_running_worker_is_listed_with_its_jobs_and_throughput,
            ],
        );
    };
    // One list per module of cases; test names stay flat (`conformance::<case>`), so a case name
    // must be unique across modules.
    (@cases $make:expr; $($module:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $($(
                #[test]
                fn $case() {
                    $crate::run(async {
                        let Some(driver) = $crate::__into_driver($make.await) else { return };
                        $crate::$module::$case(driver).await;
                    });
                }
            )*)*
        }
    };
}
