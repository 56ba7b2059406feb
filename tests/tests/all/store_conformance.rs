//! The store conformance suite: the scheduling rules of DESIGN §4 (and the store duties of §6) as the `Store` trait
//! exposes them, run against every store implementation.
//!
//! Each test is an `async fn name(h: Harness)` below; the `conformance!` macro expands every one of them into a
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
    AgentStatus, Event, EventKind, FailKind, HeartbeatRequest, Priority, SubmitRequest, TaskId, TaskStatus,
};
use aragora_cp::store::{
    AgentFilter, AgentRegistration, ClaimRequest, FailRequest, Fence, RevokeReason, Revoked, StoreError, TaskFilter,
    Waiter, Withdrawn,
};
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
                claims_take_strict_priority_then_submit_order_within_a_priority,
                with_priority_aging_old_low_priority_work_rises_above_newer_higher_priority_work,
                an_agent_missing_one_required_capability_gets_nothing,
                a_task_requiring_no_capabilities_matches_any_agent,
                a_claims_capabilities_narrow_what_it_matches,
                a_failed_task_is_requeued_until_its_retries_are_exhausted_then_ends_failed,
                a_failure_without_requeue_ends_the_task_at_once,
                a_requeued_task_is_claimed_before_tasks_submitted_after_it_at_the_same_priority,
                retry_backoff_keeps_a_requeued_task_unclaimable_until_its_available_at,
                an_attempt_past_its_timeout_is_swept_then_requeued_and_its_old_lease_gets_task_timeout,
                an_agent_that_stops_heartbeating_goes_offline_and_its_task_is_claimable_by_another,
                a_lost_agents_task_with_no_retries_left_ends_failed_with_agent_lost,
                unregistering_an_agent_requeues_its_tasks_counting_a_retry,
                a_registration_with_a_new_session_revokes_the_old_sessions_leases,
                cancelling_a_pending_task_ends_it_at_once_and_it_is_never_claimed,
                cancelling_a_running_task_revokes_its_lease,
                cancelling_a_cancelled_task_is_ok_but_a_finished_task_cannot_be_cancelled,
                an_idempotent_submit_replays_the_first_task_and_creates_no_second,
                an_idempotency_key_reused_with_a_different_body_is_refused,
                idempotency_keys_are_scoped_by_submitter,
                an_idempotency_key_is_forgotten_after_its_ttl,
                a_batch_submit_is_all_or_nothing,
                a_key_repeated_within_one_batch_is_a_replay_or_a_conflict,
                a_completion_on_the_current_lease_is_idempotent_and_a_different_outcome_conflicts,
                a_stale_lease_from_an_earlier_attempt_is_refused,
                an_agent_fence_works_for_the_holder_only,
                an_unfenced_completion_applies_to_the_current_attempt_and_is_recorded,
                every_grant_gets_a_fresh_128_bit_lease_and_the_next_attempt_number,
                start_progress_and_a_listing_heartbeat_move_a_claimed_task_to_running,
                a_waiter_token_routes_a_task_to_its_agent_once,
                a_waiter_token_dies_when_its_claims_block_ends,
                assign_refuses_a_task_no_longer_pending_or_an_agent_no_longer_eligible,
                releasing_an_undelivered_grant_puts_the_task_back_at_its_place_without_counting_a_retry,
                a_heartbeat_omitting_an_older_lease_releases_it_but_keeps_a_younger_one,
                manual_retry_restarts_failed_timed_out_and_cancelled_tasks_with_retries_reset,
                manual_retry_of_a_task_that_is_not_finished_or_has_completed_is_refused,
                paused_draining_and_failed_agents_get_nothing_until_they_are_eligible_again,
                capacity_and_the_starting_or_offline_status_do_not_refuse_a_claim,
                an_agents_status_and_in_flight_follow_its_leases,
                a_submit_creating_a_signature_past_max_signatures_is_refused,
                claim_cost_is_flat_in_the_backlog,
                counters_match_the_tasks_and_agents_after_a_mixed_sequence,
                every_transition_emits_its_event_to_subscribers_and_the_log,
                a_transition_that_changes_nothing_emits_no_event,
                next_deadline_is_the_earliest_lease_heartbeat_or_backoff_deadline,
                peek_and_claim_if_let_a_dispatch_policy_skip_a_task_that_keeps_its_place,
                list_tasks_pages_newest_first_and_filters,
                list_agents_filters_by_capability_and_availability,
                operations_on_unknown_tasks_and_agents_are_not_found,
                agent_failures_over_two_tasks_open_the_breaker_and_a_half_open_trial_closes_it,
                task_kind_failures_never_open_a_breaker,
                a_repeated_fail_that_requeued_answers_the_same_task_and_a_different_outcome_conflicts,
                a_withdrawn_token_whose_task_was_cancelled_since_returns_nothing,
                a_new_session_drops_the_old_sessions_waiters,
                keep_alive_keeps_the_agent_alive_without_consuming_revocations,
                complete_and_claim_finishes_one_task_and_grants_the_next_in_one_step,
                complete_batch_answers_each_outcome_on_its_own,
                housekeeping_removes_old_terminal_tasks_and_long_offline_agents_and_keeps_the_rest,
                failures_of_a_single_task_never_open_a_breaker,
                a_failed_half_open_trial_opens_the_breaker_again,
                an_unhealthy_verdict_fails_the_agent_until_a_healthy_one,
                plugin_changes_keep_versions_bytes_history_and_emit_events,
                violations_get_fleet_ids_events_and_are_listed_newest_first,
            ]);

            conformance!(@multi_thread [
                each_of_1000_tasks_is_claimed_exactly_once_by_8_racing_agents,
                events_reach_subscribers_in_log_order_with_unique_ids_while_transitions_race_the_clock,
            ]);
        }
    };
    (@current_thread [$($test:ident),* $(,)?]) => {
        $(
            #[tokio::test]
            async fn $test() {
                super::$test(Harness::open(backend()).await).await
            }
        )*
    };
    (@multi_thread [$($test:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(Harness::open(backend()).await).await
            }
        )*
    };
}

conformance!(memory, aragora_cp_tests::store_harness::MemoryBackend);
conformance!(redis, aragora_cp_tests::store_harness::RedisBackend);
conformance!(redis_cluster, aragora_cp_tests::store_harness::RedisClusterBackend);

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn fail(error: &str, requeue: bool) -> FailRequest {
    FailRequest { error: error.into(), requeue, kind: FailKind::Task }
}

fn with_retries(task_type: &str, max_retries: u32) -> SubmitRequest {
    SubmitRequest { max_retries: Some(max_retries), ..request(task_type) }
}

/// Events received since the last call, without waiting (every transition publishes before it returns).
fn received(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => events.push(event),
            Err(broadcast::error::TryRecvError::Empty) => return events,
            Err(other) => panic!("event subscription broke: {other:?}"),
        }
    }
}

/// The kinds of the events about `task_id`, in order.
fn kinds_for(events: &[Event], task_id: &TaskId) -> Vec<EventKind> {
    events.iter().filter(|e| e.task_id.as_deref() == Some(task_id.as_str())).map(|e| e.kind).collect()
}

/// The kinds of the events, without agent status changes (those follow capacity and are checked apart).
fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).filter(|k| *k != EventKind::AgentStatusChanged).collect()
}

/// The first event of a kind.
fn of_kind(events: &[Event], kind: EventKind) -> &Event {
    events.iter().find(|e| e.kind == kind).unwrap_or_else(|| panic!("no {kind:?} among {events:#?}"))
}

/// An event id as (ms, seq).
fn event_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("event id {id} is not <ms>-<seq>"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

async fn all_events(h: &Harness) -> Vec<Event> {
    h.store.events_after(None, 1_000_000).await.expect("events_after").expect("the log starts at its oldest event")
}

fn claim_request(agent_id: &str, capabilities: &[&str], session: Option<&str>) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent_id.into(),
        capabilities: caps(capabilities),
        max_tasks: 1,
        session_id: session.map(str::to_string),
    }
}

/// The block of the claims behind the waiters of these tests: longer than any of them runs.
const BLOCK: Duration = Duration::from_secs(600);

fn waiter(token: &str, agent_id: &str, capabilities: &[&str]) -> Waiter {
    Waiter { token: token.into(), agent_id: agent_id.into(), capabilities: caps(capabilities) }
}

// ---------------------------------------------------------------------------------------------------------------
// Exactly-once claims under concurrency

async fn each_of_1000_tasks_is_claimed_exactly_once_by_8_racing_agents(h: Harness) {
    const TASKS: usize = 1_000;
    const AGENTS: usize = 8;
    let mut submitted = HashSet::new();
    for i in 0..TASKS {
        let required: &[&str] = if i % 2 == 0 { &[] } else { &["code"] };
        submitted.insert(h.submit(request_for("race", Priority::ALL[i % 4], required)).await);
    }
    for a in 0..AGENTS {
        h.register(&format!("racer-{a}"), &["code"]).await;
    }
    let claimers: Vec<_> = (0..AGENTS)
        .map(|a| {
            let h = h.clone();
            tokio::spawn(async move {
                let agent = format!("racer-{a}");
                let mut mine = Vec::new();
                loop {
                    // Batches of 1 to 3: batch claims race too.
                    let granted = h.claim_with(&agent, caps(&["code"]), 1 + a % 3).await;
                    if granted.is_empty() {
                        // No requeues happen here, so an empty claim means the backlog is gone.
                        return mine;
                    }
                    for task in granted {
                        assert_eq!(task.assigned_agent.as_deref(), Some(agent.as_str()));
                        assert_eq!(task.status, TaskStatus::Claimed);
                        h.complete(&task, json!({"by": agent})).await;
                        mine.push(task.task_id);
                    }
                }
            })
        })
        .collect();
    let mut claimed_by: HashMap<TaskId, String> = HashMap::new();
    let mut total = 0;
    for (a, claimer) in claimers.into_iter().enumerate() {
        for task_id in claimer.await.expect("claimer finished") {
            total += 1;
            if let Some(first) = claimed_by.insert(task_id.clone(), format!("racer-{a}")) {
                panic!("task {task_id} was claimed by {first} and by racer-{a}");
            }
        }
    }
    assert_eq!(total, TASKS, "claims handed out");
    assert_eq!(claimed_by.keys().cloned().collect::<HashSet<_>>(), submitted, "every task claimed, none lost");
    for (task_id, agent) in &claimed_by {
        let task = h.task(task_id).await;
        assert_eq!(task.status, TaskStatus::Completed, "{task_id}");
        assert_eq!(task.attempt, 1, "{task_id} was granted once");
        assert_eq!(task.result, Some(json!({"by": agent})));
        assert_eq!(task.lease_id, None);
    }
    let mut completed_by_agents = 0;
    for a in 0..AGENTS {
        let agent = h.agent(&format!("racer-{a}")).await;
        assert_eq!(agent.in_flight, 0, "{} holds nothing at the end", agent.agent_id);
        assert!(agent.current_task_ids.is_empty());
        completed_by_agents += agent.tasks_completed;
    }
    assert_eq!(completed_by_agents, TASKS as u64);
    let stats = h.stats().await;
    assert_eq!(nonzero(&stats.tasks_by_status), BTreeMap::from([("completed".to_string(), TASKS as u64)]));
    let claims: Vec<_> = all_events(&h).await.into_iter().filter(|e| e.kind == EventKind::TaskClaimed).collect();
    assert_eq!(claims.len(), TASKS, "one task_claimed event per task");
}

