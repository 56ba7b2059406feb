//! The store conformance suite: the scheduling rules of DESIGN §4 (and the store duties of §6) as the `Store` trait
//! exposes them, run against every store implementation.
//!
//! Each test is an `async fn name(h: Harness)` in the file of its topic (matching, lifecycle, recovery, routing,
//! agents, idempotency, records, concurrency); the `conformance!` macro expands every one of them into a
//! `#[tokio::test]` inside a module named after the store (`store_conformance::memory::name`); each store joins with
//! one line (`conformance!(redis, RedisBackend)`, see `aragora_cp_tests::store_harness`). The Redis flavours run on
//! real `redis-server` processes the test binary starts (one standalone server, one 3-master cluster). A test fn
//! missing from the macro's lists is dead code, which `clippy -D warnings` rejects, so none is forgotten.
//!
//! Time moves only through the harness's clock (`h.advance`), never by sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aragora_cp::model::{
    AgentFilter, AgentRegistration, AgentStatus, AuditEntry, AuditHead, Event, EventKind, EventRecord, FailKind,
    FailRequest, Fence, GENESIS_HASH, HealthState, HealthVerdict, HeartbeatRequest, NewAuditEntry, Priority, Refusal,
    RevokeReason, Revoked, ScheduleAdvance, ScheduleRecord, Standing, StoreError, SubmitRequest, TaskFilter, TaskId,
    TaskStatus,
};
use aragora_cp::store::{ClaimRequest, WaitSpec, Waiter, Withdrawn};
use aragora_cp_tests::store_harness::{
    Harness, T0_MS, caps, conflict_code, lease, new_task, nonzero, registration, request, request_for,
};
use serde_json::json;
use tokio::sync::broadcast;