async fn events_reach_subscribers_in_log_order_with_unique_ids_while_transitions_race_the_clock(h: Harness) {
    const WORKERS: usize = 8;
    const ROUNDS: usize = 60;
    let mut rx = h.store.subscribe();
    for w in 0..WORKERS {
        h.register(&format!("worker-{w}"), &[&format!("lane-{w}")]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                h.advance(1).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let h = h.clone();
            tokio::spawn(async move {
                let (agent, lane) = (format!("worker-{w}"), format!("lane-{w}"));
                for _ in 0..ROUNDS {
                    h.submit(request_for("lane", Priority::Normal, &[&lane])).await;
                    let task = h.claim(&agent).await.expect("the worker's own lane has its task");
                    h.complete(&task, json!({})).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker finished");
    }
    stop.store(true, Ordering::SeqCst);
    mover.await.expect("clock mover finished");

    let log = all_events(&h).await;
    let seen = received(&mut rx);
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert!(log.len() >= WORKERS * ROUNDS * 3, "{} events logged", log.len());
    let unique: HashSet<_> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique.len(), log.len(), "event ids are unique");
    for pair in log.windows(2) {
        assert!(
            event_order(&pair[0].id) < event_order(&pair[1].id),
            "event ids increase along the log: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
    let (seen, log) = (ids(&seen), ids(&log));
    if let Some(at) = (0..seen.len().max(log.len())).find(|&i| seen.get(i) != log.get(i)) {
        let window = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
        panic!(
            "a subscriber sees the events in log order; first difference at {at}: received {:?}, logged {:?}",
            window(&seen),
            window(&log)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Matching and order

async fn claims_take_strict_priority_then_submit_order_within_a_priority(h: Harness) {
    use Priority::*;
    h.register("worker", &["code", "debate"]).await;
    // Spread over several signatures: order holds across them, not only within one.
    let plan: [(Priority, &[&str]); 8] = [
        (Low, &[]),
        (Normal, &["code"]),
        (Critical, &["debate"]),
        (High, &[]),
        (Low, &["code", "debate"]),
        (Critical, &[]),
        (Normal, &["debate"]),
        (High, &["code"]),
    ];
    let mut submitted = Vec::new();
    for (priority, required) in plan {
        submitted.push((priority, h.submit(request_for("order", priority, required)).await));
    }
    let mut expected = submitted.clone();
    expected.sort_by_key(|(priority, _)| *priority); // stable: submit order within a priority
    let expected: Vec<TaskId> = expected.into_iter().map(|(_, id)| id).collect();

    let peeked = h.store.peek(&caps(&["code", "debate"]), 8).await.expect("peek");
    assert_eq!(peeked.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), expected, "peek shows claim order");
    assert!(peeked.iter().all(|t| t.status == TaskStatus::Pending), "peek takes nothing");
    assert_eq!(h.drain("worker").await, expected);
}

async fn with_priority_aging_old_low_priority_work_rises_above_newer_higher_priority_work(h: Harness) {
    use Priority::*;
    // Without aging: strict priority, however old the low-priority task is.
    h.register("worker", &[]).await;
    let old_low = h.submit(request_for("aging", Low, &[])).await;
    h.advance(3_600_000).await;
    let new_high = h.submit(request_for("aging", High, &[])).await;
    assert_eq!(h.drain("worker").await, vec![new_high, old_low]);

    // With aging (score = enqueue_ms + priority·aging_ms): a level per period.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let old_low = h.submit(request_for("aging", Low, &[])).await; // 0 + 3,000
    h.advance(2_500).await;
    let high = h.submit(request_for("aging", High, &[])).await; // 2,500 + 1,000
    let normal = h.submit(request_for("aging", Normal, &[])).await; // 2,500 + 2,000
    let critical = h.submit(request_for("aging", Critical, &[])).await; // 2,500 + 0
    let critical_later = h.submit(request_for("aging", Critical, &[])).await; // same score: FIFO by sequence
    let new_low = h.submit(request_for("aging", Low, &[])).await; // 2,500 + 3,000
    assert_eq!(h.drain("worker").await, vec![critical, critical_later, old_low, high, normal, new_low]);

    // Exactly one period older at one level lower ties, and the tie goes to the older task.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let low = h.submit(request_for("aging", Low, &[])).await; // 0 + 3,000
    h.advance(1_000).await;
    let normal = h.submit(request_for("aging", Normal, &[])).await; // 1,000 + 2,000
    assert_eq!(h.drain("worker").await, vec![low, normal]);

    // A requeued task keeps its aged place.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let first = h.submit(request_for("aging", Low, &[])).await;
    let task = h.claim("worker").await.expect("claims the only task");
    assert_eq!(task.task_id, first);
    h.advance(5_000).await;
    let newer = h.submit(request_for("aging", Normal, &[])).await; // 5,000 + 2,000 > 3,000
    h.store.fail(&first, &lease(&task), &fail("flaky", true)).await.expect("fail");
    assert_eq!(h.drain("worker").await, vec![first, newer]);
}

async fn an_agent_missing_one_required_capability_gets_nothing(h: Harness) {
    h.register("coder", &["code"]).await;
    h.register("debater", &["debate", "judge"]).await;
    h.register("both", &["code", "debate", "extra"]).await;
    let task = h.submit(request_for("pair", Priority::Normal, &["debate", "code"])).await;
    assert!(h.claim("coder").await.is_none(), "holds code, lacks debate");
    assert!(h.claim("debater").await.is_none(), "holds debate, lacks code");
    assert_eq!(h.status(&task).await, TaskStatus::Pending);
    assert!(h.store.peek(&caps(&["code"]), 10).await.expect("peek").is_empty());
    assert_eq!(h.claim("both").await.map(|t| t.task_id), Some(task), "a superset matches");
}

async fn a_task_requiring_no_capabilities_matches_any_agent(h: Harness) {
    h.register("bare", &[]).await;
    h.register("rich", &["code", "audit"]).await;
    let open_a = h.submit(request("open")).await;
    let open_b = h.submit(request("open")).await;
    let coded = h.submit(request_for("coded", Priority::Critical, &["code"])).await;
    assert_eq!(h.claim("bare").await.map(|t| t.task_id), Some(open_a), "skips the critical task it cannot take");
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(coded));
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(open_b));
    // Required capabilities are normalised like the agent's: trimmed, lower-cased.
    let shouted = h.submit(request_for("shouted", Priority::Normal, &["  AUDIT "])).await;
    assert!(h.claim("bare").await.is_none());
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(shouted));
}

async fn a_claims_capabilities_narrow_what_it_matches(h: Harness) {
    h.register("multi", &["code", "debate"]).await;
    let debate = h.submit(request_for("narrow", Priority::Critical, &["debate"])).await;
    let code = h.submit(request_for("narrow", Priority::Normal, &["code"])).await;
    let granted = h.claim_with("multi", caps(&["code"]), 5).await;
    assert_eq!(granted.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![code], "only code work");
    assert!(h.claim_with("multi", caps(&[]), 5).await.is_empty(), "narrowed to nothing: only open tasks");
    assert_eq!(h.status(&debate).await, TaskStatus::Pending);
    assert_eq!(h.claim("multi").await.map(|t| t.task_id), Some(debate));
}

// ---------------------------------------------------------------------------------------------------------------
// Retries

async fn a_failed_task_is_requeued_until_its_retries_are_exhausted_then_ends_failed(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("flaky", 2)).await;
    let mut rx = h.store.subscribe();
    for attempt in 1..=3u32 {
        let task = h.claim("worker").await.unwrap_or_else(|| panic!("attempt {attempt} is claimable"));
        assert_eq!((task.task_id.clone(), task.attempt), (task_id.clone(), attempt));
        let after = h.store.fail(&task_id, &lease(&task), &fail(&format!("boom {attempt}"), true)).await.expect("fail");
        let error = after.last_error.clone().expect("last_error is set");
        assert_eq!((error.code.as_str(), error.message.clone()), ("task_failed", format!("boom {attempt}")));
        assert_eq!(after.lease_id, None, "the lease ends with the attempt");
        if attempt < 3 {
            assert_eq!((after.status, after.retries), (TaskStatus::Pending, attempt), "requeued, retry counted");
            assert_eq!(after.error, None);
        } else {
            assert_eq!((after.status, after.retries), (TaskStatus::Failed, 2), "retries exhausted");
            assert_eq!(after.error.as_deref(), Some("boom 3"));
            assert!(after.completed_at.is_some());
        }
        assert_eq!(h.task(&task_id).await, after, "fail answers the stored task");
    }
    assert!(h.claim("worker").await.is_none(), "a failed task is not claimable");
    assert_eq!(h.agent("worker").await.in_flight, 0);
    use EventKind::*;
    assert_eq!(
        kinds_for(&received(&mut rx), &task_id),
        vec![TaskClaimed, TaskRetried, TaskClaimed, TaskRetried, TaskClaimed, TaskFailed]
    );
}

async fn a_failure_without_requeue_ends_the_task_at_once(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("poison", 3)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&task_id, &lease(&task), &fail("bad input", false)).await.expect("fail");
    assert_eq!((failed.status, failed.retries), (TaskStatus::Failed, 0));
    assert_eq!(failed.error.as_deref(), Some("bad input"));
    assert_eq!(failed.last_error.map(|e| e.message), Some("bad input".into()));
    assert!(h.claim("worker").await.is_none());
    // A task with no retries at all ends failed even when a requeue is asked.
    let once = h.submit(with_retries("once", 0)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&once, &lease(&task), &fail("nope", true)).await.expect("fail");
    assert_eq!((failed.status, failed.retries), (TaskStatus::Failed, 0));
}

async fn a_requeued_task_is_claimed_before_tasks_submitted_after_it_at_the_same_priority(h: Harness) {
    h.register("worker", &[]).await;
    let a = h.submit(request("place")).await;
    let b = h.submit(request("place")).await;
    let task = h.claim("worker").await.expect("claims a");
    assert_eq!(task.task_id, a);
    let c = h.submit(request("place")).await;
    h.store
        .fail(&a, &Fence::Agent("worker".into()), &FailRequest { kind: FailKind::Agent, ..fail("flaky", true) })
        .await
        .expect("fail");
    // Strict priority still comes first.
    let urgent = h.submit(request_for("place", Priority::High, &[])).await;
    assert_eq!(h.drain("worker").await, vec![urgent, a, b, c]);
}

async fn retry_backoff_keeps_a_requeued_task_unclaimable_until_its_available_at(h: Harness) {
    let h = h
        .reopen(|c| {
            c.retry_backoff_base_ms = 1_000;
            c.retry_backoff_max_ms = 60_000;
        })
        .await;
    h.register("worker", &[]).await;
    let a = h.submit(with_retries("backoff", 5)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed_at = h.store.now_ms();
    let requeued = h.store.fail(&a, &lease(&task), &fail("flaky", true)).await.expect("fail");
    assert_eq!(requeued.status, TaskStatus::Pending);
    assert!(requeued.available_at.is_some(), "a backed-off task carries available_at");
    let deadline = h.store.next_deadline().await.expect("next_deadline").expect("a deadline");
    assert!(deadline <= failed_at + 1_000, "the sweeper wakes for the backoff");
    let b = h.submit(request("backoff")).await;
    // Backoff 1 (base · 2^0) with jitter: between 0.5 and 1 s.
    h.advance(499).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(b.clone()), "a is still backing off");
    h.advance(501).await;
    let task = h.claim("worker").await.expect("a is due");
    assert_eq!((task.task_id.clone(), task.attempt, task.available_at.clone()), (a.clone(), 2, None));
    // The second backoff doubles: between 1 and 2 s.
    h.store.fail(&a, &lease(&task), &fail("flaky", true)).await.expect("fail");
    h.advance(999).await;
    assert!(h.claim("worker").await.is_none());
    h.advance(1_001).await;
    assert_eq!(h.claim("worker").await.map(|t| (t.task_id, t.attempt)), Some((a, 3)));
}

// ---------------------------------------------------------------------------------------------------------------
// Timeouts and agent loss

async fn an_attempt_past_its_timeout_is_swept_then_requeued_and_its_old_lease_gets_task_timeout(h: Harness) {
    h.register("slow", &[]).await;
    h.register("next", &[]).await;
    let task_id = h.submit(SubmitRequest { timeout_seconds: Some(10), max_retries: Some(1), ..request("slow") }).await;
    let first = h.claim("slow").await.expect("claimable");
    let mut rx = h.store.subscribe();

    h.advance(9_999).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 0, "not yet due");
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed);
    h.advance(1).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("timeout".into()));
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskTimeout, EventKind::TaskRetried]);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&first), json!({}).into()).await), "task_timeout");
    let beat = h.heartbeat("slow").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: task_id.clone(), reason: RevokeReason::Timeout }]);
    assert!(h.heartbeat("slow").await.revoked.is_empty(), "a revocation is reported once");
    assert_eq!(h.agent("slow").await.in_flight, 0);

    // The next attempt has its own clock, counted from its claim; with no retries left it ends `timeout`.
    let second = h.claim("next").await.expect("requeued task is claimable");
    assert_eq!((second.task_id.clone(), second.attempt), (task_id.clone(), 2));
    h.advance(9_999).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 0);
    h.advance(1).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Timeout, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("timeout".into()));
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskClaimed, EventKind::TaskTimeout]);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&second), json!({}).into()).await), "task_timeout");
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&first), json!({}).into()).await), "task_timeout");
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 0, "a sweep is idempotent");
    assert!(h.claim("next").await.is_none());
}

async fn an_agent_that_stops_heartbeating_goes_offline_and_its_task_is_claimable_by_another(h: Harness) {
    let timeout = h.config.heartbeat_timeout_ms;
    h.register("dead", &[]).await;
    h.register("live", &[]).await;
    let task_id = h.submit(with_retries("orphan", 3)).await;
    let held = h.claim("dead").await.expect("claimable");
    let mut rx = h.store.subscribe();

    h.advance(timeout - 1).await;
    h.heartbeat("live").await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 0, "silent for less than the timeout");
    assert_ne!(h.agent("dead").await.status, AgentStatus::Offline);
    h.advance(1_001).await;
    h.heartbeat("live").await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 1, "only the silent agent");

    let dead = h.agent("dead").await;
    assert_eq!((dead.status, dead.in_flight), (AgentStatus::Offline, 0));
    assert!(dead.current_task_ids.is_empty());
    assert_eq!(h.agent("live").await.status, AgentStatus::Ready);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    let events = received(&mut rx);
    assert!(events.iter().any(|e| e.kind == EventKind::AgentOffline && e.agent_id.as_deref() == Some("dead")));
    assert_eq!(kinds_for(&events, &task_id), vec![EventKind::TaskRetried]);

    let taken = h.claim("live").await.expect("another agent takes it");
    assert_eq!((taken.task_id.clone(), taken.attempt), (task_id.clone(), 2));
    assert_eq!(
        conflict_code(h.store.complete(&task_id, &lease(&held), json!({"late": true}).into()).await),
        "lease_lost"
    );
    assert_eq!(h.complete(&taken, json!({"on": "time"})).await.result, Some(json!({"on": "time"})));
    // The dead agent comes back: it is alive again and learns what it lost.
    let beat = h.heartbeat("dead").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id, reason: RevokeReason::Reassigned }]);
    assert_ne!(beat.status, AgentStatus::Offline);
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 0);
}

async fn a_lost_agents_task_with_no_retries_left_ends_failed_with_agent_lost(h: Harness) {
    h.register("dead", &[]).await;
    let task_id = h.submit(with_retries("fragile", 0)).await;
    h.claim("dead").await.expect("claimable");
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Failed, 0));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
}

async fn unregistering_an_agent_requeues_its_tasks_counting_a_retry(h: Harness) {
    h.register("leaving", &[]).await;
    h.register("staying", &[]).await;
    let task_id = h.submit(with_retries("handover", 3)).await;
    let held = h.claim("leaving").await.expect("claimable");
    h.store.register_waiter(waiter("tok-leaving", "leaving", &[]), BLOCK).await.expect("waiter");
    h.store.unregister("leaving").await.expect("unregister");
    assert!(h.store.get_agent("leaving").await.expect("get_agent").is_none());
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 1));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    assert!(h.store.waiters_for(&caps(&[]), 10).await.expect("waiters").is_empty(), "its waiters went with it");
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "lease_lost");
    let claim = h.store.claim(&claim_request("leaving", &[], None)).await;
    assert!(matches!(claim, Err(StoreError::AgentNotFound(_))), "{claim:?}");
    assert_eq!(h.claim("staying").await.map(|t| t.task_id), Some(task_id));
    let again = h.store.unregister("leaving").await;
    assert!(matches!(again, Err(StoreError::AgentNotFound(_))), "{again:?}");
}

async fn a_registration_with_a_new_session_revokes_the_old_sessions_leases(h: Harness) {
    let with_session =
        |session: &str| AgentRegistration { session_id: Some(session.into()), ..registration("phoenix", &[]) };
    assert_eq!(h.register_with(with_session("session-1")).await.session_id, "session-1");
    let task_id = h.submit(with_retries("session", 3)).await;
    let held = h.store.claim(&claim_request("phoenix", &[], Some("session-1"))).await.expect("claim").pop();
    let held = held.expect("claimable");
    let mut rx = h.store.subscribe();

    // Re-registering without a session (an existing client) or with the live one keeps the leases.
    let same = h.store.register(registration("phoenix", &[])).await.expect("register");
    assert!(!same.restarted && !same.created);
    let same = h.store.register(with_session("session-1")).await.expect("register");
    assert!(!same.restarted);
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed);

    let restarted = h.store.register(with_session("session-2")).await.expect("register");
    assert!(restarted.restarted && !restarted.created);
    assert_eq!((restarted.agent.session_id.as_str(), restarted.agent.in_flight), ("session-2", 0));
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 1), "agent loss counts a retry");
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    assert!(received(&mut rx).iter().any(|e| e.kind == EventKind::AgentRestarted));
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "lease_lost");

    let stale = h.store.claim(&claim_request("phoenix", &[], Some("session-1"))).await;
    assert_eq!(conflict_code(stale), "session_replaced");
    let stale_beat = HeartbeatRequest { session_id: Some("session-1".into()), ..HeartbeatRequest::default() };
    assert_eq!(conflict_code(h.store.heartbeat("phoenix", &stale_beat).await), "session_replaced");
    assert_eq!(h.status(&task_id).await, TaskStatus::Pending, "the refused claim took nothing");
    let fresh = h.store.claim(&claim_request("phoenix", &[], Some("session-2"))).await.expect("claim");
    assert_eq!(fresh.into_iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![task_id]);
}

// ---------------------------------------------------------------------------------------------------------------
// Cancel

async fn cancelling_a_pending_task_ends_it_at_once_and_it_is_never_claimed(h: Harness) {
    h.register("worker", &[]).await;
    let doomed = h.submit(request("doomed")).await;
    let kept = h.submit(request("kept")).await;
    let cancelled = h.store.cancel(&doomed).await.expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(h.drain("worker").await, vec![kept]);
    assert_eq!(h.status(&doomed).await, TaskStatus::Cancelled);
    assert!(h.store.peek(&caps(&[]), 10).await.expect("peek").is_empty());
}

async fn cancelling_a_running_task_revokes_its_lease(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(request("long")).await;
    let held = h.claim("worker").await.expect("claimable");
    h.store.start(&task_id, &lease(&held)).await.expect("start");
    let cancelled = h.store.cancel(&task_id).await.expect("cancel");
    assert_eq!((cancelled.status, cancelled.lease_id.clone()), (TaskStatus::Cancelled, None));
    let agent = h.agent("worker").await;
    assert_eq!((agent.in_flight, agent.current_task_ids.len()), (0, 0));
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "task_cancelled");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&held), &fail("x", true)).await), "task_cancelled");
    assert_eq!(conflict_code(h.store.start(&task_id, &lease(&held)).await), "task_cancelled");
    let progress = h.store.progress(&task_id, &lease(&held), json!({"pct": 50})).await;
    assert_eq!(conflict_code(progress), "task_cancelled");
    let beat = h.heartbeat("worker").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: task_id.clone(), reason: RevokeReason::Cancelled }]);
    // A claimed (not yet started) task is cancelled the same way.
    let claimed_id = h.submit(request("short")).await;
    let claimed = h.claim("worker").await.expect("claimable");
    h.store.cancel(&claimed_id).await.expect("cancel");
    assert_eq!(
        conflict_code(h.store.complete(&claimed_id, &lease(&claimed), json!({}).into()).await),
        "task_cancelled"
    );
    assert_eq!(h.status(&task_id).await, TaskStatus::Cancelled);
}

async fn cancelling_a_cancelled_task_is_ok_but_a_finished_task_cannot_be_cancelled(h: Harness) {
    h.register("worker", &[]).await;
    let cancelled = h.submit(request("twice")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    assert_eq!(h.store.cancel(&cancelled).await.expect("cancel again").status, TaskStatus::Cancelled);

    let completed = h.submit(request("done")).await;
    let task = h.claim("worker").await.expect("claimable");
    h.complete(&task, json!({"ok": true})).await;
    let failed = h.submit(with_retries("failed", 0)).await;
    let task = h.claim("worker").await.expect("claimable");
    h.store.fail(&failed, &lease(&task), &fail("x", true)).await.expect("fail");
    let timed_out = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("t") }).await;
    h.claim("worker").await.expect("claimable");
    h.advance(1_000).await;
    assert_eq!(h.store.sweep_timeouts(10).await.expect("sweep"), 1);
    for (task_id, status) in
        [(completed, TaskStatus::Completed), (failed, TaskStatus::Failed), (timed_out, TaskStatus::Timeout)]
    {
        assert_eq!(h.status(&task_id).await, status);
        assert_eq!(conflict_code(h.store.cancel(&task_id).await), "invalid_transition", "{status:?}");
        assert_eq!(h.status(&task_id).await, status, "a refused cancel changes nothing");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Idempotent submit

fn keyed(key: &str, payload: serde_json::Value) -> SubmitRequest {
    SubmitRequest { idempotency_key: Some(key.into()), payload: Some(payload), ..request("keyed") }
}

async fn an_idempotent_submit_replays_the_first_task_and_creates_no_second(h: Harness) {
    let first = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 1})))).await.expect("submit");
    assert!(!first.replayed);
    let mut rx = h.store.subscribe();
    let again = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 1})))).await.expect("replay");
    assert_eq!((again.task_id.clone(), again.replayed), (first.task_id.clone(), true));
    assert!(received(&mut rx).is_empty(), "a replay emits nothing");
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&1));
    let page = h.store.list_tasks(&TaskFilter { limit: 100, ..TaskFilter::default() }).await.expect("list");
    assert_eq!(page.tasks.len(), 1, "no second task");
    // Still a replay once the first task has run.
    h.register("worker", &[]).await;
    let task = h.claim("worker").await.expect("claimable");
    h.complete(&task, json!({})).await;
    let later = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 1})))).await.expect("replay");
    assert_eq!((later.task_id, later.replayed), (first.task_id.clone(), true));
    assert_eq!(h.status(&first.task_id).await, TaskStatus::Completed);
}

async fn an_idempotency_key_reused_with_a_different_body_is_refused(h: Harness) {
    let first = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 1})))).await.expect("submit");
    let reused = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 2})))).await;
    assert_eq!(conflict_code(reused), "idempotency_key_reused");
    let other_priority = SubmitRequest { priority: Some(Priority::High), ..keyed("k-1", json!({"n": 1})) };
    assert_eq!(conflict_code(h.store.submit(new_task("alice", other_priority)).await), "idempotency_key_reused");
    let page = h.store.list_tasks(&TaskFilter { limit: 100, ..TaskFilter::default() }).await.expect("list");
    assert_eq!(page.tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![first.task_id]);
}

async fn idempotency_keys_are_scoped_by_submitter(h: Harness) {
    let alice = h.store.submit(new_task("alice", keyed("shared", json!({})))).await.expect("submit");
    let bob = h.store.submit(new_task("bob", keyed("shared", json!({})))).await.expect("submit");
    assert!(!bob.replayed);
    assert_ne!(alice.task_id, bob.task_id);
    assert_eq!(h.task(&bob.task_id).await.submitted_by, "bob");
    let bob_other = h.store.submit(new_task("bob", keyed("shared", json!({"different": true})))).await;
    assert_eq!(conflict_code(bob_other), "idempotency_key_reused");
}

async fn an_idempotency_key_is_forgotten_after_its_ttl(h: Harness) {
    let ttl = h.config.idempotency_ttl_ms;
    let first = h.store.submit(new_task("alice", keyed("k", json!({})))).await.expect("submit");
    h.advance(ttl - 1).await;
    assert!(h.store.submit(new_task("alice", keyed("k", json!({})))).await.expect("replay").replayed);
    h.advance(1).await;
    let fresh = h.store.submit(new_task("alice", keyed("k", json!({"other": 1})))).await.expect("submit");
    assert!(!fresh.replayed);
    assert_ne!(fresh.task_id, first.task_id);
}

async fn a_batch_submit_is_all_or_nothing(h: Harness) {
    h.store.submit(new_task("alice", keyed("taken", json!({"n": 1})))).await.expect("submit");
    let batch = vec![
        new_task("alice", request("batch")),
        new_task("alice", keyed("taken", json!({"n": 2}))),
        new_task("alice", request("batch")),
    ];
    let ids: Vec<TaskId> = batch.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(conflict_code(h.store.submit_batch(batch).await), "idempotency_key_reused");
    for id in &ids {
        assert!(h.store.get_task(id).await.expect("get").is_none(), "nothing of a refused batch exists");
    }
    let batch = vec![
        new_task("alice", request("batch")),
        new_task("alice", keyed("taken", json!({"n": 1}))),
        new_task("alice", request_for("batch", Priority::High, &["code"])),
    ];
    let submitted = h.store.submit_batch(batch).await.expect("batch");
    assert_eq!(submitted.iter().map(|s| s.replayed).collect::<Vec<_>>(), vec![false, true, false]);
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&3));
    h.register("worker", &["code"]).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(submitted[2].task_id.clone()));
}