macro_rules! conformance {
    ($store:ident, $backend:expr) => {
        mod $store {
            use std::sync::Arc;

            use aragora_cp_tests::store_harness::{Harness, StoreBackend};

            fn backend() -> Arc<dyn StoreBackend> {
                Arc::new($backend)
            }

            conformance!(@current_thread [
                matching::claims_take_strict_priority_then_submit_order_within_a_priority,
                matching::with_priority_aging_old_low_priority_work_rises_above_newer_higher_priority_work,
                matching::an_agent_missing_one_required_capability_gets_nothing,
                matching::a_task_requiring_no_capabilities_matches_any_agent,
                matching::a_claims_capabilities_narrow_what_it_matches,
                matching::a_task_addressed_to_an_agent_is_claimed_by_that_agent_alone,
                recovery::a_failed_task_is_requeued_until_its_retries_are_exhausted_then_ends_failed,
                recovery::a_failure_without_requeue_ends_the_task_at_once,
                recovery::a_requeued_task_is_claimed_before_tasks_submitted_after_it_at_the_same_priority,
                recovery::retry_backoff_keeps_a_requeued_task_unclaimable_until_its_available_at,
                recovery::an_attempt_past_its_timeout_is_swept_then_requeued_and_its_old_lease_gets_task_timeout,
                recovery::an_agent_that_stops_heartbeating_goes_offline_and_its_task_is_claimable_by_another,
                recovery::a_lost_agents_task_with_no_retries_left_ends_failed_with_agent_lost,
                recovery::unregistering_an_agent_requeues_its_tasks_counting_a_retry,
                agents::a_registration_with_a_new_session_revokes_the_old_sessions_leases,
                lifecycle::cancelling_a_pending_task_ends_it_at_once_and_it_is_never_claimed,
                lifecycle::cancelling_a_running_task_revokes_its_lease,
                lifecycle::cancelling_a_cancelled_task_is_ok_but_a_finished_task_cannot_be_cancelled,
                idempotency::an_idempotent_submit_replays_the_first_task_and_creates_no_second,
                idempotency::an_idempotency_key_reused_with_a_different_body_is_refused,
                idempotency::idempotency_keys_are_scoped_by_submitter,
                idempotency::an_idempotency_key_is_forgotten_after_its_ttl,
                idempotency::a_batch_submit_is_all_or_nothing,
                idempotency::a_key_repeated_within_one_batch_is_a_replay_or_a_conflict,
                lifecycle::a_completion_on_the_current_lease_is_idempotent_and_a_different_outcome_conflicts,
                lifecycle::a_stale_lease_from_an_earlier_attempt_is_refused,
                lifecycle::an_agent_fence_works_for_the_holder_only,
                lifecycle::an_unfenced_completion_applies_to_the_current_attempt_and_is_recorded,
                lifecycle::every_grant_gets_a_fresh_128_bit_lease_and_the_next_attempt_number,
                lifecycle::start_progress_and_a_listing_heartbeat_move_a_claimed_task_to_running,
                routing::a_waiter_token_routes_a_task_to_its_agent_once,
                routing::a_waiter_token_dies_when_its_claims_block_ends,
                routing::assign_refuses_a_task_no_longer_pending_or_an_agent_no_longer_eligible,
                routing::releasing_an_undelivered_grant_puts_the_task_back_at_its_place_without_counting_a_retry,
                routing::a_heartbeat_omitting_an_older_lease_releases_it_but_keeps_a_younger_one,
                recovery::manual_retry_restarts_failed_timed_out_and_cancelled_tasks_with_retries_reset,
                recovery::manual_retry_of_a_task_that_is_not_finished_or_has_completed_is_refused,
                agents::paused_draining_and_failed_agents_get_nothing_until_they_are_eligible_again,
                agents::capacity_and_the_starting_or_offline_status_do_not_refuse_a_claim,
                agents::an_agents_status_and_in_flight_follow_its_leases,
                agents::an_agent_that_reports_itself_busy_is_ready_again_at_its_next_sign_of_life,
                matching::a_submit_creating_a_signature_past_max_signatures_is_refused,
                matching::submits_past_max_pending_tasks_are_refused_and_change_nothing,
                matching::claim_cost_is_flat_in_the_backlog,
                records::counters_match_the_tasks_and_agents_after_a_mixed_sequence,
                records::every_transition_emits_its_event_to_subscribers_and_the_log,
                records::a_transition_that_changes_nothing_emits_no_event,
                records::next_deadline_is_the_earliest_lease_heartbeat_or_backoff_deadline,
                matching::peek_and_claim_if_let_a_dispatch_policy_skip_a_task_that_keeps_its_place,
                records::list_tasks_pages_newest_first_and_filters,
                records::list_agents_filters_by_capability_and_availability,
                records::agents_and_their_health_are_listed_by_id,
                records::operations_on_unknown_tasks_and_agents_are_not_found,
                agents::agent_failures_over_two_tasks_open_the_breaker_and_a_half_open_trial_closes_it,
                agents::task_kind_failures_never_open_a_breaker,
                recovery::a_repeated_fail_that_requeued_answers_the_same_task_and_a_different_outcome_conflicts,
                routing::a_withdrawn_token_whose_task_was_cancelled_since_returns_nothing,
                routing::a_new_session_drops_the_old_sessions_waiters,
                routing::a_claim_that_finds_nothing_registers_its_wait_in_the_same_step,
                routing::an_offer_lists_the_longest_waiting_first_agents_at_capacity_last_and_no_refused_agent,
                routing::an_offers_numbers_follow_every_change_to_the_agent,
                routing::assign_falls_back_to_any_waiting_claim_when_the_choices_cannot_take_the_task,
                routing::an_offer_rechecked_before_routing_never_loses_a_claim_that_can_still_take_the_task,
                routing::work_made_claimable_after_its_backoff_is_answered_for_routing,
                agents::every_store_judges_eligibility_by_the_model_rule,
                agents::keep_alive_keeps_the_agent_alive_without_consuming_revocations,
                lifecycle::complete_and_claim_finishes_one_task_and_grants_the_next_in_one_step,
                lifecycle::complete_batch_answers_each_outcome_on_its_own,
                records::housekeeping_removes_old_terminal_tasks_and_long_offline_agents_and_keeps_the_rest,
                records::an_agent_offline_by_its_own_word_and_removed_for_retention_leaves_the_sweep_sound,
                records::a_bounded_housekeeping_removes_the_longest_offline_agents_first,
                agents::failures_of_a_single_task_never_open_a_breaker,
                agents::a_failed_half_open_trial_opens_the_breaker_again,
                agents::an_unhealthy_verdict_fails_the_agent_until_a_healthy_one,
                records::plugin_changes_keep_versions_bytes_history_and_emit_events,
                records::a_candidate_is_staged_promoted_or_rolled_back_in_one_step,
                records::decisions_are_kept_in_order_by_task_and_trimmed_by_age,
                records::violations_get_fleet_ids_events_and_are_listed_newest_first,
                records::a_reviewer_changes_a_violations_status_and_note_in_place,
                matching::prioritizing_a_pending_task_moves_it_to_its_submit_order_place_in_the_new_level,
                matching::queue_figures_count_ready_work_per_signature_the_oldest_wait_and_claim_waits,
                records::schedules_are_kept_listed_due_and_advanced_by_compare_and_set,
                records::audit_entries_append_by_compare_and_set_and_retention_leaves_a_signed_checkpoint,
                records::notification_deliveries_are_made_by_compare_and_set_leased_once_and_retried_or_dead_lettered,
            ]);

            conformance!(@multi_thread [
                concurrency::each_of_1000_tasks_is_claimed_exactly_once_by_8_racing_agents,
                concurrency::events_reach_subscribers_in_log_order_with_unique_ids_while_transitions_race_the_clock,
            ]);
        }
    };
    (@current_thread [$($topic:ident :: $test:ident),* $(,)?]) => {
        $(
            #[tokio::test]
            async fn $test() {
                super::$topic::$test(Harness::open(backend()).await).await
            }
        )*
    };
    (@multi_thread [$($topic:ident :: $test:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$topic::$test(Harness::open(backend()).await).await
            }
        )*
    };
}