async fn a_key_repeated_within_one_batch_is_a_replay_or_a_conflict(h: Harness) {
    let batch = vec![
        new_task("alice", keyed("twice", json!({"n": 1}))),
        new_task("alice", keyed("twice", json!({"n": 1}))),
        new_task("bob", keyed("twice", json!({"n": 1}))),
    ];
    let submitted = h.store.submit_batch(batch).await.expect("batch");
    assert_eq!(submitted.iter().map(|s| s.replayed).collect::<Vec<_>>(), vec![false, true, false]);
    assert_eq!(submitted[1].task_id, submitted[0].task_id, "the repeat answers the first task of the batch");
    assert_ne!(submitted[2].task_id, submitted[0].task_id, "another submitter's key is another key");
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&2), "no second task for the repeated key");
    let replay = h.store.submit(new_task("alice", keyed("twice", json!({"n": 1})))).await.expect("replay");
    assert_eq!((replay.task_id, replay.replayed), (submitted[0].task_id.clone(), true));

    let conflicting =
        vec![new_task("alice", keyed("clash", json!({"n": 1}))), new_task("alice", keyed("clash", json!({"n": 2})))];
    let first = conflicting[0].task_id.clone();
    assert_eq!(conflict_code(h.store.submit_batch(conflicting).await), "idempotency_key_reused");
    assert!(h.store.get_task(&first).await.expect("get").is_none(), "all or nothing");
}

// ---------------------------------------------------------------------------------------------------------------
// Leases and fencing

async fn a_completion_on_the_current_lease_is_idempotent_and_a_different_outcome_conflicts(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(request("fenced")).await;
    let held = h.claim("worker").await.expect("claimable");
    let mut rx = h.store.subscribe();
    let done = h.store.complete(&task_id, &lease(&held), json!({"answer": 42}).into()).await.expect("complete");
    assert_eq!(
        (done.status, done.result.clone(), done.unfenced),
        (TaskStatus::Completed, Some(json!({"answer": 42})), false)
    );
    assert!(done.completed_at.is_some());
    let again =
        h.store.complete(&task_id, &lease(&held), json!({"answer": 42}).into()).await.expect("same outcome again");
    assert_eq!(again, done, "the stored outcome");
    let other = h.store.complete(&task_id, &lease(&held), json!({"answer": 43}).into()).await;
    assert_eq!(conflict_code(other), "outcome_conflict");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&held), &fail("late", true)).await), "outcome_conflict");
    assert_eq!(h.task(&task_id).await, done, "conflicts change nothing");
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskCompleted], "one completion");
    // The same holds for a terminal failure.
    let failing = h.submit(with_retries("fenced", 0)).await;
    let held = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&failing, &lease(&held), &fail("broken", false)).await.expect("fail");
    assert_eq!(h.store.fail(&failing, &lease(&held), &fail("broken", false)).await.expect("repeat"), failed);
    assert_eq!(conflict_code(h.store.fail(&failing, &lease(&held), &fail("other", false)).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&failing, &lease(&held), json!({}).into()).await), "outcome_conflict");
}

async fn a_stale_lease_from_an_earlier_attempt_is_refused(h: Harness) {
    h.register("first", &[]).await;
    h.register("second", &[]).await;
    let task_id = h.submit(with_retries("twice", 3)).await;
    let one = h.claim("first").await.expect("claimable");
    h.store.fail(&task_id, &lease(&one), &fail("flaky", true)).await.expect("fail");
    // The same lease already failed the task (DESIGN §4: same lease, different outcome).
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&one), json!({}).into()).await), "outcome_conflict");
    let two = h.claim("second").await.expect("claimable again");
    assert_ne!(one.lease_id, two.lease_id);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&one), json!({}).into()).await), "lease_lost");
    assert_eq!(conflict_code(h.store.start(&task_id, &lease(&one)).await), "lease_lost");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&one), &fail("x", false)).await), "lease_lost");
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed, "the stale calls changed nothing");
    let unknown = Fence::Lease("0123456789abcdef0123456789abcdef".into());
    assert_eq!(conflict_code(h.store.complete(&task_id, &unknown, json!({}).into()).await), "lease_lost");
    h.complete(&two, json!({"by": "second"})).await;
    assert_eq!(
        conflict_code(h.store.complete(&task_id, &lease(&one), json!({"by": "second"}).into()).await),
        "lease_lost"
    );
    assert_eq!(h.task(&task_id).await.result, Some(json!({"by": "second"})));
}

async fn an_agent_fence_works_for_the_holder_only(h: Harness) {
    h.register("holder", &[]).await;
    h.register("other", &[]).await;
    let task_id = h.submit(request("agent-fenced")).await;
    h.claim("holder").await.expect("claimable");
    let other = Fence::Agent("other".into());
    let holder = Fence::Agent("holder".into());
    assert_eq!(conflict_code(h.store.start(&task_id, &other).await), "lease_lost");
    assert_eq!(conflict_code(h.store.complete(&task_id, &other, json!({}).into()).await), "lease_lost");
    assert_eq!(h.store.start(&task_id, &holder).await.expect("start").status, TaskStatus::Running);
    let done = h.store.complete(&task_id, &holder, json!({"v": 1}).into()).await.expect("complete");
    assert_eq!((done.status, done.unfenced), (TaskStatus::Completed, false));
    assert_eq!(h.store.complete(&task_id, &holder, json!({"v": 1}).into()).await.expect("repeat"), done);
    assert_eq!(conflict_code(h.store.complete(&task_id, &holder, json!({"v": 2}).into()).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&task_id, &other, json!({"v": 1}).into()).await), "lease_lost");
}

async fn an_unfenced_completion_applies_to_the_current_attempt_and_is_recorded(h: Harness) {
    h.register("worker", &[]).await;
    let pending = h.submit(request("unfenced")).await;
    assert_eq!(conflict_code(h.store.complete(&pending, &Fence::Unfenced, json!({}).into()).await), "lease_lost");
    assert_eq!(h.status(&pending).await, TaskStatus::Pending, "nothing to complete before a grant");
    let held = h.claim("worker").await.expect("claimable");
    let done = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": true}).into()).await.expect("complete");
    assert_eq!((done.status, done.unfenced), (TaskStatus::Completed, true));
    assert_eq!(done.result, Some(json!({"legacy": true})));
    assert_eq!(h.agent("worker").await.in_flight, 0, "the holder's lease ended");
    let again = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": true}).into()).await.expect("repeat");
    assert_eq!(again, done, "an unfenced repeat answers the stored outcome");
    let other = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": false}).into()).await;
    assert_eq!(conflict_code(other), "outcome_conflict");
    assert_eq!(
        conflict_code(h.store.complete(&pending, &lease(&held), json!({"x": 1}).into()).await),
        "outcome_conflict"
    );
    // An unfenced failure applies too.
    let other = h.submit(with_retries("unfenced", 1)).await;
    h.claim("worker").await.expect("claimable");
    let requeued = h.store.fail(&other, &Fence::Unfenced, &fail("legacy", true)).await.expect("fail");
    assert_eq!((requeued.status, requeued.retries), (TaskStatus::Pending, 1));
}

async fn every_grant_gets_a_fresh_128_bit_lease_and_the_next_attempt_number(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("attempts", 5)).await;
    let mut leases = HashSet::new();
    for attempt in 1..=4u32 {
        let task = h.claim("worker").await.expect("claimable");
        assert_eq!(task.attempt, attempt);
        let lease_id = task.lease_id.clone().expect("a lease");
        assert_eq!(lease_id.len(), 32, "128 bits as hex: {lease_id}");
        assert!(lease_id.bytes().all(|b| b.is_ascii_hexdigit()), "{lease_id}");
        assert!(leases.insert(lease_id), "a fresh lease per grant");
        assert_eq!(task.assigned_agent.as_deref(), Some("worker"));
        assert!(task.claimed_at.is_some());
        // Alternate the ways an attempt ends without ending the task.
        if attempt % 2 == 1 {
            h.store.fail(&task_id, &lease(&task), &fail("again", true)).await.expect("fail");
        } else {
            h.store.release(&task_id, task.lease_id.as_deref().expect("lease")).await.expect("release");
        }
    }
    assert_eq!(h.task(&task_id).await.retries, 2, "releases count no retry");
}

async fn start_progress_and_a_listing_heartbeat_move_a_claimed_task_to_running(h: Harness) {
    h.register_with(AgentRegistration { max_concurrent_tasks: 4, ..registration("worker", &[]) }).await;
    let started = h.submit(request("start")).await;
    let reported = h.submit(request("progress")).await;
    let listed = h.submit(request("listed")).await;
    let held: Vec<_> = h.claim_with("worker", caps(&[]), 3).await;
    assert_eq!(held.len(), 3);
    let mut rx = h.store.subscribe();

    let running = h.store.start(&started, &lease(&held[0])).await.expect("start");
    assert_eq!(running.status, TaskStatus::Running);
    assert!(running.started_at.is_some());
    assert_eq!(h.store.start(&started, &lease(&held[0])).await.expect("start again").status, TaskStatus::Running);

    let progressed = h.store.progress(&reported, &lease(&held[1]), json!({"pct": 50})).await.expect("progress");
    assert_eq!((progressed.status, progressed.progress.clone()), (TaskStatus::Running, Some(json!({"pct": 50}))));
    let progressed = h.store.progress(&reported, &lease(&held[1]), json!({"pct": 80})).await.expect("progress");
    assert_eq!(progressed.progress, Some(json!({"pct": 80})));

    let beat = HeartbeatRequest { current_task_ids: Some(vec![listed.clone()]), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &beat).await;
    assert_eq!(h.status(&listed).await, TaskStatus::Running, "a heartbeat listing the task starts it");
    assert_eq!(h.status(&started).await, TaskStatus::Running);
    assert_eq!(h.status(&reported).await, TaskStatus::Running, "young leases are not released");

    let events = received(&mut rx);
    assert_eq!(kinds_for(&events, &started), vec![EventKind::TaskStarted], "started once");
    assert_eq!(
        kinds_for(&events, &reported),
        vec![EventKind::TaskStarted, EventKind::TaskProgress, EventKind::TaskProgress]
    );
    assert_eq!(kinds_for(&events, &listed), vec![EventKind::TaskStarted]);
    assert_eq!(h.complete(&held[0], json!({})).await.status, TaskStatus::Completed, "running completes");
}

// ---------------------------------------------------------------------------------------------------------------
// Waiters, routing and release

async fn a_waiter_token_routes_a_task_to_its_agent_once(h: Harness) {
    h.register("waiting", &["code"]).await;
    h.register("later", &["code", "debate"]).await;
    h.store.register_waiter(waiter("tok-1", "waiting", &["code"]), BLOCK).await.expect("register waiter");
    h.store.register_waiter(waiter("tok-2", "later", &["code", "debate"]), BLOCK).await.expect("register waiter");
    assert_eq!(h.stats().await.waiting_claims, 2);
    let for_code = h.store.waiters_for(&caps(&["code"]), 10).await.expect("waiters");
    assert_eq!(for_code.iter().map(|w| w.token.as_str()).collect::<Vec<_>>(), vec!["tok-1", "tok-2"], "oldest first");
    assert_eq!(for_code[0], waiter("tok-1", "waiting", &["code"]));
    let for_debate = h.store.waiters_for(&caps(&["debate"]), 10).await.expect("waiters");
    assert_eq!(for_debate.iter().map(|w| w.token.as_str()).collect::<Vec<_>>(), vec!["tok-2"]);
    assert_eq!(h.store.waiters_for(&caps(&["code"]), 1).await.expect("waiters").len(), 1, "limit");

    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    let mut rx = h.store.subscribe();
    let granted = h.store.assign(&task_id, "tok-1").await.expect("assign").expect("granted");
    assert_eq!(
        (granted.status, granted.assigned_agent.as_deref(), granted.attempt),
        (TaskStatus::Claimed, Some("waiting"), 1)
    );
    assert!(granted.lease_id.is_some());
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskClaimed]);
    let agent = h.agent("waiting").await;
    assert_eq!(agent.in_flight, 1);
    assert!(agent.last_assigned_at.is_some(), "a grant writes last_assigned_at");

    let second = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.store.assign(&second, "tok-1").await.expect("assign"), None, "the token was used");
    assert_eq!(h.status(&second).await, TaskStatus::Pending);
    match h.store.withdraw_waiter("tok-1").await.expect("withdraw") {
        Withdrawn::Assigned(task) => assert_eq!((task.task_id, task.lease_id), (task_id, granted.lease_id.clone())),
        Withdrawn::Unused => panic!("the token was consumed by assign"),
    }
    assert_eq!(h.store.withdraw_waiter("tok-1").await.expect("withdraw"), Withdrawn::Unused, "answered once");
    assert_eq!(h.store.withdraw_waiter("tok-2").await.expect("withdraw"), Withdrawn::Unused);
    assert_eq!(h.store.assign(&second, "tok-2").await.expect("assign"), None, "a withdrawn token is dead");
    assert_eq!(h.store.withdraw_waiter("never-registered").await.expect("withdraw"), Withdrawn::Unused);
    assert_eq!(h.stats().await.waiting_claims, 0);
    assert_eq!(h.status(&second).await, TaskStatus::Pending);
}

/// A server killed while a claim blocks never withdraws the claim's token: once the block is over nobody waits on
/// it, so it is neither listed nor assigned (a task routed through it would reach no one).
async fn a_waiter_token_dies_when_its_claims_block_ends(h: Harness) {
    h.register("waiting", &["code"]).await;
    let block = Duration::from_secs(5);
    h.store.register_waiter(waiter("tok-old", "waiting", &["code"]), block).await.expect("waiter");
    h.advance(4_999).await;
    assert_eq!(h.store.waiters_for(&caps(&["code"]), 10).await.expect("waiters").len(), 1, "live during its block");
    h.advance(1).await;
    assert!(h.store.waiters_for(&caps(&["code"]), 10).await.expect("waiters").is_empty(), "dead once it ended");
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.store.assign(&task_id, "tok-old").await.expect("assign"), None, "an expired token is not assigned");
    assert_eq!(h.status(&task_id).await, TaskStatus::Pending);
    assert_eq!(h.store.withdraw_waiter("tok-old").await.expect("withdraw"), Withdrawn::Unused);
    h.store.register_waiter(waiter("tok-new", "waiting", &["code"]), block).await.expect("waiter");
    let granted = h.store.assign(&task_id, "tok-new").await.expect("assign").expect("a live token still routes");
    assert_eq!(granted.assigned_agent.as_deref(), Some("waiting"));
    assert_eq!(h.stats().await.waiting_claims, 0);
}

async fn assign_refuses_a_task_no_longer_pending_or_an_agent_no_longer_eligible(h: Harness) {
    h.register("router", &["code"]).await;
    h.register("puller", &["code"]).await;
    let pulled = h.submit(request("assign")).await;
    let needs_debate = h.submit(request_for("assign", Priority::Normal, &["debate"])).await;
    let open = h.submit(request("assign")).await;
    assert_eq!(h.claim("puller").await.map(|t| t.task_id), Some(pulled.clone()));
    h.store.register_waiter(waiter("tok", "router", &["code"]), BLOCK).await.expect("waiter");
    assert_eq!(h.store.assign(&pulled, "tok").await.expect("assign"), None, "taken by a pull first");
    assert_eq!(h.store.assign(&needs_debate, "tok").await.expect("assign"), None, "the waiter lacks debate");
    h.store.set_paused("router", true).await.expect("pause");
    assert_eq!(h.store.assign(&open, "tok").await.expect("assign"), None, "a paused agent is not eligible");
    h.store.set_paused("router", false).await.expect("resume");
    let granted = h.store.assign(&open, "tok").await.expect("assign").expect("the token survived the refusals");
    assert_eq!(granted.assigned_agent.as_deref(), Some("router"));
    assert_eq!(h.status(&needs_debate).await, TaskStatus::Pending);
    let unknown = h.store.register_waiter(waiter("tok-x", "nobody", &[]), BLOCK).await;
    assert!(matches!(unknown, Err(StoreError::AgentNotFound(_))), "{unknown:?}");
}

async fn releasing_an_undelivered_grant_puts_the_task_back_at_its_place_without_counting_a_retry(h: Harness) {
    h.register("worker", &[]).await;
    let a = h.submit(with_retries("release", 0)).await;
    let b = h.submit(request("release")).await;
    let held = h.claim("worker").await.expect("claimable");
    assert_eq!(held.task_id, a);
    let lease_id = held.lease_id.clone().expect("lease");
    let mut rx = h.store.subscribe();
    h.store.release(&a, "ffffffffffffffffffffffffffffffff").await.expect("a wrong lease is a no-op");
    assert_eq!(h.status(&a).await, TaskStatus::Claimed);
    h.store.release(&a, &lease_id).await.expect("release");
    let task = h.task(&a).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 0, None));
    assert_eq!(h.agent("worker").await.in_flight, 0);
    let events = received(&mut rx);
    let released: Vec<_> = events.iter().filter(|e| e.kind == EventKind::TaskReleased).collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].data["reason"], "undelivered");
    h.store.release(&a, &lease_id).await.expect("a second release is a no-op");
    assert!(kinds(&received(&mut rx)).is_empty());
    assert_eq!(conflict_code(h.store.complete(&a, &lease(&held), json!({}).into()).await), "lease_lost");
    // Back at its place, and with max_retries 0 it still has its attempt.
    assert_eq!(h.drain("worker").await, vec![a.clone(), b]);
    assert_eq!(h.task(&a).await.attempt, 2);
}

async fn a_heartbeat_omitting_an_older_lease_releases_it_but_keeps_a_younger_one(h: Harness) {
    let interval = h.config.heartbeat_interval_ms;
    h.register_with(AgentRegistration { max_concurrent_tasks: 2, ..registration("worker", &[]) }).await;
    let old = h.submit(request("old")).await;
    let young = h.submit(request("young")).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(old.clone()));
    h.advance(interval).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(young.clone()));
    let beat = HeartbeatRequest { current_task_ids: Some(vec![]), ..HeartbeatRequest::default() };
    let outcome = h.heartbeat_with("worker", &beat).await;
    assert_eq!(outcome.revoked, vec![Revoked { task_id: old.clone(), reason: RevokeReason::Reassigned }]);
    let task = h.task(&old).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 0), "released without a retry");
    assert_eq!(h.status(&young).await, TaskStatus::Claimed, "the agent may not know of a young grant yet");
    let agent = h.agent("worker").await;
    assert_eq!((agent.in_flight, agent.current_task_ids.clone()), (1, vec![young]));
    // A heartbeat with no task list releases nothing.
    h.advance(interval).await;
    assert!(h.heartbeat("worker").await.revoked.is_empty());
    assert_eq!(h.agent("worker").await.in_flight, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Manual retry

async fn manual_retry_restarts_failed_timed_out_and_cancelled_tasks_with_retries_reset(h: Harness) {
    h.register("worker", &[]).await;
    let failed = h.submit(with_retries("manual", 1)).await;
    for _ in 0..2 {
        let task = h.claim("worker").await.expect("claimable");
        h.store.fail(&failed, &lease(&task), &fail("boom", true)).await.expect("fail");
    }
    let before = h.task(&failed).await;
    assert_eq!((before.status, before.retries), (TaskStatus::Failed, 1));
    let mut rx = h.store.subscribe();
    let retried = h.store.retry(&failed).await.expect("retry");
    assert_eq!((retried.status, retried.retries, retried.manual_retries), (TaskStatus::Pending, 0, 1));
    assert_eq!((retried.error.clone(), retried.result.clone(), retried.completed_at.clone()), (None, None, None));
    assert_eq!(kinds_for(&received(&mut rx), &failed), vec![EventKind::TaskRetried]);
    // The reset gives it its automatic retries back.
    let task = h.claim("worker").await.expect("claimable after retry");
    assert_eq!(task.attempt, 3);
    h.store.fail(&failed, &lease(&task), &fail("boom", true)).await.expect("fail");
    assert_eq!(h.status(&failed).await, TaskStatus::Pending);

    let timed_out = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("t") }).await;
    let cancelled = h.submit(request("c")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    // `failed` is pending again and first in line; take it out of the way.
    h.store.cancel(&failed).await.expect("cancel");
    h.claim("worker").await.expect("claims timed_out");
    h.advance(1_000).await;
    h.store.sweep_timeouts(10).await.expect("sweep");
    assert_eq!(h.status(&timed_out).await, TaskStatus::Timeout);
    for task_id in [&timed_out, &cancelled, &failed] {
        let retried = h.store.retry(task_id).await.expect("retry");
        assert_eq!((retried.status, retried.retries), (TaskStatus::Pending, 0));
    }
    assert_eq!(conflict_code(h.store.retry(&failed).await), "invalid_transition", "pending again");
    let drained: HashSet<_> = h.drain("worker").await.into_iter().collect();
    assert_eq!(drained, HashSet::from([timed_out, cancelled, failed]));
}

async fn manual_retry_of_a_task_that_is_not_finished_or_has_completed_is_refused(h: Harness) {
    h.register("worker", &[]).await;
    let pending = h.submit(request("p")).await;
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition");
    let held = h.claim("worker").await.expect("claimable");
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "claimed");
    h.store.start(&pending, &lease(&held)).await.expect("start");
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "running");
    h.complete(&held, json!({})).await;
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "completed");
    let task = h.task(&pending).await;
    assert_eq!((task.status, task.manual_retries), (TaskStatus::Completed, 0));
}

// ---------------------------------------------------------------------------------------------------------------
// Agent eligibility and status

async fn paused_draining_and_failed_agents_get_nothing_until_they_are_eligible_again(h: Harness) {
    h.register("worker", &[]).await;
    let first = h.submit(request("eligibility")).await;
    let paused = h.store.set_paused("worker", true).await.expect("pause");
    assert!(paused.paused);
    assert!(h.claim("worker").await.is_none(), "paused");
    assert_eq!(h.status(&first).await, TaskStatus::Pending);
    assert!(!h.store.set_paused("worker", false).await.expect("resume").paused);
    let held = h.claim("worker").await.expect("resumed");
    assert_eq!(held.task_id, first);

    let second = h.submit(request("eligibility")).await;
    let draining = HeartbeatRequest { status: Some(AgentStatus::Draining), ..HeartbeatRequest::default() };
    assert_eq!(h.heartbeat_with("worker", &draining).await.status, AgentStatus::Draining);
    assert!(h.claim("worker").await.is_none(), "draining: no new tasks");
    assert_eq!(h.agent("worker").await.status, AgentStatus::Draining, "a refused claim leaves it draining");
    assert_eq!(h.complete(&held, json!({})).await.status, TaskStatus::Completed, "current ones continue");
    let ready = HeartbeatRequest { status: Some(AgentStatus::Ready), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &ready).await;
    let held = h.claim("worker").await.expect("ready again");
    assert_eq!(held.task_id, second);
    h.complete(&held, json!({})).await;

    let third = h.submit(request("eligibility")).await;
    let failed = HeartbeatRequest { status: Some(AgentStatus::Failed), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &failed).await;
    assert!(h.claim("worker").await.is_none(), "failed (fatal report)");
    h.register("worker", &[]).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(third), "re-registering clears failed");
}

async fn capacity_and_the_starting_or_offline_status_do_not_refuse_a_claim(h: Harness) {
    h.register("one-slot", &[]).await;
    for _ in 0..3 {
        h.submit(request("capacity")).await;
    }
    h.claim("one-slot").await.expect("first");
    assert_eq!(h.agent("one-slot").await.status, AgentStatus::Busy);
    h.claim("one-slot").await.expect("an agent asking for work is the judge of its capacity");
    assert_eq!(h.agent("one-slot").await.in_flight, 2);

    h.register_with(AgentRegistration { status: AgentStatus::Starting, ..registration("starter", &[]) }).await;
    assert_eq!(h.agent("starter").await.status, AgentStatus::Starting);
    h.claim("starter").await.expect("a starting agent may claim");
    assert_ne!(h.agent("starter").await.status, AgentStatus::Starting, "a claim makes it ready");

    h.register("sleeper", &[]).await;
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    h.store.sweep_offline(100).await.expect("sweep");
    assert_eq!(h.agent("sleeper").await.status, AgentStatus::Offline);
    h.submit(request("capacity")).await;
    h.claim("sleeper").await.expect("an offline agent that claims is alive again");
    assert_ne!(h.agent("sleeper").await.status, AgentStatus::Offline);
}

async fn an_agents_status_and_in_flight_follow_its_leases(h: Harness) {
    h.register_with(AgentRegistration { max_concurrent_tasks: 2, ..registration("pair", &[]) }).await;
    let a = h.submit(request("load")).await;
    let b = h.submit(request("load")).await;
    let first = h.claim("pair").await.expect("a");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight, agent.current_task_ids.clone()), (AgentStatus::Ready, 1, vec![a]));
    let second = h.claim("pair").await.expect("b");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight), (AgentStatus::Busy, 2), "busy at capacity");
    assert!(agent.current_task_ids.contains(&b));
    assert_eq!(h.stats().await.available_agents, 0);
    h.complete(&first, json!({})).await;
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight, agent.current_task_ids.clone()), (AgentStatus::Ready, 1, vec![b]));
    assert_eq!(agent.tasks_completed, 1);
    assert_eq!(h.stats().await.available_agents, 1);
    h.store.fail(&second.task_id, &lease(&second), &fail("x", false)).await.expect("fail");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight), (AgentStatus::Ready, 0));
}