conformance!(memory, aragora_cp_tests::store_harness::MemoryBackend);
conformance!(redis, aragora_cp_tests::store_harness::RedisBackend);
conformance!(redis_cluster, aragora_cp_tests::store_harness::RedisClusterBackend);

mod agents;
mod concurrency;
mod idempotency;
mod lifecycle;
mod matching;
mod records;
mod recovery;
mod routing;

// ---------------------------------------------------------------------------------------------------------------
// Helpers shared by the topics

pub(super) fn fail(error: &str, requeue: bool) -> FailRequest {
    FailRequest { error: error.into(), requeue, kind: FailKind::Task }
}

pub(super) fn with_retries(task_type: &str, max_retries: u32) -> SubmitRequest {
    SubmitRequest { max_retries: Some(max_retries), ..request(task_type) }
}

/// Events received since the last call, without waiting (every transition publishes before it returns).
pub(super) fn received(rx: &mut broadcast::Receiver<Arc<EventRecord>>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => events.push(event.to_event()),
            Err(broadcast::error::TryRecvError::Empty) => return events,
            Err(other) => panic!("event subscription broke: {other:?}"),
        }
    }
}

/// The kinds of the events about `task_id`, in order.
pub(super) fn kinds_for(events: &[Event], task_id: &TaskId) -> Vec<EventKind> {
    events.iter().filter(|e| e.task_id.as_deref() == Some(task_id.as_str())).map(|e| e.kind).collect()
}

/// The kinds of the events, without agent status changes (those follow capacity and are checked apart).
pub(super) fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).filter(|k| *k != EventKind::AgentStatusChanged).collect()
}

/// The first event of a kind.
pub(super) fn of_kind(events: &[Event], kind: EventKind) -> &Event {
    events.iter().find(|e| e.kind == kind).unwrap_or_else(|| panic!("no {kind:?} among {events:#?}"))
}

/// An event id as (ms, seq).
pub(super) fn event_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("event id {id} is not <ms>-<seq>"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

pub(super) async fn all_events(h: &Harness) -> Vec<Event> {
    h.store.events_after(None, 1_000_000).await.expect("events_after").expect("the log starts at its oldest event")
}

pub(super) fn claim_request(agent_id: &str, capabilities: &[&str], session: Option<&str>) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent_id.into(),
        capabilities: Some(caps(capabilities)),
        max_tasks: 1,
        session_id: session.map(str::to_string),
    }
}

/// The block of the claims behind the waiters of these tests: longer than any of them runs.
pub(super) const BLOCK: Duration = Duration::from_secs(600);

pub(super) fn waiter(token: &str, agent_id: &str, capabilities: &[&str]) -> Waiter {
    Waiter { token: token.into(), agent_id: agent_id.into(), capabilities: caps(capabilities) }
}

pub(super) fn keyed(key: &str, payload: serde_json::Value) -> SubmitRequest {
    SubmitRequest { idempotency_key: Some(key.into()), payload: Some(payload.into()), ..request("keyed") }
}

pub(super) fn looks_like_rfc3339(time: &str) -> bool {
    time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T'
}

/// Without requeue, so each failure is on a different task (a requeued task comes back first, and failures of one
/// task alone never open a breaker: see the next tests).
pub(super) fn agent_failure(error: &str) -> FailRequest {
    FailRequest { error: error.into(), requeue: false, kind: FailKind::Agent }
}