// ---------------------------------------------------------------------------------------------------------------
// Signatures and claim cost

async fn a_submit_creating_a_signature_past_max_signatures_is_refused(h: Harness) {
    let h = h.reopen(|c| c.max_signatures = 2).await;
    h.submit(request_for("sig", Priority::Normal, &["a"])).await;
    h.submit(request_for("sig", Priority::Normal, &["b"])).await;
    let third = h.store.submit(new_task("tester", request_for("sig", Priority::Normal, &["c"]))).await;
    assert!(matches!(third, Err(StoreError::TooManySignatures(2))), "{third:?}");
    let empty = h.store.submit(new_task("tester", request("sig"))).await;
    assert!(matches!(empty, Err(StoreError::TooManySignatures(_))), "the empty set is a signature too: {empty:?}");
    h.submit(request_for("sig", Priority::High, &["a"])).await; // an existing signature is fine
    let batch =
        vec![new_task("tester", request_for("sig", Priority::Normal, &["a"])), new_task("tester", request("sig"))];
    let first_of_batch = batch[0].task_id.clone();
    assert!(matches!(h.store.submit_batch(batch).await, Err(StoreError::TooManySignatures(_))));
    assert!(h.store.get_task(&first_of_batch).await.expect("get").is_none(), "all or nothing");
    let stats = h.stats().await;
    assert_eq!((stats.live_signatures, stats.tasks_by_status.get("pending")), (2, Some(&3)));
    // When a signature has no pending work left, it is no longer live.
    h.register("b-worker", &["b"]).await;
    h.claim("b-worker").await.expect("claims the b task");
    assert_eq!(h.stats().await.live_signatures, 1);
    h.submit(request_for("sig", Priority::Normal, &["c"])).await;
}

async fn claim_cost_is_flat_in_the_backlog(h: Harness) {
    async fn examined_with_backlog(h: &Harness, backlog: usize) -> u64 {
        const SIGNATURES: [&[&str]; 4] = [&[], &["code"], &["code", "debate"], &["audit"]];
        let templates: Vec<_> = SIGNATURES
            .iter()
            .enumerate()
            .map(|(i, required)| new_task("bulk", request_for("bulk", Priority::ALL[i], required)))
            .collect();
        let mut submitted = 0;
        while submitted < backlog {
            let chunk = (backlog - submitted).min(10_000);
            let batch = (submitted..submitted + chunk)
                .map(|i| {
                    let mut task = templates[i % templates.len()].clone();
                    task.task_id = TaskId::generate();
                    task
                })
                .collect();
            h.store.submit_batch(batch).await.expect("batch");
            submitted += chunk;
        }
        h.register("prober", &["code", "debate"]).await;
        h.claim("prober").await.expect("work to claim");
        let stats = h.stats().await;
        assert_eq!(stats.tasks_by_status.get("pending"), Some(&(backlog as u64 - 1)));
        stats.last_claim_examined
    }
    let small = examined_with_backlog(&h, 1_000).await;
    let large = examined_with_backlog(&h.reopen(|_| {}).await, 100_000).await;
    assert_eq!(small, large, "entries examined by a claim do not grow with the backlog");
    assert!((1..=3).contains(&small), "at most one head per covered signature, got {small}");
}

// ---------------------------------------------------------------------------------------------------------------
// Counters and events

async fn counters_match_the_tasks_and_agents_after_a_mixed_sequence(h: Harness) {
    h.register_with(AgentRegistration {
        provider: "anthropic".into(),
        max_concurrent_tasks: 8,
        ..registration("alpha", &["code", "debate"])
    })
    .await;
    h.register_with(AgentRegistration { provider: "openai".into(), ..registration("beta", &["code"]) }).await;
    h.register("gamma", &["audit"]).await;
    h.store.set_paused("gamma", true).await.expect("pause");
    h.store.register_waiter(waiter("tok", "beta", &["code"]), BLOCK).await.expect("waiter");

    // (type, priority, required, timeout_seconds, max_retries)
    let plan: [(&str, Priority, &[&str], u32, u32); 10] = [
        ("code", Priority::Critical, &["code"], 5, 0),
        ("code", Priority::High, &["code"], 300, 1),
        ("debate", Priority::Normal, &["debate"], 300, 1),
        ("debate", Priority::Normal, &["code", "debate"], 300, 1),
        ("misc", Priority::Low, &[], 300, 1),
        ("misc", Priority::Low, &[], 300, 1),
        ("misc", Priority::Normal, &[], 300, 1),
        ("audit", Priority::High, &["audit"], 300, 1),
        ("audit", Priority::Critical, &["audit"], 300, 1),
        ("code", Priority::Normal, &["code"], 300, 1),
    ];
    let mut ids = Vec::new();
    for (task_type, priority, required, timeout, retries) in plan {
        let submit = SubmitRequest {
            timeout_seconds: Some(timeout),
            max_retries: Some(retries),
            ..request_for(task_type, priority, required)
        };
        ids.push(h.submit(submit).await);
    }
    let claimed = h.claim_with("alpha", caps(&["code", "debate"]), 4).await;
    let claimed_ids: Vec<_> = claimed.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(claimed_ids, ids[..4].to_vec(), "critical, high, then the two oldest normal tasks");
    h.store.start(&ids[0], &lease(&claimed[0])).await.expect("start");
    h.complete(&claimed[1], json!({})).await;
    h.store.fail(&ids[3], &lease(&claimed[3]), &fail("x", false)).await.expect("fail");
    h.store.cancel(&ids[4]).await.expect("cancel pending");
    h.store.fail(&ids[2], &lease(&claimed[2]), &fail("again", true)).await.expect("requeue");
    assert_eq!(h.claim("beta").await.map(|t| t.task_id), Some(ids[6].clone()));
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    h.heartbeat("alpha").await;
    h.heartbeat("gamma").await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 1, "ids[0], 5 s, no retry");
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 1, "beta went silent");
    let more = h.claim_with("alpha", caps(&["code", "debate"]), 2).await;
    assert_eq!(more.len(), 2);
    h.store.start(&more[0].task_id, &lease(&more[0])).await.expect("start");

    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending_by_priority: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending_signatures = HashSet::new();
    for id in &ids {
        let task = h.task(id).await;
        *by_status.entry(task.status.as_str().into()).or_default() += 1;
        *by_type.entry(task.task_type.clone()).or_default() += 1;
        if task.status == TaskStatus::Pending {
            *pending_by_priority.entry(task.priority.as_str().into()).or_default() += 1;
            pending_signatures.insert(task.required_capabilities.clone());
        }
    }
    assert_eq!(by_status.len(), 7, "the sequence reached every status: {by_status:?}");
    let stats = h.stats().await;
    assert_eq!(nonzero(&stats.tasks_by_status), by_status);
    assert_eq!(nonzero(&stats.pending_by_priority), pending_by_priority);
    assert_eq!(nonzero(&stats.tasks_by_type), by_type);
    assert_eq!(stats.live_signatures, pending_signatures.len() as u64);
    for status in TaskStatus::ALL {
        let filter = TaskFilter { status: Some(status), limit: 1_000, ..TaskFilter::default() };
        let listed = h.store.list_tasks(&filter).await.expect("list").tasks.len() as u64;
        assert_eq!(listed, by_status.get(status.as_str()).copied().unwrap_or(0), "{status:?}");
    }

    let agents = h.store.list_agents(&AgentFilter::default()).await.expect("agents");
    assert_eq!(stats.total_agents, agents.len() as u64);
    let mut by_agent_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_capability: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, u64> = BTreeMap::new();
    let mut available = 0;
    for agent in &agents {
        *by_agent_status.entry(agent.status.as_str().into()).or_default() += 1;
        *by_provider.entry(agent.provider.clone()).or_default() += 1;
        for capability in agent.capabilities.as_slice() {
            *by_capability.entry(capability.clone()).or_default() += 1;
        }
        if !agent.paused && agent.status == AgentStatus::Ready && agent.in_flight < agent.max_concurrent_tasks {
            available += 1;
        }
    }
    assert_eq!(h.agent("beta").await.status, AgentStatus::Offline);
    assert_eq!(nonzero(&stats.agents_by_status), by_agent_status);
    assert_eq!(nonzero(&stats.agents_by_capability), by_capability);
    assert_eq!(nonzero(&stats.agents_by_provider), by_provider);
    assert_eq!(stats.available_agents, available);
    assert_eq!(stats.waiting_claims, 0, "an offline agent's waiter is gone");
    let in_flight: u32 = agents.iter().map(|a| a.in_flight).sum();
    let leased = by_status.get("claimed").copied().unwrap_or(0) + by_status.get("running").copied().unwrap_or(0);
    assert_eq!(u64::from(in_flight), leased, "every lease is held by one agent");
}

async fn every_transition_emits_its_event_to_subscribers_and_the_log(h: Harness) {
    use EventKind::*;
    let mut rx = h.store.subscribe();
    let mut seen = Vec::new();
    let step = |rx: &mut broadcast::Receiver<Event>, seen: &mut Vec<Event>, expected: &[EventKind], what: &str| {
        let events = received(rx);
        assert_eq!(kinds(&events), expected, "{what}: {events:#?}");
        seen.extend(events.iter().cloned());
        events
    };
    h.register_with(AgentRegistration { session_id: Some("s1".into()), ..registration("agent", &[]) }).await;
    step(&mut rx, &mut seen, &[AgentRegistered], "register");
    let secret = json!({"secret": "p4yl0ad-must-not-leak"});
    let task_id = h.submit(SubmitRequest { payload: Some(secret), max_retries: Some(1), ..request("events") }).await;
    let submitted = step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    assert_eq!(of_kind(&submitted, TaskSubmitted).task_id.as_deref(), Some(task_id.as_str()));
    let held = h.claim("agent").await.expect("claim");
    let claimed = step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    assert_eq!(of_kind(&claimed, TaskClaimed).agent_id.as_deref(), Some("agent"));
    assert_eq!(of_kind(&claimed, TaskClaimed).task_id.as_deref(), Some(task_id.as_str()));
    h.store.start(&task_id, &lease(&held)).await.expect("start");
    step(&mut rx, &mut seen, &[TaskStarted], "start");
    h.store.progress(&task_id, &lease(&held), json!({"pct": 1})).await.expect("progress");
    step(&mut rx, &mut seen, &[TaskProgress], "progress");
    h.store.fail(&task_id, &lease(&held), &fail("once", true)).await.expect("fail");
    step(&mut rx, &mut seen, &[TaskRetried], "fail with requeue");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.release(&task_id, held.lease_id.as_deref().expect("lease")).await.expect("release");
    step(&mut rx, &mut seen, &[TaskReleased], "release");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store
        .complete(&task_id, &lease(&held), json!({"secret": "r3sult-must-not-leak"}).into())
        .await
        .expect("complete");
    step(&mut rx, &mut seen, &[TaskCompleted], "complete");
    let second = h.submit(with_retries("events", 0)).await;
    step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    h.store.cancel(&second).await.expect("cancel");
    step(&mut rx, &mut seen, &[TaskCancelled], "cancel");
    h.store.retry(&second).await.expect("retry");
    step(&mut rx, &mut seen, &[TaskRetried], "manual retry");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.fail(&second, &lease(&held), &fail("fatal", false)).await.expect("fail");
    step(&mut rx, &mut seen, &[TaskFailed], "fail");
    h.store.retry(&second).await.expect("retry");
    step(&mut rx, &mut seen, &[TaskRetried], "manual retry");
    h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.cancel(&second).await.expect("cancel");
    step(&mut rx, &mut seen, &[TaskCancelled], "cancel with a lease");

    let timed = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("events") }).await;
    step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.advance(1_000).await;
    h.store.sweep_timeouts(10).await.expect("sweep");
    let timeout = step(&mut rx, &mut seen, &[TaskTimeout], "timeout with no retry left");
    assert_eq!(of_kind(&timeout, TaskTimeout).task_id.as_deref(), Some(timed.as_str()));
    h.store.set_paused("agent", true).await.expect("pause");
    let paused = step(&mut rx, &mut seen, &[], "pause");
    assert!(paused.iter().any(|e| e.kind == AgentStatusChanged), "pausing changes the agent's status: {paused:?}");
    h.store.set_paused("agent", false).await.expect("resume");
    seen.extend(received(&mut rx));
    h.register_with(AgentRegistration { session_id: Some("s2".into()), ..registration("agent", &[]) }).await;
    step(&mut rx, &mut seen, &[AgentRestarted], "register with a new session");
    h.advance(h.config.heartbeat_timeout_ms).await;
    h.store.sweep_offline(10).await.expect("sweep");
    let offline = step(&mut rx, &mut seen, &[AgentOffline], "offline");
    assert_eq!(of_kind(&offline, AgentOffline).agent_id.as_deref(), Some("agent"));
    let status_changes: Vec<_> = offline.iter().filter(|e| e.kind == AgentStatusChanged).collect();
    assert_eq!(status_changes.len(), 1, "offline is a status change");
    h.store.unregister("agent").await.expect("unregister");
    step(&mut rx, &mut seen, &[AgentUnregistered], "unregister");

    let log = all_events(&h).await;
    assert_eq!(seen, log, "the subscriber saw exactly the logged events, in order");
    let mut rx_all = h.store.subscribe();
    assert!(received(&mut rx_all).is_empty(), "a subscription starts now");
    let logged = serde_json::to_string(&log).expect("serialise");
    assert!(!logged.contains("must-not-leak"), "events never carry payloads or results");
    for event in &log {
        assert_eq!(event.server_id, "conformance");
        assert!(looks_like_rfc3339(&event.time), "RFC 3339 time: {}", event.time);
        event_order(&event.id);
    }
    // Resume after any event: the rest of the log, in order.
    let middle = &log[log.len() / 2];
    let rest = h.store.events_after(Some(&middle.id), 1_000).await.expect("events_after").expect("kept");
    assert_eq!(rest, log[log.len() / 2 + 1..].to_vec());
    let two = h.store.events_after(Some(&middle.id), 2).await.expect("events_after").expect("kept");
    assert_eq!(two, log[log.len() / 2 + 1..log.len() / 2 + 3].to_vec(), "at most limit");
    let last = &log[log.len() - 1];
    assert_eq!(h.store.events_after(Some(&last.id), 10).await.expect("events_after"), Some(vec![]));
    assert_eq!(h.store.events_after(Some("1-0"), 10).await.expect("events_after"), None, "not in the buffer");
}

fn looks_like_rfc3339(time: &str) -> bool {
    time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T'
}

async fn a_transition_that_changes_nothing_emits_no_event(h: Harness) {
    h.register("worker", &[]).await;
    let keyed_request = || SubmitRequest { idempotency_key: Some("k".into()), ..request("quiet") };
    h.submit(keyed_request()).await;
    let cancelled = h.submit(request("quiet")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    let held = h.claim("worker").await.expect("claims the keyed task");
    let done = held.task_id.clone();
    h.complete(&held, json!({})).await;
    let mut rx = h.store.subscribe();
    let logged = all_events(&h).await.len();

    assert!(h.store.submit(new_task("tester", keyed_request())).await.expect("replay").replayed);
    h.store.cancel(&cancelled).await.expect("cancel again");
    h.store.release(&done, "00000000000000000000000000000000").await.expect("release of an ended lease");
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep"), 0);
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep"), 0);
    h.store.peek(&caps(&[]), 10).await.expect("peek");
    h.store.complete(&done, &lease(&held), json!({}).into()).await.expect("repeat");
    assert!(h.store.complete(&done, &lease(&held), json!({"other": 1}).into()).await.is_err());
    assert!(h.store.retry(&done).await.is_err());
    assert!(h.store.cancel(&done).await.is_err());
    h.store.set_paused("worker", false).await.expect("resume an agent that is not paused");
    h.store.withdraw_waiter("no-such-token").await.expect("withdraw");
    assert!(h.claim("worker").await.is_none(), "nothing pending");
    assert!(received(&mut rx).is_empty(), "no-op transitions emit nothing");
    assert_eq!(all_events(&h).await.len(), logged, "and log nothing");
}

async fn next_deadline_is_the_earliest_lease_heartbeat_or_backoff_deadline(h: Harness) {
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), None, "an empty store has none");
    let timeout = h.config.heartbeat_timeout_ms;
    h.register("worker", &[]).await;
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), Some(T0_MS + timeout));
    h.submit(SubmitRequest { timeout_seconds: Some(10), ..request("deadline") }).await;
    h.advance(1_000).await;
    let held = h.claim("worker").await.expect("claim");
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), Some(T0_MS + 1_000 + 10_000), "the lease");
    h.complete(&held, json!({})).await;
    assert_eq!(
        h.store.next_deadline().await.expect("next_deadline"),
        Some(T0_MS + 1_000 + timeout),
        "the heartbeat expiry, renewed by the claim"
    );
}

async fn peek_and_claim_if_let_a_dispatch_policy_skip_a_task_that_keeps_its_place(h: Harness) {
    h.register("worker", &["code"]).await;
    let denied = h.submit(request_for("dispatch", Priority::High, &["code"])).await;
    let allowed = h.submit(request("dispatch")).await;
    let foreign = h.submit(request_for("dispatch", Priority::Critical, &["debate"])).await;
    let peeked = h.store.peek(&caps(&["code"]), 8).await.expect("peek");
    assert_eq!(peeked.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![denied.clone(), allowed.clone()]);
    assert_eq!(h.store.peek(&caps(&["code"]), 1).await.expect("peek").len(), 1, "limit");
    let request = claim_request("worker", &["code"], None);
    let granted = h.store.claim_if(&allowed, &request).await.expect("claim_if").expect("granted");
    assert_eq!((granted.task_id.clone(), granted.status), (allowed.clone(), TaskStatus::Claimed));
    assert_eq!(h.store.claim_if(&allowed, &request).await.expect("claim_if"), None, "no longer pending");
    assert_eq!(h.store.claim_if(&foreign, &request).await.expect("claim_if"), None, "capabilities still apply");
    h.store.set_paused("worker", true).await.expect("pause");
    assert_eq!(h.store.claim_if(&denied, &request).await.expect("claim_if"), None, "eligibility still applies");
    h.store.set_paused("worker", false).await.expect("resume");
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(denied), "the skipped task kept its place");
    assert_eq!(h.status(&foreign).await, TaskStatus::Pending);
}

async fn list_tasks_pages_newest_first_and_filters(h: Harness) {
    h.register("worker", &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.submit(request(if i % 2 == 0 { "even" } else { "odd" })).await);
    }
    let held = h.claim("worker").await.expect("claim");
    assert_eq!(held.task_id, ids[0]);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = h.store.list_tasks(&TaskFilter { limit: 2, cursor, ..TaskFilter::default() }).await.expect("list");
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().cloned().collect::<Vec<_>>(), "newest first, every task once");
    let list = |filter: TaskFilter| {
        let store = h.store.clone();
        async move {
            store.list_tasks(&filter).await.expect("list").tasks.into_iter().map(|t| t.task_id).collect::<Vec<_>>()
        }
    };
    let pending = list(TaskFilter { status: Some(TaskStatus::Pending), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(pending, vec![ids[4].clone(), ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    let even = list(TaskFilter { task_type: Some("even".into()), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(even, vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]);
    let mine = list(TaskFilter { agent_id: Some("worker".into()), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(mine, vec![ids[0].clone()]);
}

async fn list_agents_filters_by_capability_and_availability(h: Harness) {
    h.register("coder", &["code"]).await;
    h.register("auditor", &["audit", "code"]).await;
    h.register("idle", &["debate"]).await;
    h.store.set_paused("idle", true).await.expect("pause");
    let ids = |agents: Vec<aragora_cp::model::Agent>| agents.into_iter().map(|a| a.agent_id).collect::<Vec<_>>();
    let all = h.store.list_agents(&AgentFilter::default()).await.expect("list");
    assert_eq!(ids(all), vec!["auditor", "coder", "idle"], "by id");
    let code = AgentFilter { capability: Some("code".into()), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&code).await.expect("list")), vec!["auditor", "coder"]);
    let available = AgentFilter { available: Some(true), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&available).await.expect("list")), vec!["auditor", "coder"]);
    let unavailable = AgentFilter { available: Some(false), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&unavailable).await.expect("list")), vec!["idle"]);
}

async fn operations_on_unknown_tasks_and_agents_are_not_found(h: Harness) {
    let ghost = TaskId::generate();
    let not_found =
        |result: Result<(), StoreError>| matches!(result, Err(StoreError::TaskNotFound(ref id)) if *id == ghost);
    assert_eq!(h.store.get_task(&ghost).await.expect("get"), None);
    assert!(not_found(h.store.complete(&ghost, &Fence::Unfenced, json!({}).into()).await.map(|_| ())));
    assert!(not_found(h.store.fail(&ghost, &Fence::Unfenced, &fail("x", true)).await.map(|_| ())));
    assert!(not_found(h.store.start(&ghost, &Fence::Unfenced).await.map(|_| ())));
    assert!(not_found(h.store.progress(&ghost, &Fence::Unfenced, json!({})).await.map(|_| ())));
    assert!(not_found(h.store.cancel(&ghost).await.map(|_| ())));
    assert!(not_found(h.store.retry(&ghost).await.map(|_| ())));
    assert!(not_found(h.store.release(&ghost, "lease").await));
    assert_eq!(h.store.get_agent("ghost").await.expect("get"), None);
    let agent_not_found =
        |result: Result<(), StoreError>| matches!(result, Err(StoreError::AgentNotFound(ref a)) if a == "ghost");
    assert!(agent_not_found(h.store.claim(&claim_request("ghost", &[], None)).await.map(|_| ())));
    assert!(agent_not_found(h.store.heartbeat("ghost", &HeartbeatRequest::default()).await.map(|_| ())));
    assert!(agent_not_found(h.store.set_paused("ghost", true).await.map(|_| ())));
    assert!(agent_not_found(h.store.unregister("ghost").await));
    h.register("real", &[]).await;
    let task = h.submit(request("x")).await;
    assert!(agent_not_found(h.store.claim_if(&task, &claim_request("ghost", &[], None)).await.map(|_| ())));
    assert_eq!(h.status(&task).await, TaskStatus::Pending);
}

// ---- circuit breakers and health (DESIGN §4, §5) ----

/// Without requeue, so each failure is on a different task (a requeued task comes back first, and failures of one
/// task alone never open a breaker: see the next tests).
fn agent_failure(error: &str) -> FailRequest {
    FailRequest { error: error.into(), requeue: false, kind: FailKind::Agent }
}

/// Claims one task for `agent` and fails it with kind `agent`.
async fn fail_one_as_agent(h: &Harness, agent: &str) {
    let task = h.claim(agent).await.expect("a task to fail");
    h.store.fail(&task.task_id, &lease(&task), &agent_failure("model crashed")).await.unwrap();
}

async fn agent_failures_over_two_tasks_open_the_breaker_and_a_half_open_trial_closes_it(h: Harness) {
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 3;
            c.breaker_cooldown_ms = 10_000;
        })
        .await;
    h.register("flaky", &[]).await;
    for n in 0..6 {
        h.submit(request(&format!("t{n}"))).await;
    }
    // Three agent failures over three tasks: the breaker opens.
    for _ in 0..3 {
        fail_one_as_agent(&h, "flaky").await;
    }
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::store::BreakerState::Open);
    assert!(h.claim("flaky").await.is_none(), "an open breaker gets no work");
    assert!(h.stats().await.open_breakers >= 1);
    // After the cooldown: half-open, exactly one trial lease.
    h.advance(10_001).await;
    let trial = h.claim_with("flaky", caps(&[]), 3).await;
    assert_eq!(trial.len(), 1, "half-open lets one trial lease through");
    assert!(h.claim("flaky").await.is_none(), "no second lease while the trial runs");
    h.complete(&trial[0], json!({"ok": true})).await;
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::store::BreakerState::Closed);
    assert!(h.claim("flaky").await.is_some(), "a closed breaker lets work flow again");
}

async fn task_kind_failures_never_open_a_breaker(h: Harness) {
    let h = h.reopen(|c| c.breaker_threshold = 2).await;
    h.register("a", &[]).await;
    for n in 0..4 {
        h.submit(SubmitRequest { max_retries: Some(0), ..request(&format!("poison{n}")) }).await;
    }
    for _ in 0..4 {
        let task = h.claim("a").await.unwrap();
        let failure = FailRequest { error: "bad input".into(), requeue: true, kind: FailKind::Task };
        h.store.fail(&task.task_id, &lease(&task), &failure).await.unwrap();
    }
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::store::BreakerState::Closed);
}

async fn a_failed_half_open_trial_opens_the_breaker_again(h: Harness) {
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown_ms = 1_000;
        })
        .await;
    h.register("flaky", &[]).await;
    for n in 0..4 {
        h.submit(request(&format!("t{n}"))).await;
    }
    fail_one_as_agent(&h, "flaky").await;
    fail_one_as_agent(&h, "flaky").await;
    assert!(h.claim("flaky").await.is_none());
    h.advance(1_001).await;
    fail_one_as_agent(&h, "flaky").await;
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::store::BreakerState::Open, "a failed trial reopens the breaker");
    assert!(h.claim("flaky").await.is_none());
}

async fn an_unhealthy_verdict_fails_the_agent_until_a_healthy_one(h: Harness) {
    use aragora_cp::store::{HealthState, HealthVerdict};
    h.register("a", &[]).await;
    h.submit(request("t")).await;
    let verdict = |status, message: &str| HealthVerdict { status, message: message.into(), latency_ms: Some(12.0) };
    let recorded = h.store.record_health("a", verdict(HealthState::Unhealthy, "http 503")).await.unwrap();
    assert_eq!((recorded.status, recorded.consecutive_failures), (HealthState::Unhealthy, 1));
    assert_eq!(h.agent("a").await.status, AgentStatus::Failed);
    assert!(h.claim("a").await.is_none(), "an unhealthy agent gets no work");
    h.store.record_health("a", verdict(HealthState::Healthy, "http 200")).await.unwrap();
    assert_eq!(h.agent("a").await.status, AgentStatus::Ready);
    assert!(h.claim("a").await.is_some());
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!((health.status, health.consecutive_failures), (HealthState::Healthy, 0));
}

async fn failures_of_a_single_task_never_open_a_breaker(h: Harness) {
    let h = h.reopen(|c| c.breaker_threshold = 2).await;
    h.register("a", &[]).await;
    h.submit(SubmitRequest { max_retries: Some(5), ..request("one") }).await;
    for _ in 0..4 {
        let task = h.claim("a").await.expect("the requeued task comes back");
        let failure = FailRequest { error: "crash".into(), requeue: true, kind: FailKind::Agent };
        h.store.fail(&task.task_id, &lease(&task), &failure).await.unwrap();
    }
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::store::BreakerState::Closed, "two distinct tasks are needed");
}

// ---- batch and combined outcomes (DESIGN §6, §7) ----

async fn complete_and_claim_finishes_one_task_and_grants_the_next_in_one_step(h: Harness) {
    h.register("a", &[]).await;
    let first = h.submit(request("first")).await;
    let second = h.submit(request("second")).await;
    let held = h.claim("a").await.unwrap();
    assert_eq!(held.task_id, first);
    let next = ClaimRequest { agent_id: "a".into(), capabilities: caps(&[]), max_tasks: 1, session_id: None };
    let (done, claimed) =
        h.store.complete_and_claim(&first, &lease(&held), json!({"ok": 1}).into(), &next).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].task_id, second);
    assert_eq!(h.task(&second).await.assigned_agent.as_deref(), Some("a"));
    // Nothing left: the claim part answers empty, the completion still counts.
    let (_, nothing) = h.store.complete_and_claim(&second, &lease(&claimed[0]), json!({}).into(), &next).await.unwrap();
    assert!(nothing.is_empty());
    assert_eq!(h.agent("a").await.in_flight, 0);
    // A stale lease fails the whole step: no completion, no claim.
    let third = h.submit(request("third")).await;
    let stale = h.store.complete_and_claim(&first, &lease(&held), json!({"other": true}).into(), &next).await;
    assert!(stale.is_err());
    assert_eq!(h.status(&third).await, TaskStatus::Pending);
}

async fn complete_batch_answers_each_outcome_on_its_own(h: Harness) {
    h.register("a", &[]).await;
    for n in 0..2 {
        h.submit(request(&format!("t{n}"))).await;
    }
    let tasks = h.claim_with("a", caps(&[]), 2).await;
    assert_eq!(tasks.len(), 2);
    let outcomes = vec![
        (tasks[0].task_id.clone(), lease(&tasks[0]), json!({"n": 0}).into()),
        (tasks[1].task_id.clone(), Fence::Lease("ffffffffffffffffffffffffffffffff".into()), json!({"n": 1}).into()),
    ];
    let results = h.store.complete_batch(outcomes).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap().status, TaskStatus::Completed);
    assert_eq!(conflict_code(results[1].clone()), "lease_lost");
    assert_eq!(h.status(&tasks[1].task_id).await, TaskStatus::Claimed, "the conflict left the other task alone");
}

async fn housekeeping_removes_old_terminal_tasks_and_long_offline_agents_and_keeps_the_rest(h: Harness) {
    h.register("a", &[]).await;
    h.register("gone", &[]).await;
    let done = h.submit(request("done")).await;
    let open = h.submit(request("open")).await;
    let held = h.claim("a").await.unwrap();
    assert_eq!(held.task_id, done);
    h.complete(&held, json!({})).await;
    assert_eq!(h.store.housekeeping(60_000, 60_000, 100).await.unwrap(), 0, "nothing is old yet");
    // "gone" falls silent and goes offline; "a" keeps heartbeating.
    h.advance(31_000).await;
    h.heartbeat("a").await;
    h.store.sweep_offline(100).await.unwrap();
    h.advance(30_000).await;
    h.heartbeat("a").await;
    let removed = h.store.housekeeping(60_000, 60_000, 100).await.unwrap();
    assert_eq!(removed, 2, "the finished task and the long-offline agent");
    assert!(h.store.get_task(&done).await.unwrap().is_none());
    assert_eq!(h.status(&open).await, TaskStatus::Pending, "live work is never removed");
    assert!(h.store.get_agent("gone").await.unwrap().is_none());
    assert!(h.store.get_agent("a").await.unwrap().is_some());
    let stats = h.stats().await;
    assert_eq!(stats.tasks_by_status.get("completed").copied().unwrap_or(0), 0);
    assert_eq!(stats.tasks_by_status.get("pending").copied(), Some(1));
}

// ---- review fixes: repeated outcomes, waiters and sessions, keep-alive ----

async fn a_repeated_fail_that_requeued_answers_the_same_task_and_a_different_outcome_conflicts(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    let held = h.claim("a").await.unwrap();
    let failure = FailRequest { error: "flaky".into(), requeue: true, kind: FailKind::Task };
    let first = h.store.fail(&id, &lease(&held), &failure).await.unwrap();
    assert_eq!(first.status, TaskStatus::Pending);
    let again = h.store.fail(&id, &lease(&held), &failure).await.expect("same lease, same outcome: 200");
    assert_eq!((again.status, again.retries), (TaskStatus::Pending, 1), "nothing happened twice");
    let other = FailRequest { error: "other".into(), ..failure };
    assert_eq!(conflict_code(h.store.fail(&id, &lease(&held), &other).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&id, &lease(&held), json!({}).into()).await), "outcome_conflict");
}

async fn a_withdrawn_token_whose_task_was_cancelled_since_returns_nothing(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    let waiter = Waiter { token: "tok-cancel".into(), agent_id: "a".into(), capabilities: caps(&[]) };
    h.store.register_waiter(waiter, BLOCK).await.unwrap();
    assert!(h.store.assign(&id, "tok-cancel").await.unwrap().is_some());
    h.store.cancel(&id).await.unwrap();
    assert_eq!(h.store.withdraw_waiter("tok-cancel").await.unwrap(), Withdrawn::Unused);
}

async fn a_new_session_drops_the_old_sessions_waiters(h: Harness) {
    h.register_with(AgentRegistration { session_id: Some("s1".into()), ..registration("a", &[]) }).await;
    let waiter = Waiter { token: "tok-old".into(), agent_id: "a".into(), capabilities: caps(&[]) };
    h.store.register_waiter(waiter, BLOCK).await.unwrap();
    h.register_with(AgentRegistration { session_id: Some("s2".into()), ..registration("a", &[]) }).await;
    let id = h.submit(request("t")).await;
    assert!(h.store.assign(&id, "tok-old").await.unwrap().is_none(), "the old session's claim gets nothing");
    assert_eq!(h.status(&id).await, TaskStatus::Pending);
}

async fn keep_alive_keeps_the_agent_alive_without_consuming_revocations(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    h.claim("a").await.unwrap();
    h.store.cancel(&id).await.unwrap();
    h.advance(25_000).await;
    h.store.keep_alive("a").await.unwrap();
    h.advance(25_000).await;
    h.store.sweep_offline(100).await.unwrap();
    assert_ne!(h.agent("a").await.status, AgentStatus::Offline, "kept alive");
    let beat = h.heartbeat("a").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: id, reason: RevokeReason::Cancelled }]);
}

async fn plugin_changes_keep_versions_bytes_history_and_emit_events(h: Harness) {
    use aragora_cp::model::EventKind;
    use aragora_cp::store::{PluginAction, PluginChange, StoreError};
    let change = |action, by: &str| PluginChange { name: "fleet".into(), action, by: by.into() };
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let upload =
        PluginAction::Upload { bytes: bytes.clone(), sha256: "ab12".into(), manifest: Some("order = 5".into()) };
    assert!(matches!(
        h.store.change_plugin(change(PluginAction::Delete, "x")).await,
        Err(StoreError::PluginNotFound(_))
    ));
    let mut rx = h.store.subscribe();
    let record = h.store.change_plugin(change(upload, "alice")).await.expect("upload");
    assert_eq!((record.version, record.enabled, record.size), (1, true, Some(70_000)));
    assert_eq!((record.sha256.as_deref(), record.manifest.as_deref()), (Some("ab12"), Some("order = 5")));
    assert_eq!(h.store.plugin_component("fleet").await.expect("read"), Some(("ab12".to_string(), bytes)));
    let record = h.store.change_plugin(change(PluginAction::Disable, "bob")).await.expect("disable");
    assert_eq!((record.version, record.enabled), (2, false));
    let record = h.store.change_plugin(change(PluginAction::Delete, "carol")).await.expect("delete");
    assert_eq!((record.version, record.sha256.clone(), record.enabled), (3, None, false));
    assert_eq!(h.store.plugin_component("fleet").await.expect("read"), None);
    let history: Vec<(u64, &str, &str)> =
        record.history.iter().map(|e| (e.version, e.action.as_str(), e.by.as_str())).collect();
    assert_eq!(history, [(3, "deleted", "carol"), (2, "disabled", "bob"), (1, "uploaded", "alice")]);
    assert_eq!(record.history[1].sha256.as_deref(), Some("ab12"), "the disable happened while ab12 was current");
    let kinds: Vec<EventKind> = received(&mut rx).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::PluginUploaded, EventKind::PluginDisabled, EventKind::PluginDeleted]);
    assert_eq!(h.store.plugin_record("fleet").await.expect("record"), Some(record.clone()));
    assert_eq!(h.store.plugin_record("never-uploaded").await.expect("record"), None);
    let records = h.store.plugin_records().await.expect("records");
    assert_eq!(records, [record]);
}

async fn violations_get_fleet_ids_events_and_are_listed_newest_first(h: Harness) {
    use aragora_cp::model::EventKind;
    use aragora_cp::store::NewViolation;
    let task = TaskId::generate();
    let deny = NewViolation {
        policy: "payload_size_policy".into(),
        stage: "submit",
        decision: "deny",
        reason: "too big".into(),
        task_id: Some(task.to_string()),
        agent_id: None,
    };
    let warn = NewViolation {
        stage: "register",
        decision: "warn",
        task_id: None,
        agent_id: Some("a-1".into()),
        ..deny.clone()
    };
    let mut rx = h.store.subscribe();
    let recorded = h.store.record_violations(vec![deny, warn]).await.expect("record");
    assert_eq!(recorded.len(), 2);
    assert_ne!(recorded[0].id, recorded[1].id);
    assert!(recorded.iter().all(|v| v.id.starts_with("viol_") && !v.time.is_empty()));
    let events = received(&mut rx);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::PolicyViolation, EventKind::PolicyViolation]
    );
    assert_eq!(events[0].task_id.as_deref(), Some(task.as_str()));
    assert_eq!(events[1].agent_id.as_deref(), Some("a-1"));
    assert_eq!(events[0].data["violation_id"], recorded[0].id.as_str());
    let newest = h.store.violations(1).await.expect("list");
    assert_eq!(newest, [recorded[1].clone()]);
    let all = h.store.violations(10).await.expect("list");
    assert_eq!(all, [recorded[1].clone(), recorded[0].clone()]);
    assert_eq!((all[1].stage.as_str(), all[1].task_id.as_deref()), ("submit", Some(task.as_str())));
}
